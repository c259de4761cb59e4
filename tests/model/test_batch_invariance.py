"""Batching never changes a text's result: alone, in a padded batch of mixed lengths, or joining mid-decode.

Scores may differ by float rounding between batch shapes; tokens must be identical.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from mtserve.model.checkpoint import load_model
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis
from mtserve.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# A model whose texts end at varied lengths (see test_parity.py), so rows leave the batch at different steps.
MODEL = dict(
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
MAX_LENGTH = 24
OPTIONS = {
    "greedy": SearchOptions(max_length=MAX_LENGTH),
    "beam4": SearchOptions(beam_size=4, num_hypotheses=4, max_length=MAX_LENGTH),
}


@pytest.fixture(scope="module")
def setup(
    make_marian: Any, helpers: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Transformer, list[list[int]]]:
    path = tmp_path_factory.mktemp("invariance")
    make_marian(path, **MODEL)
    _, model = load_model(path, device="cpu", dtype="float32")
    config = model.config
    sources = helpers.random_sources(
        16, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=config.eos_token_id, seed=5, max_len=30
    )
    return model, sources


def _alone(model: Transformer, source: list[int], options: SearchOptions, helpers: Any) -> list[Hypothesis]:
    return helpers.run_jobs(model, [(source, options, 0)])[0]


def _staggered(
    model: Transformer, sources: list[list[int]], options: list[SearchOptions], every: int, helpers: Any
) -> dict[Hashable, list[Hypothesis]]:
    """Text i joins at step i * every (0: all together, one padded encoder batch)."""
    results = helpers.run_jobs(model, [(s, o, i * every) for i, (s, o) in enumerate(zip(sources, options,
                                                                                           strict=True))])
    return dict(enumerate(results))


def _assert_same(batched: list[Hypothesis], alone: list[Hypothesis], label: str) -> None:
    assert [h.token_ids for h in batched] == [h.token_ids for h in alone], label
    assert [h.score for h in batched] == pytest.approx([h.score for h in alone], abs=1e-5), label
    assert [h.stopped_by_length for h in batched] == [h.stopped_by_length for h in alone], label


@pytest.mark.parametrize("every", [0, 1, 3], ids=["together", "join-each-step", "join-every-3"])
@pytest.mark.parametrize("search", list(OPTIONS))
def test_batched_equals_alone(
    setup: tuple[Transformer, list[list[int]]], search: str, every: int, helpers: Any
) -> None:
    model, sources = setup
    options = OPTIONS[search]
    batched = _staggered(model, sources, [options] * len(sources), every, helpers)
    lengths = {len(batched[i][0].token_ids) for i in range(len(sources))}
    assert len(lengths) >= 3, "texts should leave the batch at different steps"
    for i, source in enumerate(sources):
        _assert_same(batched[i], _alone(model, source, options, helpers), f"text {i}")


def test_mixed_searches_in_one_batch(setup: tuple[Transformer, list[list[int]]], helpers: Any) -> None:
    """Greedy, beam and sampled texts share the batch (and the steps) without affecting one another."""
    model, sources = setup
    sampled = SearchOptions(num_hypotheses=3, sampling_topk=10, seed=11, max_length=MAX_LENGTH)
    beam2 = SearchOptions(beam_size=2, max_length=MAX_LENGTH, length_penalty=0.7)
    kinds = [OPTIONS["greedy"], OPTIONS["beam4"], sampled, beam2]
    options = [kinds[i % len(kinds)] for i in range(len(sources))]
    batched = _staggered(model, sources, options, 2, helpers)
    for i, source in enumerate(sources):
        _assert_same(batched[i], _alone(model, source, options[i], helpers), f"text {i}")
