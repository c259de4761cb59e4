"""The engine core under saturation, cancellation, deadlines and faults, step by step (no threads, no sleeps).

Every test drives ``EngineCore.step()`` itself, so "the batch is full and a text waits" is a state the test
builds, not a race it hopes for. After every step the rows the scheduler counts must equal the rows the
batch holds, each text must end exactly once, and at the end every row must be back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
import torch
from _tiny_model import EOS

from mtserve.engine.batch import NewText
from mtserve.engine.core import EngineCore, is_out_of_memory
from mtserve.engine.errors import DeadlineUnreachableError
from mtserve.engine.events import FinishReason, TextEvent
from mtserve.engine.scheduler import Request, Scheduler, Text
from mtserve.model.options import SearchOptions
from mtserve.model.transformer import Transformer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def source(n: int, seed: int = 0) -> list[int]:
    return [2 + (seed * 7 + i * 3) % 30 for i in range(n - 1)] + [EOS]


def make(model: Transformer, rows: int, clock: Clock | None = None) -> EngineCore:
    return EngineCore(model, Scheduler(rows, 1000, 100), name="test", clock=clock or Clock())


def submit(core: EngineCore, request_id: str, max_length: int, *, beam: int = 1, texts: int = 1,
           deadline: float | None = None, length: int = 6, **options: object) -> list[Text]:
    search = SearchOptions(beam_size=beam, max_length=max_length, **options)  # type: ignore[arg-type]
    made = [
        Text((request_id, i), search.rows, length, max_length, work=NewText(source(length, seed=i), search))
        for i in range(texts)
    ]
    core.submit(Request(request_id, made, arrival_time=core.clock(), deadline=deadline))
    return made


class Run:
    """Steps a core, checking the row invariant after every step and that every text ends exactly once."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.events: list[TextEvent] = []

    def step(self) -> list[TextEvent]:
        events = self.core.step().events
        self.events += events
        scheduler, batch = self.core.scheduler, self.core.batch
        assert scheduler.rows_in_use == batch.rows_in_use, "the scheduler's rows and the batch's rows differ"
        assert scheduler.num_running == len(batch.slots)
        ended = Counter(id(e.text) for e in self.events if e.finished)
        assert max(ended.values(), default=1) == 1, "a text ended twice"
        return events

    def to_end(self, limit: int = 500) -> None:
        for _ in range(limit):
            if not self.core.has_work():
                break
            self.step()
        assert not self.core.has_work()
        assert self.core.scheduler.rows_in_use == self.core.batch.rows_in_use == 0, "rows did not all come back"

    def ending(self, text: Text) -> TextEvent:
        [event] = [e for e in self.events if e.text is text and e.finished]
        return event

    def tokens(self, text: Text) -> list[int]:
        event = self.ending(text)
        assert event.hypotheses is not None, event
        return event.hypotheses[0].token_ids


def test_cancel_at_a_full_batch_fails_nobody_and_admits_the_waiting_text(endless: Transformer) -> None:
    """The issue's repro: every row running, one text waiting, a running text cancelled."""
    core = make(endless, rows=2)
    run = Run(core)
    [victim] = submit(core, "victim", 50)
    [innocent] = submit(core, "innocent", 12)
    run.step()
    [waiting] = submit(core, "waiting", 7)
    run.step()
    assert core.scheduler.num_waiting == 1 and core.batch.free_rows == 0
    assert core.cancel("victim") == 1
    events = run.step()  # the victim leaves and the waiting text joins in this very step
    assert [(e.text, e.finish_reason) for e in events if e.finished] == [(victim, FinishReason.CANCELLED)]
    assert {s.key for s in core.batch.slots} == {innocent, waiting}
    run.to_end()
    assert run.ending(innocent).finish_reason is FinishReason.MAX_LENGTH
    assert len(run.tokens(innocent)) == 11 and len(run.tokens(waiting)) == 6  # forced </s> is the last


def test_deadline_at_saturation(endless: Transformer) -> None:
    clock = Clock()
    core = make(endless, rows=2, clock=clock)
    run = Run(core)
    [expiring] = submit(core, "expiring", 50, deadline=5.0)
    [innocent] = submit(core, "innocent", 10)
    run.step()
    [waiting] = submit(core, "waiting", 5)
    clock.now = 4.9
    run.step()
    assert core.scheduler.num_waiting == 1
    clock.now = 5.0
    events = run.step()
    assert [(e.text, e.finish_reason) for e in events if e.finished] == [(expiring, FinishReason.DEADLINE)]
    assert {s.key for s in core.batch.slots} == {innocent, waiting}
    run.to_end()
    assert run.ending(innocent).finish_reason is run.ending(waiting).finish_reason is FinishReason.MAX_LENGTH


