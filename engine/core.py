"""The engine core: one ``step()`` that the server's engine thread and the offline Translator both drive.

A step::

    scheduler.schedule(now)          who leaves (cancelled, expired) and who joins, against the real rows
    batch.remove(leavers)            their rows are free at once, before anyone joins
    batch.add(newcomers)             one encoder pass for all of them
    batch.decode()                   one decoder pass over every row
    batch.constrain(), select()      logits processors, then each search kind's device work
    search.advance() per text        its plan: rows kept, next tokens, final tokens, hypotheses
    batch.apply(plans)               rows move as the plans say
    scheduler.release(finished)      their rows go back to the ledger

After every step the rows the scheduler counts equal the rows the batch holds (checked).

Faults stay local. A step that raises is retried in halves, at text boundaries, down to single texts:
a text that still fails alone fails (FAILED, with the error and a log line naming its request) and
everyone else decodes on. That serves out-of-memory too (half the rows may fit where all did not)
and any fault one text brings (a NaN its sampling cannot draw from, a bug its options reach). A fault
that cannot be pinned on texts (the processors or a kind's selection raising, a row move failing)
fails that step's texts and, when the rows may be inconsistent, starts the batch afresh; the texts
waiting are untouched and the engine goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from mtserve.model.alignment import align
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis, Plan
from mtserve.model.transformer import Transformer

from .batch import Batch, Slot
from .events import FinishReason, TextEvent
from .scheduler import Request, Scheduler, Text

log = logging.getLogger(__name__)

Phase = Literal["encode", "decode", "advance"]
#: Source tokens an encoder pass fills up to with texts next in line (see EngineCore._admit).
ENCODE_AHEAD_TOKENS = 512


@dataclass
class StepOutput:
    events: list[TextEvent] = field(default_factory=list)
    admitted: list[Text] = field(default_factory=list)
    rows: int = 0  # rows the decoder pass ran over (0: nothing was decoded)
    seconds: float = 0.0


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or an allocator's RuntimeError/MemoryError saying it ran out."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class EngineCore:
    """A model's scheduler and batch, stepped together."""

    def __init__(
        self,
        model: Transformer,
        scheduler: Scheduler,
        *,
        name: str = "model",
        clock: Callable[[], float] = time.monotonic,
        encode_ahead_tokens: int = ENCODE_AHEAD_TOKENS,
    ) -> None:
        self.name = name
        #: An encoder pass for newcomers also encodes the texts next in line up to this many source tokens
        #: in all (0: never ahead); see _admit.
        self.encode_ahead_tokens = encode_ahead_tokens
        self.clock = clock
        self.scheduler = scheduler
        self.batch = Batch(model, scheduler.max_rows)
        self._vocab_size = model.config.target_vocab_size
        #: Test-only fault injection: called with (phase, texts) before each encoder pass, decoder pass and
        #: search advance, and may raise. Nothing a caller sends (no request field, flag or variable)
        #: reaches it; the tests set it on the object.
        self.inject: Callable[[Phase, Sequence[Text]], None] | None = None

    # -- callers ----------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request's texts (all or none); their events come out of later steps."""
        self.scheduler.submit(request, self.clock())

    def cancel(self, request_id: Hashable) -> int:
        return self.scheduler.cancel(request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def run_to_end(self, request: Request) -> list[TextEvent]:
        """Offline: submit a request and step until all its texts have ended; each text's last event, in
        the order of ``request.texts``. The first text that fails raises (with its error as the cause)."""
        self.submit(request)
        last: dict[Text, TextEvent] = {}
        while self.has_work():
            for event in self.step().events:
                if event.finish_reason is FinishReason.FAILED:
                    raise RuntimeError(f"decoding text {event.text.text_id!r} failed") from event.error
                if event.finished:
                    last[event.text] = event
        return [last[text] for text in request.texts]

    def _complete(self, slot: Slot, hypotheses: list[Hypothesis]) -> list[Hypothesis]:
        """A finished text's hypotheses as the caller gets them: its prefilled prompt in front, and the
        source token each output token is aligned to when asked for (model/alignment.py)."""
        prompt = list(slot.work.prompt)
        if prompt:
            hypotheses = [replace(h, token_ids=prompt + h.token_ids) for h in hypotheses]
        if slot.work.align:  # the hypotheses a caller gets: the n-best list's
            wanted = hypotheses[: slot.options.num_hypotheses]
            alignments = align(self.batch.model, slot.work.source_ids, [h.token_ids for h in wanted])
            hypotheses = [replace(h, alignment=a) for h, a in zip(wanted, alignments, strict=True)] + hypotheses[
                len(wanted):]
        return hypotheses

    def check(self, source_ids: Sequence[int], options: SearchOptions, prompt: Sequence[int] = (),
              constraints: Sequence[Sequence[int]] = ()) -> None:
        """ValueError when this model cannot decode the text at all (too long, max_length too big, a target
        prefix leaving no room, terminology without beam search)."""
        self.batch.check(source_ids, options, prompt, constraints)

    # -- the step ---------------------------------------------------------------------------------

    def step(self) -> StepOutput:
        started = self.clock()
        scheduled = self.scheduler.schedule(started)
        out = StepOutput(admitted=scheduled.admitted)
        out.events = [TextEvent(a.text, finish_reason=a.reason) for a in scheduled.aborted]
        self.batch.forget([a.text for a in scheduled.aborted if not a.was_running])
        leaving = {a.text for a in scheduled.aborted if a.was_running}
        if leaving:
            try:
                self.batch.remove(leaving)
            except Exception as exc:
                self._lose_batch(exc, out.events)
                return self._finish(out, started)
        self._admit(scheduled.admitted, out.events)
        out.rows = self.batch.rows_in_use
        if out.rows:
            self._decode(out.events)
        return self._finish(out, started)

    def _finish(self, out: StepOutput, started: float) -> StepOutput:
        if self.scheduler.rows_in_use != self.batch.rows_in_use:  # a bug: say so, and start clean
            error = RuntimeError(
                f"row ledger mismatch: the scheduler counts {self.scheduler.rows_in_use} rows, "
                f"the batch holds {self.batch.rows_in_use}"
            )
            self._lose_batch(error, out.events)
        out.seconds = self.clock() - started
        if out.rows:
            self.scheduler.observe_step(out.seconds)
        return out

    def _admit(self, texts: list[Text], events: list[TextEvent], ahead: bool = True) -> None:
        """Encode newcomers together; when that raises, in halves, down to the text that cannot be.

        A pass that must run anyway also encodes the texts next in line (Scheduler.upcoming), up to
        ``encode_ahead_tokens`` source tokens in all: when rows free up a few at a time, each group of
        newcomers would otherwise pay an encoder pass of its own, and small passes cost far more per token
        (bundled model, one thread: 61 µs a token in a pass of 112 tokens, 44 µs in one of 448; over 500
        dictionary entries greedy, the offline Translator spent 29% of its time in 82 encoder passes)."""
        if not texts:
            return
        upcoming: list[Text] = []
        if ahead and not all(self.batch.is_encoded(text) for text in texts):
            budget = self.encode_ahead_tokens - sum(text.source_tokens for text in texts)
            if budget > 0:
                upcoming = self.scheduler.upcoming(self.scheduler.max_rows, budget)
        try:
            self._probe("encode", texts)
            self.batch.add([(text, text.work) for text in texts], ahead=[(text, text.work) for text in upcoming])
        except Exception as exc:
            if len(texts) == 1:
                self._fail(texts, exc, events, "encoder")
                return
            self._note_retry(exc, "encoder", len(texts))
            half = len(texts) // 2
            self._admit(texts[:half], events, ahead=False)
            self._admit(texts[half:], events, ahead=False)

    def _decode(self, events: list[TextEvent]) -> None:
        slots = list(self.batch.slots)
        failed: dict[int, BaseException] = {}
        logprobs = self._decode_part(0, len(slots), failed)
        selections: list[object]
        try:
            self.batch.constrain(logprobs)
            selections = self.batch.select(logprobs, skip=failed)
        except Exception as exc:  # cannot be told whose: every text of the step fails
            failed = {index: failed.get(index, exc) for index in range(len(slots))}
            selections = [None] * len(slots)
        now = self.clock()
        plans: list[Plan | None] = []
        news: list[TextEvent] = []
        for index, slot in enumerate(slots):
            text: Text = slot.key  # type: ignore[assignment]
            plan = None
            if index not in failed:
                try:
                    self._probe("advance", [text])
                    advanced = slot.search.advance(selections[index], self.batch.eos_id)
                    if advanced.finished and advanced.hypotheses:
                        advanced.hypotheses = self._complete(slot, advanced.hypotheses)
                    plan = advanced
                except Exception as exc:  # this text fails, alone
                    failed[index] = exc
            plans.append(plan)
            if plan is None:
                continue
            text.tokens += 1
            if text.first_token_time is None:
                text.first_token_time = now
            emitted = list(plan.emitted) if slot.work.stream else []
            if (slot.work.stream and slot.work.target_prefix and not slot.prompt_emitted
                    and (emitted or plan.finished)):  # a streamed output starts with its prompt
                emitted, slot.prompt_emitted = list(slot.work.prompt) + emitted, True
            if plan.finished:
                news.append(TextEvent(text, emitted, plan.hypotheses, _finish_reason(plan)))
            elif emitted:
                news.append(TextEvent(text, emitted))
        try:
            self.batch.apply(plans)
        except Exception as exc:
            self._lose_batch(exc, events)
            return
        events += news
        for slot, plan in zip(slots, plans, strict=True):
            text = slot.key  # type: ignore[assignment]
            if plan is not None and plan.finished:
                self.scheduler.release(text, _finish_reason(plan))
                self.scheduler.observe_output(text.source_tokens, text.tokens)
            elif plan is not None and text.rows != slot.rows:  # samples that ended gave their rows back
                self.scheduler.resize(text, slot.rows)
        for index, exc in failed.items():
            self._fail([slots[index].key], exc, events, "decoder")  # type: ignore[list-item]

    def _decode_part(self, first: int, stop: int, failed: dict[int, BaseException]) -> torch.Tensor:
        """Log-probs for the rows of slots[first:stop]; a part that raises is decoded in halves, and a
        single text that still raises is recorded in `failed` (its rows get placeholder zeros)."""
        slots = self.batch.slots[first:stop]
        try:
            self._probe("decode", [slot.key for slot in slots])  # type: ignore[misc]
            return self.batch.decode(first, stop)
        except Exception as exc:
            if stop - first == 1:
                failed[first] = exc
                return torch.zeros(slots[0].rows, self._vocab_size, device=self.batch.device)
            self._note_retry(exc, "decoder", sum(slot.rows for slot in slots))
            middle = _half_of_the_rows(self.batch.slots, first, stop)
            return torch.cat([self._decode_part(first, middle, failed), self._decode_part(middle, stop, failed)])

    # -- faults ------------------------------------------------------------------------------------

    def _probe(self, phase: Phase, texts: Sequence[Text]) -> None:
        if self.inject is not None:
            self.inject(phase, texts)

    def _note_retry(self, exc: BaseException, where: str, size: int) -> None:
        if is_out_of_memory(exc):
            log.warning("model %s: out of memory in the %s pass over %d; retrying in halves", self.name, where, size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            log.warning("model %s: the %s pass over %d raised %s; retrying in halves to find the cause",
                        self.name, where, size, type(exc).__name__)

    def _fail(self, texts: Sequence[Text], exc: BaseException, events: list[TextEvent], where: str) -> None:
        """These running texts failed: their rows go back (the batch no longer holds them), each caller hears."""
        log.error("model %s: the %s step failed for %d text(s): %s: %s", self.name, where, len(texts),
                  type(exc).__name__, exc, exc_info=exc)
        for text in texts:
            log.error("model %s: text %r of request %s failed (%s)", self.name, text.text_id,
                      text.request.label, type(exc).__name__)
            self.scheduler.release(text, FinishReason.FAILED)
            events.append(TextEvent(text, finish_reason=FinishReason.FAILED, error=exc))

    def _lose_batch(self, exc: BaseException, events: list[TextEvent]) -> None:
        """The rows may be inconsistent: every running text fails, and the batch starts afresh."""
        self.batch.reset()
        self._fail(self.scheduler.running(), exc, events, "row moves")


def _finish_reason(plan: Plan) -> FinishReason:
    best = plan.hypotheses[0] if plan.hypotheses else None
    return FinishReason.MAX_LENGTH if best is not None and best.max_length_reached else FinishReason.FINISHED


def _half_of_the_rows(slots: Sequence[object], first: int, stop: int) -> int:
    """The slot index in (first, stop) that splits their rows most evenly."""
    total = sum(slot.rows for slot in slots[first:stop])  # type: ignore[attr-defined]
    running = 0
    for index in range(first, stop - 1):
        running += slots[index].rows  # type: ignore[attr-defined]
        if running * 2 >= total:
            return index + 1
    return stop - 1


__all__ = ["EngineCore", "Phase", "StepOutput", "is_out_of_memory"]
