"""Driving an engine core directly in the model tests: texts joining at chosen steps, run to the end.

A plain module (not the conftest) so that test modules can import it: ``from _engine_helpers import run_jobs``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from mtserve.engine.batch import NewText
from mtserve.engine.core import EngineCore
from mtserve.engine.scheduler import Request, Scheduler, Text
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis
from mtserve.model.transformer import Transformer


def engine_core(model: Transformer, num_rows: int) -> EngineCore:
    """An engine core on `model` with `num_rows` rows and no queue or token limits to speak of."""
    return EngineCore(model, Scheduler(num_rows, 2**30, 2**30), name="test")


def submit_text(core: EngineCore, key: Hashable, source: Sequence[int], options: SearchOptions) -> Text:
    """Queue one text as its own request (request id and text id `key`)."""
    text = Text(key, options.rows, len(source), options.max_length, work=NewText(list(source), options))
    core.submit(Request(key, [text], arrival_time=core.clock()))
    return text


def run_jobs(
    model: Transformer,
    jobs: Sequence[tuple[Sequence[int], SearchOptions, int]],
    num_rows: int | None = None,
) -> list[list[Hypothesis]]:
    """Decode `jobs` (source, options, the step before which it joins) in one engine core; each job's
    hypotheses. `num_rows` defaults to room for every job at once."""
    core = engine_core(model, num_rows or sum(options.rows for _, options, _ in jobs))
    results: dict[Hashable, list[Hypothesis]] = {}
    step = 0
    while len(results) < len(jobs):
        for index, (source, options, join) in enumerate(jobs):
            if join == step:
                submit_text(core, index, source, options)
        for event in core.step().events:
            assert event.finish_reason is None or event.hypotheses is not None, event
            if event.hypotheses is not None:
                results[event.text.text_id] = event.hypotheses
        step += 1
    assert core.scheduler.rows_in_use == core.batch.rows_in_use == 0
    return [results[i] for i in range(len(jobs))]


def decode_all(
    model: Transformer,
    sources: Sequence[Sequence[int]],
    options: SearchOptions,
    *,
    num_rows: int = 64,
) -> list[list[Hypothesis]]:
    """Decode every source in one engine core with `num_rows` rows: all queued at once, admitted in order
    as rows free up."""
    return run_jobs(model, [(source, options, 0) for source in sources], num_rows)
