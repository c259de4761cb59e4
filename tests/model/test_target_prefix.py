"""Target prefixes: the output continues from given target tokens, fed in one batched prefill pass, and
equals Transformers' generate() with decoder_input_ids = [start, *prefix] (greedy and beam search, scores
included), whatever else is in the batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.translator import Translator
from mtserve.model.options import SearchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_LENGTH = 14


@pytest.fixture(scope="module")
def setup(make_marian: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Translator, Any]:
    path: Path
    path, hf = make_marian(tmp_path_factory.mktemp("prefix"), eos_boost=1.0, seed=4, tokenizer=True)
    translator = Translator.load(path, device="cpu", dtype="float32", pack=False)
    config = translator.config
    sources = helpers.random_sources(8, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=5)
    generator = torch.Generator().manual_seed(6)
    allowed = [i for i in range(config.vocab_size) if i not in (config.pad_token_id, config.eos_token_id)]
    prefixes = []
    for k in range(len(sources)):  # lengths 0 .. 4, so that the prefill pads the shorter ones
        picks = torch.randint(len(allowed), (k % 5,), generator=generator).tolist()
        prefixes.append([allowed[p] for p in picks])
    return hf, translator, (sources, prefixes)


def _reference(hf: Any, helpers: Any, source: list[int], prefix: list[int], options: SearchOptions) -> Any:
    start = hf.config.decoder_start_token_id
    return helpers.hf_generate(hf, [source], options, decoder_input_ids=torch.tensor([[start, *prefix]]))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_prefix_decodes_as_transformers_decoder_input_ids(setup: Any, helpers: Any, beam_size: int) -> None:
    hf, translator, (sources, prefixes) = setup
    options = SearchOptions(beam_size=beam_size, max_length=MAX_LENGTH)
    ours = translator.generate(sources, options, target_prefixes=prefixes)
    pad, eos = hf.config.pad_token_id, hf.config.eos_token_id
    for source, prefix, hypotheses in zip(sources, prefixes, ours, strict=True):
        reference = _reference(hf, helpers, source, prefix, options)
        expected = helpers.strip_hf(reference.sequences[0].tolist(), pad_id=pad, eos_id=eos)
        best = hypotheses[0]
        assert best.token_ids[: len(prefix)] == prefix
        assert best.token_ids == expected
        if beam_size > 1:  # scored on what follows the prefix, as Transformers scores after its prompt
            assert best.score == pytest.approx(reference.sequences_scores[0].item(), abs=1e-4)


def test_the_prefix_is_one_pass_and_leaves_the_others_unchanged(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, translator, (sources, prefixes) = setup
    options = SearchOptions(beam_size=2, max_length=MAX_LENGTH)
    plain = translator.generate(sources, options)
    model = translator.model
    passes = {"prefill": 0, "step": 0}
    prefill, step = model.prefill, model.decode_step

    def counted_prefill(*args: Any, **kwargs: Any) -> Any:
        passes["prefill"] += 1
        return prefill(*args, **kwargs)

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        passes["step"] += 1
        return step(*args, **kwargs)

    monkeypatch.setattr(model, "prefill", counted_prefill)
    monkeypatch.setattr(model, "decode_step", counted_step)
    with_prefixes = translator.generate(sources, options, target_prefixes=prefixes)
    # Every text joins in one encoder pass, so all their prefixes are fed in one prefill pass; the steps
    # that follow generate what comes after the prefixes only.
    assert passes["prefill"] == 1
    longest = max(len(h[0].token_ids) + (0 if h[0].stopped_by_length else 1) - len(p)
                  for h, p in zip(with_prefixes, prefixes, strict=True))
    assert passes["step"] == longest
    for prefix, alone, mixed in zip(prefixes, plain, with_prefixes, strict=True):
        if not prefix:  # batch invariance: the texts without a prefix decode as they do alone
            assert [h.token_ids for h in mixed] == [h.token_ids for h in alone]


def test_the_prefix_counts_toward_max_length(setup: Any) -> None:
    _, translator, (sources, _) = setup
    options = SearchOptions(max_length=4)
    long_prefix = [5, 6, 7]
    [hypotheses] = translator.generate(sources[:1], options, target_prefixes=[long_prefix])
    assert hypotheses[0].token_ids[:3] == long_prefix and len(hypotheses[0].token_ids) <= 4
    with pytest.raises(ValueError, match="the target prefix is 4 tokens, max_length 4 leaves room for 3"):
        translator.generate(sources[:1], options, target_prefixes=[[5, 6, 7, 8]])