def test_every_running_text_cancelled_at_once(endless: Transformer) -> None:
    core = make(endless, rows=8)
    run = Run(core)
    running = [text for i in range(4) for text in submit(core, f"r{i}", 40, beam=2)]
    run.step()
    waiting = submit(core, "w", 6, texts=3)
    run.step()
    assert core.batch.free_rows == 0 and core.scheduler.num_waiting == 3
    for i in range(4):
        core.cancel(f"r{i}")
    events = run.step()
    assert {e.text for e in events if e.finish_reason is FinishReason.CANCELLED} == set(running)
    assert {s.key for s in core.batch.slots} == set(waiting)
    run.to_end()
    assert all(len(run.tokens(text)) == 5 for text in waiting)


def test_a_cancel_racing_its_own_finish_ends_the_text_once(endless: Transformer) -> None:
    core = make(endless, rows=2)
    run = Run(core)
    [text] = submit(core, "racer", 3)
    run.step()
    run.step()  # one step from its end (max_length 3)
    assert core.cancel("racer") == 1  # the cancel arrives first: it wins, the step never decodes it
    run.step()
    assert run.ending(text).finish_reason is FinishReason.CANCELLED
    [late] = submit(core, "late", 2)
    run.to_end()
    assert core.cancel("late") == 0  # it finished: a cancel after that finds nothing
    assert run.ending(late).finish_reason is FinishReason.MAX_LENGTH


def _alone(model: Transformer, max_length: int, beam: int, seed: int) -> list[int]:
    core = make(model, rows=beam)
    search = SearchOptions(beam_size=beam, max_length=max_length)
    [event] = core.run_to_end(Request("alone", [Text(("alone", 0), beam, 6, max_length,
                                                     work=NewText(source(6, seed=seed), search))], 0.0))
    assert event.hypotheses
    return event.hypotheses[0].token_ids


def _mixed(core: EngineCore) -> list[Text]:
    """Six texts of three requests, greedy and beam, that end at different steps."""
    texts = submit(core, "a", 9, texts=2) + submit(core, "b", 14, beam=2, texts=2) + submit(core, "c", 5, texts=2)
    return texts


@pytest.mark.parametrize("phase", ["encode", "decode", "advance"])
def test_a_fault_fails_only_the_text_that_causes_it(varied: Transformer, phase: str) -> None:
    core = make(varied, rows=16)
    run = Run(core)
    texts = _mixed(core)
    culprit = texts[3]
    calls: list[int] = []

    def inject(where: str, part: Sequence[Text]) -> None:
        if where == phase and culprit in part:
            calls.append(len(part))
            raise ValueError("injected fault")

    core.inject = inject
    run.step()
    run.step()
    run.to_end()
    ending = run.ending(culprit)
    assert ending.finish_reason is FinishReason.FAILED and isinstance(ending.error, ValueError)
    assert calls[-1] == 1  # retried in halves down to the culprit alone
    for text in texts:
        if text is not culprit:
            assert run.ending(text).finish_reason in (FinishReason.FINISHED, FinishReason.MAX_LENGTH)
            work = text.work
            assert run.tokens(text) == _alone(varied, work.options.max_length, work.options.beam_size,
                                              seed=text.text_id[1])


