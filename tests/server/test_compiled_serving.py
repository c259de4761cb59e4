"""--compile on: the server compiles its decoder-step graphs before it serves, then answers as the eager
offline Translator does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import running_server, sample_texts, server_config

from mtserve.client import TranslationClient
from mtserve.engine.translator import Translator


def test_a_compiled_server_compiles_before_serving_and_answers_as_eager(
    model_dirs: dict[str, Path], offline: Callable[[str], Translator]
) -> None:
    # One row: one graph (bucket 1, greedy), compiled in the warm-up; every call after it reuses it.
    config = server_config(model_dirs, "tiny", compile="on", max_batch_rows=1)
    texts = sample_texts(4, seed=11)
    with running_server(config) as running:
        step = running.server.registry.models["tiny"].translator.model.compiled_step
        assert set(step.compile_seconds) == {(1, 1)} and step.failed is None  # before any call
        with TranslationClient(running.address) as client:
            served = [r.text for r in client.translate(texts, beam_size=1, max_length=16)]
        assert set(step.compile_seconds) == {(1, 1)} and step.failed is None  # and no graph since
    expected = [t.text for t in offline("tiny").translate(texts, beam_size=1, max_length=16)]
    assert served == expected
