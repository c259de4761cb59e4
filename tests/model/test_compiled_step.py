"""The compiled decoder step (torch.compile, a graph per row bucket): the same tokens as the eager step,
graphs only for the buckets met, and a failure that turns the model back to the eager step for good."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.translator import Translator
from mtserve.model.compiled_step import buckets_for
from mtserve.model.options import SearchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_buckets_are_multiples_of_the_group_and_end_at_the_batch() -> None:
    assert buckets_for(8) == [1, 2, 4, 8]
    assert buckets_for(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    assert buckets_for(32, group_size=4) == [4, 8, 16, 32]
    assert buckets_for(30, group_size=4) == [4, 8, 16, 28]  # a text's rows are never split
    assert buckets_for(3, group_size=4) == []


@pytest.fixture(scope="module")
def translators(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Translator, Translator]:
    path = tmp_path_factory.mktemp("compiled")
    make_marian(path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    return Translator.load(path, device="cpu"), Translator.load(path, device="cpu", compile="on")


def test_one_graph_gives_the_eager_steps_tokens(translators: tuple[Translator, Translator], helpers: Any) -> None:
    """One text at a time: one graph (bucket 1), compiled once before decoding (compile_for, what the server
    does before SERVING) and reused for every step of every text: decoding compiles nothing more (graphs
    warmed up at length 1, or on ordinary tensors where the steps run on inference tensors, were compiled
    again by the first steps)."""
    from torch._dynamo.utils import counters

    eager, compiled = translators
    config = eager.config
    sources = helpers.random_sources(3, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=3)
    options = SearchOptions(max_length=12)
    for translator in (eager, compiled):
        translator.max_batch_rows = 1
    expected = [h[0].token_ids for h in eager.generate(sources, options)]
    assert compiled.compile_for(1, [1]) > 0
    graphs = counters["stats"]["unique_graphs"]
    assert [h[0].token_ids for h in compiled.generate(sources, options)] == expected
    assert counters["stats"]["unique_graphs"] == graphs, "decoding compiled graphs the warm-up should have"
    step = compiled.model.compiled_step
    assert step.failed is None and set(step.compile_seconds) == {(1, 1)}


def test_two_models_in_one_process_keep_their_own_graphs(translators: tuple[Translator, Translator],
                                                         make_marian: Any, tmp_path: Path, helpers: Any) -> None:
    """The graphs are compiled from one function: a second model must get graphs of its own, not reuse the
    first model's (whose weights are frozen into them)."""
    _, first = translators
    make_marian(tmp_path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=9)
    second, second_eager = Translator.load(tmp_path, compile="on"), Translator.load(tmp_path)
    config = second.config
    sources = helpers.random_sources(3, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=6)
    options = SearchOptions(max_length=12)
    for translator in (first, second, second_eager):
        translator.max_batch_rows = 1
    first.generate(sources, options)  # the first model's graph exists (and ran) before the second compiles
    assert ([h[0].token_ids for h in second.generate(sources, options)]
            == [h[0].token_ids for h in second_eager.generate(sources, options)])
    assert set(second.model.compiled_step.compile_seconds) == {(1, 1)}


@pytest.mark.slow  # each graph takes 10-15 s to compile on two cores; this one compiles six
def test_every_bucket_and_beams_give_the_eager_steps_tokens(translators: tuple[Translator, Translator],
                                                            helpers: Any) -> None:
    eager, compiled = translators
    config = eager.config
    sources = helpers.random_sources(6, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=3)
    for options in (SearchOptions(max_length=12), SearchOptions(beam_size=2, max_length=12)):
        for translator in (eager, compiled):
            translator.max_batch_rows = 4 * options.rows  # 4 texts at a time: rows free up as texts end
        expected = [h[0].token_ids for h in eager.generate(sources, options)]
        assert [h[0].token_ids for h in compiled.generate(sources, options)] == expected
    step = compiled.model.compiled_step
    assert step.failed is None
    # Graphs for the buckets the steps met, greedy rows and texts of two beams, and none for others.
    assert {group for _, group in step.compile_seconds} == {1, 2}
    assert all(bucket in buckets_for(4 * group, group) for bucket, group in step.compile_seconds)


def test_a_failing_graph_sends_the_model_back_to_the_eager_step(
    make_marian: Any, tmp_path: Path, helpers: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_marian(tmp_path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    eager, compiled = Translator.load(tmp_path), Translator.load(tmp_path, compile="on")

    def broken(group_size: int) -> Any:
        def run(*args: Any) -> torch.Tensor:
            raise RuntimeError("inductor could not compile this")
        return run

    monkeypatch.setattr(compiled.model.compiled_step, "_function", broken)
    config = eager.config
    sources = helpers.random_sources(3, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                     eos_id=config.eos_token_id, seed=4)
    options = SearchOptions(max_length=10)
    with caplog.at_level(logging.WARNING, logger="mtserve.model.compiled_step"):
        ours = [h[0].token_ids for h in compiled.generate(sources, options)]
    assert ours == [h[0].token_ids for h in eager.generate(sources, options)]
    assert isinstance(compiled.model.compiled_step.failed, RuntimeError)
    assert [r.getMessage() for r in caplog.records].count(
        "the compiled decoder step failed (RuntimeError: inductor could not compile this); decoding eagerly "
        "from now on") == 1


def test_compile_is_refused_with_int8(make_marian: Any, tmp_path: Path) -> None:
    make_marian(tmp_path, tokenizer=True)
    with pytest.raises(ValueError, match="compile and quantize cannot be combined"):
        Translator.load(tmp_path, compile="on", quantize="int8")
    with pytest.raises(ValueError, match="compile must be one of off, on, got 'yes'"):
        Translator.load(tmp_path, compile="yes")