def test_a_full_batch_with_a_cancel_a_passing_deadline_a_fault_and_a_refusal_fails_nobody_else(
        varied: Transformer) -> None:
    """All at once, at a full batch: a running text cancelled, one whose deadline passes, one whose step
    fails, and a call refused on submit because it cannot meet its deadline. The other texts decode what
    they decode alone, and every row comes back."""
    clock = Clock()
    core = make(varied, rows=10, clock=clock)
    run = Run(core)
    innocents = submit(core, "a", 9, texts=2) + submit(core, "b", 14, beam=2, texts=2)  # 6 rows
    [cancelled] = submit(core, "cancelled", 30)
    [expiring] = submit(core, "expiring", 30, deadline=2.0)
    [culprit] = submit(core, "culprit", 30, beam=2)

    def inject(where: str, part: Sequence[Text]) -> None:
        if where == "decode" and culprit in part and clock.now >= 1.0:
            raise ValueError("injected fault")

    core.inject = inject
    run.step()
    assert core.batch.free_rows == 0  # the batch is full
    waiting = submit(core, "c", 5, texts=2)
    core.scheduler.observe_step(10.0)  # slow steps now (smoothed: about 1 s a step), as long as sources:
    core.scheduler.observe_output(source_tokens=6, output_tokens=6)  # 5 tokens cannot fit in the 1 s left
    with pytest.raises(DeadlineUnreachableError):
        submit(core, "hopeless", 5, deadline=clock.now + 1.0)
    assert core.scheduler.num_waiting == 2  # nothing of the refused call was queued
    assert core.cancel("cancelled") == 1
    clock.now = 1.0
    run.step()  # the culprit's step fails; the cancelled text leaves
    clock.now = 2.0
    run.step()  # the deadline passes
    run.to_end()
    assert run.ending(cancelled).finish_reason is FinishReason.CANCELLED
    assert run.ending(expiring).finish_reason is FinishReason.DEADLINE
    assert run.ending(culprit).finish_reason is FinishReason.FAILED
    for text in innocents + waiting:
        work = text.work
        assert run.tokens(text) == _alone(varied, work.options.max_length, work.options.beam_size,
                                          seed=text.text_id[1])


