"""Parity with Transformers: the same checkpoint gives the same logits, greedy tokens and beam tokens/scores.

Each configuration is a random ``MarianMTModel`` saved in the Marian layout and loaded with
``mtserve.model.checkpoint.load_model``; the reference is Transformers' own forward pass and ``generate()``
on the padded batch. Token output must be identical; float outputs agree to 1e-4.

The seeds, ``init_std`` and ``</s>`` bias boosts below were picked so that some texts end at once, some
mid-way and some run to max_length (random tiny models otherwise all decode to max_length), and so that
no beam decision is a near-tie.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.model.checkpoint import load_model
from mtserve.model.config import ModelConfig
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis
from mtserve.model.transformer import Transformer

NUM_TEXTS = 24
MAX_LENGTH = 24  # ours; Transformers' max_length is one more (it counts the decoder start token)
BEAMS = 4

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CONFIGS: dict[str, dict[str, Any]] = {
    # Shared vocabulary, tied lm_head (the OPUS-MT default), deeper decoder than encoder.
    "swish-shared-tied": dict(
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
    ),
    # Separate target vocabulary, untied lm_head, no embedding scaling.
    "relu-separate-untied-unscaled": dict(
        activation_function="relu",
        share_encoder_decoder_embeddings=False,
        tie_word_embeddings=False,
        decoder_vocab_size=100,
        scale_embedding=False,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=96,
        init_std=0.4,
        seed=0,
        eos_boost=4.0,
    ),
    # Separate target vocabulary with lm_head tied to the decoder embeddings; single-head one-layer decoder.
    "gelu-separate-tied": dict(
        activation_function="gelu",
        share_encoder_decoder_embeddings=False,
        decoder_vocab_size=100,
        encoder_layers=3,
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=1,
        seed=1,
        eos_boost=5.0,
    ),
    # Wider model, separate untied vocabularies, tanh GELU.
    "gelu_new-separate-untied": dict(
        activation_function="gelu_new",
        share_encoder_decoder_embeddings=False,
        tie_word_embeddings=False,
        decoder_vocab_size=110,
        d_model=48,
        encoder_attention_heads=6,
        decoder_attention_heads=3,
        encoder_ffn_dim=80,
        decoder_ffn_dim=40,
        seed=3,
        eos_boost=4.0,
    ),
}


@dataclass
class Case:
    """One saved model, loaded both ways, with its test texts and memoised reference outputs."""

    hf: Any
    config: ModelConfig
    model: Transformer
    sources: list[list[int]]
    helpers: Any
    _memo: dict[Any, Any] = field(default_factory=dict)

    def ours(self, options: SearchOptions) -> list[list[Hypothesis]]:
        key = ("ours", options)
        if key not in self._memo:
            self._memo[key] = self.helpers.decode_all(self.model, self.sources, options)
        return self._memo[key]

    def reference(self, options: SearchOptions) -> tuple[list[list[list[int]]], list[list[float]] | None]:
        """Transformers' output per text: its `num_hypotheses` token lists (our convention) and beam scores."""
        key = ("hf", options)
        if key not in self._memo:
            n = options.num_hypotheses
            out = self.helpers.hf_generate(self.hf, self.sources, options, num_return_sequences=n)
            strip = self.helpers.strip_hf
            pad, eos = self.config.pad_token_id, self.config.eos_token_id
            rows = [strip(seq, pad_id=pad, eos_id=eos) for seq in out.sequences.tolist()]
            tokens = [rows[i * n : (i + 1) * n] for i in range(len(self.sources))]
            scores = None
            if options.beam_size > 1:
                flat = out.sequences_scores.tolist()
                scores = [flat[i * n : (i + 1) * n] for i in range(len(self.sources))]
            self._memo[key] = (tokens, scores)
        return self._memo[key]


def _build_case(path: Path, make_marian: Any, helpers: Any, overrides: dict[str, Any]) -> Case:
    _, hf = make_marian(path, **overrides)
    config, model = load_model(path, device="cpu", dtype="float32")
    sources = helpers.random_sources(
        NUM_TEXTS, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=config.eos_token_id, seed=1
    )
    return Case(hf, config, model, sources, helpers)


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def case(
    request: pytest.FixtureRequest, make_marian: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory
) -> Case:
    return _build_case(tmp_path_factory.mktemp(request.param), make_marian, helpers, CONFIGS[request.param])


def _mismatches(ours: list[list[int]], reference: list[list[int]]) -> list[str]:
    return [
        f"text {i}: ours {o} != transformers {r}"
        for i, (o, r) in enumerate(zip(ours, reference, strict=True))
        if o != r
    ]


def _teacher_forced_inputs(case: Case, count: int = 8, length: int = 10) -> tuple[torch.Tensor, ...]:
    ids, mask = case.helpers.pad_batch(case.sources[:count], case.config.pad_token_id)
    generator = torch.Generator().manual_seed(2)
    decoder_ids = torch.randint(1, case.config.pad_token_id, (count, length), generator=generator)
    decoder_ids[:, 0] = case.config.decoder_start_token_id
    return ids, mask, decoder_ids


def test_forward_logits_match(case: Case) -> None:
    ids, mask, decoder_ids = _teacher_forced_inputs(case)
    assert not mask.all(), "the batch must contain padding"
    with torch.no_grad():
        expected = case.hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=decoder_ids).logits
        actual = case.model(ids, mask, decoder_ids)
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape == (*decoder_ids.shape, case.config.target_vocab_size)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_greedy_matches_generate(case: Case) -> None:
    options = SearchOptions(beam_size=1, max_length=MAX_LENGTH)
    ours = [hyps[0].token_ids for hyps in case.ours(options)]
    reference = [tokens[0] for tokens in case.reference(options)[0]]
    assert not _mismatches(ours, reference)


