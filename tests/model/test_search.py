"""Search options and their effect: validation, sampling, n-best lists, length limits, the Translator API."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from _engine_helpers import run_jobs

from mtserve.engine import translator as translator_module
from mtserve.engine.translator import Translator
from mtserve.model.checkpoint import load_model
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis
from mtserve.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# -- validation ---------------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"beam_size": 0}, "beam_size must be at least 1, got 0"),
    ({"num_hypotheses": 0}, "num_hypotheses must be at least 1, got 0"),
    ({"max_length": 0}, "max_length must be at least 1, got 0"),
    ({"min_length": -1}, r"min_length must be in \[0, max_length=256\), got -1"),
    ({"min_length": 10, "max_length": 10}, r"min_length must be in \[0, max_length=10\), got 10"),
    ({"length_penalty": math.inf}, "length_penalty must be between -10 and 10, got inf"),
    ({"length_penalty": math.nan}, "length_penalty must be between -10 and 10, got nan"),
    # Finite but extreme: once raised OverflowError (length ** 1e30) inside a step.
    ({"length_penalty": 1e30}, r"length_penalty must be between -10 and 10, got 1e\+30"),
    ({"length_penalty": -10.5}, "length_penalty must be between -10 and 10, got -10.5"),
    ({"sampling_temperature": 0.0}, "sampling_temperature must be > 0 and finite, got 0.0"),
    ({"sampling_temperature": math.nan}, "sampling_temperature must be > 0 and finite, got nan"),
    ({"sampling_temperature": math.inf}, "sampling_temperature must be > 0 and finite, got inf"),
    ({"sampling_topp": math.nan}, r"sampling_topp must be in \(0, 1\], got nan"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*64 - 1\], got -1"),
    ({"seed": 2**64}, r"seed must be in \[0, 2\*\*64 - 1\], got 18446744073709551616"),
    ({"sampling_topk": -1}, r"sampling_topk must be >= 0 \(0 = no limit\), got -1"),
    ({"sampling_topp": 0.0}, r"sampling_topp must be in \(0, 1\], got 0.0"),
    ({"sampling_topp": 1.5}, r"sampling_topp must be in \(0, 1\], got 1.5"),
    ({"sampling_topk": 5, "beam_size": 2}, "sampling works with beam_size 1, got beam_size 2"),
    ({"num_hypotheses": 3, "beam_size": 2}, "num_hypotheses 3 exceeds beam_size 2"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), INVALID, ids=[next(iter(k)) + "-" + str(i) for i, (k, _) in enumerate(INVALID)]
)
def test_invalid_options_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        SearchOptions(**kwargs)


def test_valid_options_and_rows() -> None:
    assert SearchOptions(beam_size=4, num_hypotheses=2).rows == 4
    sampled = SearchOptions(num_hypotheses=3, sampling_topk=10)
    assert sampled.sampling and sampled.rows == 3
    assert SearchOptions(sampling_topp=0.9).sampling and SearchOptions(sampling_temperature=1.0).sampling
    assert not SearchOptions(beam_size=2).sampling


# -- decoding -------------------------------------------------------------------------------------------


# A model whose texts end at varied lengths (see test_parity.py).
VARIED_LENGTHS: dict[str, Any] = dict(
    activation_function="swish",
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=48,
    init_std=0.2,
    seed=3,
    eos_boost=3.0,
)


@pytest.fixture(scope="module")
def setup(
    make_marian: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Transformer, list[list[int]]]:
    path = tmp_path_factory.mktemp("search")
    make_marian(path, **VARIED_LENGTHS)
    _, model = load_model(path, device="cpu")
    config = model.config
    sources = helpers.random_sources(8, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=0, seed=8)
    return model, sources


def _run(
    model: Transformer, jobs: list[tuple[list[int], SearchOptions]], join_every: int = 0
) -> list[list[Hypothesis]]:
    return run_jobs(model, [(source, options, i * join_every) for i, (source, options) in enumerate(jobs)])


def _tokens(results: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.token_ids for h in hyps] for hyps in results]


SAMPLED = SearchOptions(num_hypotheses=2, sampling_temperature=1.5, seed=123, max_length=20)


def test_sampling_with_a_seed_is_reproducible(setup: tuple[Transformer, list[list[int]]]) -> None:
    model, sources = setup
    first = _run(model, [(s, SAMPLED) for s in sources])
    again = _run(model, [(s, SAMPLED) for s in sources])
    assert _tokens(first) == _tokens(again)
    other_seed = SearchOptions(**{**SAMPLED.__dict__, "seed": 124})
    assert _tokens(_run(model, [(s, other_seed) for s in sources])) != _tokens(first)
    greedy = _run(model, [(s, SearchOptions(max_length=20)) for s in sources])
    assert [hyps[0].token_ids for hyps in greedy] != [hyps[0].token_ids for hyps in first], "sampling must sample"


def test_sampling_does_not_depend_on_the_batch(setup: tuple[Transformer, list[list[int]]]) -> None:
    """A sampled text gets the same tokens alone and among greedy, beam and other sampled texts."""
    model, sources = setup
    others = [SearchOptions(max_length=20), SearchOptions(beam_size=3, max_length=20), SAMPLED]
    jobs = [(source, SAMPLED if i % 2 == 0 else others[i % 3]) for i, source in enumerate(sources)]
    batched = _run(model, jobs, join_every=2)
    for i, (source, options) in enumerate(jobs):
        if options is SAMPLED:
            alone = _run(model, [(source, options)])[0]
            assert [h.token_ids for h in batched[i]] == [h.token_ids for h in alone], f"text {i}"


@pytest.mark.parametrize(
    "options",
    [
        SearchOptions(sampling_topk=1, seed=5, max_length=20),
        SearchOptions(sampling_topk=1, sampling_temperature=3.0, max_length=20),
        SearchOptions(sampling_topp=1e-4, seed=5, max_length=20),
    ],
    ids=["topk1", "topk1-hot", "topp-tiny"],
)
def test_degenerate_sampling_is_greedy(
    setup: tuple[Transformer, list[list[int]]], options: SearchOptions
) -> None:
    model, sources = setup
    greedy = _run(model, [(s, SearchOptions(max_length=20)) for s in sources])
    sampled = _run(model, [(s, options) for s in sources])
    assert _tokens(sampled) == _tokens(greedy)
    assert [h[0].score for h in sampled] == pytest.approx([h[0].score for h in greedy], abs=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        SearchOptions(beam_size=5, num_hypotheses=5, max_length=20),
        SearchOptions(num_hypotheses=4, seed=1, sampling_temperature=2.0, max_length=20),
    ],
    ids=["beam", "sampling"],
)
def test_nbest_sorted_by_score(setup: tuple[Transformer, list[list[int]]], options: SearchOptions) -> None:
    model, sources = setup
    for hyps in _run(model, [(s, options) for s in sources]):
        assert len(hyps) == options.num_hypotheses
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        if options.beam_size > 1:
            assert len({tuple(h.token_ids) for h in hyps}) == len(hyps), "beam hypotheses are distinct"


@pytest.fixture(scope="module")
def eager_to_stop(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    """A model that says </s> at once."""
    path = tmp_path_factory.mktemp("eager")
    make_marian(path, eos_boost=20.0)
    return load_model(path, device="cpu")[1]


def _never_says_eos(path: Path, make_marian: Any, forced_eos: bool) -> Transformer:
    make_marian(path, eos_boost=None, forced_eos_token_id=0 if forced_eos else None)
    _, model = load_model(path, device="cpu")
    model.final_logits_bias[0, model.config.eos_token_id] = -1e4
    return model


@pytest.fixture(scope="module")
def never_stops(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    """A model that never says </s> by itself and has no forced </s> at max_length."""
    return _never_says_eos(tmp_path_factory.mktemp("never"), make_marian, forced_eos=False)


@pytest.fixture(scope="module")
def forced_stop(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    """A model that never says </s> by itself, but is forced to at max_length (every OPUS-MT model is)."""
    return _never_says_eos(tmp_path_factory.mktemp("forced"), make_marian, forced_eos=True)


SEARCHES = {
    "greedy": {},
    "beam": {"beam_size": 3, "num_hypotheses": 3},
    "sampling": {"num_hypotheses": 2, "sampling_topk": 10, "seed": 3},
}


@pytest.mark.parametrize("search", list(SEARCHES))
def test_min_length_is_respected(
    eager_to_stop: Transformer, setup: tuple[Transformer, list[list[int]]], search: str
) -> None:
    sources = setup[1]
    unconstrained = _run(eager_to_stop, [(s, SearchOptions(max_length=20, **SEARCHES[search])) for s in sources])
    assert all(hyps[0].token_ids == [] for hyps in unconstrained)
    options = SearchOptions(max_length=20, min_length=5, **SEARCHES[search])
    for hyps in _run(eager_to_stop, [(s, options) for s in sources]):
        assert len(hyps[0].token_ids) == 5  # no </s> before 5 tokens, then at once
        assert min(len(h.token_ids) for h in hyps) == 5
        assert not any(h.stopped_by_length or h.max_length_reached for h in hyps)


@pytest.mark.parametrize("search", list(SEARCHES))
def test_max_length_is_respected(
    never_stops: Transformer, setup: tuple[Transformer, list[list[int]]], search: str
) -> None:
    options = SearchOptions(max_length=7, **SEARCHES[search])
    for hyps in _run(never_stops, [(s, options) for s in setup[1]]):
        assert len(hyps) == options.num_hypotheses
        for h in hyps:
            assert len(h.token_ids) == 7 and h.stopped_by_length and h.max_length_reached
            assert never_stops.config.eos_token_id not in h.token_ids


@pytest.mark.parametrize("search", list(SEARCHES))
def test_forced_eos_ends_at_max_length(
    forced_stop: Transformer, setup: tuple[Transformer, list[list[int]]], search: str
) -> None:
    """With forced_eos_token_id the max_length-th token is </s> (counted in max_length, absent from token_ids)."""
    options = SearchOptions(max_length=7, **SEARCHES[search])
    for hyps in _run(forced_stop, [(s, options) for s in setup[1]]):
        assert [len(h.token_ids) for h in hyps] == [6] * options.num_hypotheses
        # It ended with </s>, but only because the limit forced it: the caller is told it was cut.
        assert all(h.max_length_reached and not h.stopped_by_length for h in hyps)
        assert all(h.score > -1e3 for h in hyps), "</s> is forced with log-probability 0, never sampled at -1e4"


# -- the Translator ---------------------------------------------------------------------------------------

TEXTS = ["The cat eats an apple today.", "", "   ", "Tom sees three books (again).", "Mary"]


@pytest.mark.parametrize("separate_vocabs", [False, True], ids=["shared-vocab", "separate-vocabs"])
def test_translator(make_marian: Any, tmp_path: Path, separate_vocabs: bool) -> None:
    path, _ = make_marian(tmp_path, tokenizer=True, separate_vocabs=separate_vocabs, eos_boost=2.0)
    translator = Translator.load(path, device="cpu")
    assert translator.dtype.is_floating_point and translator.device.type == "cpu"
    tokenizer = translator.tokenizer

    nbest = translator.translate(TEXTS, beam_size=4, num_hypotheses=3, max_length=12, split_sentences=False)
    assert len(nbest) == len(TEXTS)
    for text, result in zip(TEXTS, nbest, strict=True):
        if not text.strip():
            assert (result.text, result.token_ids, result.score, result.hypotheses) == ("", [], 0.0, [])
            continue
        assert result.input_tokens == len(tokenizer.encode(text))
        assert len(result.hypotheses) == 3
        assert [h.score for h in result.hypotheses] == sorted((h.score for h in result.hypotheses), reverse=True)
        best = result.hypotheses[0]
        assert (result.text, result.token_ids, result.score) == (best.text, best.token_ids, best.score)
        for h in result.hypotheses:
            assert h.text == tokenizer.decode(h.token_ids)
            assert len(h.token_ids) <= 11

    # The same as decoding the token ids directly, and num_hypotheses=1 gives no n-best list.
    single = translator.translate(TEXTS, beam_size=4, max_length=12)
    by_ids = translator.generate(
        [tokenizer.encode(t) for t in TEXTS if t.strip()], SearchOptions(beam_size=4, max_length=12)
    )
    assert [r.token_ids for r in single if r.input_tokens] == [h[0].token_ids for h in by_ids]
    assert all(r.hypotheses == [] for r in single)
    assert translator.translate([""])[0].text == ""
    assert translator.translate([]) == []


def test_translator_defaults_yield_to_options(make_marian: Any, tmp_path: Path) -> None:
    """generation_config.json defaults (OPUS-MT ships num_beams) must not break explicit sampling/max_length."""
    path, _ = make_marian(tmp_path, tokenizer=True, eos_boost=None)
    (path / "generation_config.json").write_text(json.dumps({"num_beams": 4, "max_length": 65, "min_length": 31}))
    translator = Translator.load(path, device="cpu")
    assert translator.defaults == {"beam_size": 4, "max_length": 64, "min_length": 30}
    sampled = translator.translate(TEXTS[:1], sampling_topk=5, seed=1, num_hypotheses=2, max_length=6)[0]
    assert len(sampled.hypotheses) == 2 and all(len(h.token_ids) <= 5 for h in sampled.hypotheses)
    short = translator.translate(TEXTS[:1], max_length=6)[0]  # the default min_length 30 cannot apply
    assert len(short.token_ids) == 5
    with pytest.raises(ValueError, match="sampling works with beam_size 1, got beam_size 4"):
        translator.translate(TEXTS[:1], sampling_topk=5, beam_size=4)


def test_translator_sizes_the_cache_by_need(
    setup: tuple[Transformer, list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, sources = setup
    sizes: list[int] = []

    class SpyCore(translator_module.EngineCore):
        def __init__(self, model: Transformer, scheduler: Any, **kwargs: Any) -> None:
            sizes.append(scheduler.max_rows)
            super().__init__(model, scheduler, **kwargs)

    monkeypatch.setattr(translator_module, "EngineCore", SpyCore)
    translator = translator_module.Translator(model, tokenizer=None, max_batch_rows=16)  # type: ignore[arg-type]
    beam = SearchOptions(beam_size=3, max_length=5)
    assert len(translator.generate(sources[:2], beam)) == 2
    assert len(translator.generate(sources * 3, beam)) == 24
    assert len(translator.generate([], beam)) == 0
    assert sizes == [6, 16, 3]