def test_out_of_memory_retries_at_half_the_rows_and_fails_nobody(varied: Transformer) -> None:
    core = make(varied, rows=16)
    run = Run(core)
    texts = _mixed(core)
    sizes: list[int] = []

    def inject(where: str, part: Sequence[Text]) -> None:
        rows = sum(text.rows for text in part)
        if where in ("encode", "decode") and rows > 4:
            sizes.append(rows)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    core.inject = inject
    run.to_end()
    assert sizes, "the fault never fired"
    for text in texts:
        work = text.work
        assert run.tokens(text) == _alone(varied, work.options.max_length, work.options.beam_size, seed=text.text_id[1])
    assert is_out_of_memory(RuntimeError("CUDA out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))


def test_a_fault_that_cannot_be_pinned_fails_that_steps_texts_and_the_engine_goes_on(
    varied: Transformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = make(varied, rows=4)
    run = Run(core)
    running = submit(core, "running", 20, texts=4)
    run.step()
    waiting = submit(core, "waiting", 5, texts=2)
    original = core.batch.select
    faults = iter([RuntimeError("a bug in selection")])

    def select_once(*args: object, **kwargs: object) -> object:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(core.batch, "select", select_once)
    run.step()
    assert all(run.ending(text).finish_reason is FinishReason.FAILED for text in running)
    run.to_end()
    assert all(run.ending(text).finish_reason is FinishReason.MAX_LENGTH for text in waiting)


def test_a_failed_row_move_starts_the_batch_afresh(varied: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    core = make(varied, rows=4)
    run = Run(core)
    running = submit(core, "running", 20, texts=2, beam=2)
    original = core.batch.apply
    calls = iter(range(100))

    def apply(plans: object) -> None:
        if next(calls) == 2:
            raise RuntimeError("index_select failed")
        original(plans)  # type: ignore[arg-type]

    monkeypatch.setattr(core.batch, "apply", apply)
    run.step()
    run.step()
    cache = core.batch.cache
    run.step()
    assert core.batch.cache is not cache and core.batch.rows_in_use == 0
    assert all(run.ending(text).finish_reason is FinishReason.FAILED for text in running)
    [after] = submit(core, "after", 6)
    run.to_end()
    assert len(run.tokens(after)) <= 5


def test_extreme_but_valid_options_decode_beside_others(varied: Transformer) -> None:
    """The options that once broke a step (length_penalty 1e30) are refused; the bounds themselves decode."""
    with pytest.raises(ValueError, match="length_penalty"):
        SearchOptions(beam_size=4, length_penalty=1e30)
    core = make(varied, rows=16)
    run = Run(core)
    extremes = [
        *submit(core, "lp+", 30, beam=4, length_penalty=10.0),
        *submit(core, "lp-", 30, beam=4, length_penalty=-10.0),
        *submit(core, "cold", 30, sampling_temperature=1e-30, seed=1),
        *submit(core, "hot", 30, sampling_temperature=3e38, seed=2),
        *submit(core, "topp", 30, sampling_topp=1e-38, seed=2**64 - 1),
    ]
    plain = submit(core, "plain", 9, texts=2)
    run.to_end()
    for text in extremes:
        event = run.ending(text)
        assert event.finish_reason in (FinishReason.FINISHED, FinishReason.MAX_LENGTH), (text.text_id, event)
        assert all(torch.isfinite(torch.tensor(h.score)) for h in event.hypotheses or [])
    for text in plain:
        assert run.tokens(text) == _alone(varied, 9, 1, seed=text.text_id[1])


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_streamed_tokens_spell_the_best_hypothesis(varied: Transformer, beam: int) -> None:
    """What a text streams can never be taken back: beam search emits the prefix all its candidates share,
    so the tokens emitted over all steps are exactly the best hypothesis's."""
    core = make(varied, rows=64)
    texts = []
    for i in range(12):
        search = SearchOptions(beam_size=beam, max_length=20)
        texts.append(Text(("s", i), beam, 6, 20, work=NewText(source(6 + i % 5, seed=i), search, stream=True)))
    core.submit(Request("s", texts, arrival_time=0.0))
    emitted: dict[Text, list[int]] = {text: [] for text in texts}
    best: dict[Text, list[int]] = {}
    early = 0
    while core.has_work():
        for event in core.step().events:
            emitted[event.text] += event.new_token_ids
            if event.finished:
                assert event.hypotheses
                best[event.text] = event.hypotheses[0].token_ids
            elif event.new_token_ids:
                early += 1
    assert all(emitted[text] == best[text] for text in texts)
    assert early > 0, "nothing was streamed before the end"


def test_a_fault_while_completing_a_finished_text_fails_that_text_alone(
    varied: Transformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alignment pass runs when a text finishes; if it raises, that text fails and the others finish."""
    import mtserve.engine.core as core_module

    core = make(varied, rows=16)
    run = Run(core)
    plain = submit(core, "plain", 9, texts=2)
    search = SearchOptions(max_length=9)
    aligned = Text(("aligned", 0), 1, 6, 9, work=NewText(source(6, seed=5), search, align=True))
    core.submit(Request("aligned", [aligned], arrival_time=core.clock()))

    def failing_align(*args: object, **kwargs: object) -> None:
        raise RuntimeError("alignment failed")

    monkeypatch.setattr(core_module, "align", failing_align)
    run.to_end()
    ending = run.ending(aligned)
    assert ending.finish_reason is FinishReason.FAILED and isinstance(ending.error, RuntimeError)
    for text in plain:
        assert run.ending(text).finish_reason in (FinishReason.FINISHED, FinishReason.MAX_LENGTH)


def test_an_encoder_pass_also_encodes_the_texts_next_in_line(varied: Transformer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows free up one at a time; the text that takes them was encoded ahead, in the first pass (which
    encodes up to the batch's rows ahead), and decodes to what it decodes alone. A waiting text cancelled
    after being encoded leaves nothing behind."""
    passes: list[int] = []
    encode = varied.encode
    monkeypatch.setattr(varied, "encode", lambda ids, mask: passes.append(ids.shape[0]) or encode(ids, mask))
    core = make(varied, rows=2)
    core.encode_ahead_tokens = 1000
    run = Run(core)
    texts = [t for i in range(2) for t in submit(core, f"r{i}", 4 + 3 * i, length=6)]
    doomed = submit(core, "doomed", 9, length=6)
    texts += submit(core, "r2", 10, length=6)
    run.step()
    assert passes == [4] and core.batch.is_encoded(texts[2]) and core.batch.is_encoded(doomed[0])
    core.cancel("doomed")
    run.step()
    assert not core.batch.is_encoded(doomed[0])
    run.to_end()
    assert passes == [4]  # the later newcomer joined without an encoder pass of its own
    monkeypatch.undo()
    for index, text in enumerate(texts):
        alone = make(varied, rows=2)
        [solo] = submit(alone, "solo", 4 + 3 * index, length=6)
        lone = Run(alone)
        lone.to_end()
        assert run.tokens(text) == lone.tokens(solo)


def test_no_encoding_ahead_when_turned_off(varied: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    encode = varied.encode
    monkeypatch.setattr(varied, "encode", lambda ids, mask: passes.append(ids.shape[0]) or encode(ids, mask))
    core = make(varied, rows=2)
    core.encode_ahead_tokens = 0
    for i in range(4):
        submit(core, f"r{i}", 4, length=6)
    Run(core).to_end()
    assert sum(passes) == 4 and len(passes) > 1