def test_beam_matches_generate(case: Case) -> None:
    options = SearchOptions(beam_size=BEAMS, num_hypotheses=BEAMS, max_length=MAX_LENGTH)
    ours = case.ours(options)
    reference, scores = case.reference(options)
    assert scores is not None
    assert not _mismatches([h[0].token_ids for h in ours], [r[0] for r in reference])
    torch.testing.assert_close(
        torch.tensor([h[0].score for h in ours]), torch.tensor([s[0] for s in scores]), atol=1e-4, rtol=0
    )


def test_nbest_matches_num_return_sequences(case: Case) -> None:
    """The whole n-best list equals generate(num_return_sequences=K); where two scores tie, as a set."""
    options = SearchOptions(beam_size=BEAMS, num_hypotheses=BEAMS, max_length=MAX_LENGTH)
    ours = case.ours(options)
    reference, scores = case.reference(options)
    assert scores is not None
    ordered = 0
    for i, (hyps, ref_tokens, ref_scores) in enumerate(zip(ours, reference, scores, strict=True)):
        assert len(hyps) == BEAMS, f"text {i}"
        torch.testing.assert_close(torch.tensor([h.score for h in hyps]), torch.tensor(ref_scores), atol=1e-4, rtol=0)
        if min(a - b for a, b in itertools.pairwise(ref_scores)) < 1e-5:
            assert sorted(h.token_ids for h in hyps) == sorted(ref_tokens), f"text {i}"
        else:
            ordered += 1
            assert [h.token_ids for h in hyps] == ref_tokens, f"text {i}"
    assert ordered >= NUM_TEXTS // 2


# -- options beyond the defaults, on the model whose texts end at the most varied lengths ---------------


@pytest.fixture(scope="module")
def varied(make_marian: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _build_case(tmp_path_factory.mktemp("varied"), make_marian, helpers, CONFIGS["swish-shared-tied"])


def test_texts_end_at_varied_lengths(varied: Case) -> None:
    """Guards the premise of this module: </s> is exercised before max_length, not only at step one."""
    token_counts = [len(h[0].token_ids) for h in varied.ours(SearchOptions(max_length=MAX_LENGTH))]
    assert len({n for n in token_counts if 0 < n < MAX_LENGTH - 1}) >= 3, token_counts


@pytest.mark.parametrize("length_penalty", [0.6, 2.0])
def test_length_penalty_matches_generate(varied: Case, length_penalty: float) -> None:
    options = SearchOptions(beam_size=BEAMS, max_length=MAX_LENGTH, length_penalty=length_penalty)
    ours = varied.ours(options)
    neutral = varied.ours(SearchOptions(beam_size=BEAMS, max_length=MAX_LENGTH))
    assert [h[0].token_ids for h in ours] != [h[0].token_ids for h in neutral], "the penalty must change something"
    reference, scores = varied.reference(options)
    assert scores is not None
    assert not _mismatches([h[0].token_ids for h in ours], [r[0] for r in reference])
    torch.testing.assert_close(
        torch.tensor([h[0].score for h in ours]), torch.tensor([s[0] for s in scores]), atol=1e-4, rtol=0
    )


def test_early_stopping_matches_generate(varied: Case) -> None:
    """early_stopping: the search ends once K hypotheses are finished, as generate(early_stopping=True)."""
    options = SearchOptions(beam_size=BEAMS, num_hypotheses=BEAMS, max_length=MAX_LENGTH, early_stopping=True)
    ours = varied.ours(options)
    reference, scores = varied.reference(options)
    assert scores is not None
    assert not _mismatches([h[0].token_ids for h in ours], [r[0] for r in reference])
    torch.testing.assert_close(
        torch.tensor([h[0].score for h in ours]), torch.tensor([s[0] for s in scores]), atol=1e-4, rtol=0
    )
    full = varied.ours(SearchOptions(beam_size=BEAMS, num_hypotheses=BEAMS, max_length=MAX_LENGTH))
    assert [h[0].token_ids for h in ours] != [h[0].token_ids for h in full], "it must change something"


@pytest.mark.parametrize("beam_size", [1, BEAMS])
def test_min_length_matches_generate(varied: Case, beam_size: int) -> None:
    options = SearchOptions(beam_size=beam_size, max_length=MAX_LENGTH, min_length=5)
    ours = [h[0].token_ids for h in varied.ours(options)]
    reference = [r[0] for r in varied.reference(options)[0]]
    assert not _mismatches(ours, reference)
    assert min(len(tokens) for tokens in ours) >= 5
    unconstrained = varied.ours(SearchOptions(beam_size=beam_size, max_length=MAX_LENGTH))
    assert min(len(h[0].token_ids) for h in unconstrained) < 5, "min_length must change something"


# -- shared vocabulary, untied output projection (Transformers 5 keeps distinct tables) ------------------


def test_shared_vocab_untied_lm_head_logits(make_marian: Any, helpers: Any, tmp_path: Path) -> None:
    case = _build_case(tmp_path, make_marian, helpers, {"tie_word_embeddings": False})
    ids, mask, decoder_ids = _teacher_forced_inputs(case)
    with torch.no_grad():
        expected = case.hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=decoder_ids).logits
        actual = case.model(ids, mask, decoder_ids)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
