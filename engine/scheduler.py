"""Who decodes in the next step: the one ledger of a model's KV rows. Pure Python, no torch.

A *request* is one call's texts; a *text* is one text of a call (or one sentence of a long text). While
it decodes, a text holds ``rows`` KV-cache rows: its beams (beam search), its samples (sampling) or one
row (greedy). The scheduler owns every text from submission to its end and counts every row in use;
the engine core (core.py) applies what it decides to the batch in the same step, so after every step
the rows this ledger counts are exactly the rows the batch holds::

    out = scheduler.schedule(now)     # 1. aborts (cancelled, expired), then admissions
    batch.remove(running aborts); batch.add(admitted)
    ... one decoder step ...
    scheduler.release(text, reason)   # 2. each text that finished or failed gives its rows back

Policy, and why:

- **Queue bound in texts**, not requests: a text is the unit of work and memory, so ``max_queue``
  bounds both whatever the texts-per-request mix. A request is queued all-or-nothing (QueueFullError
  queues none of it). Everything accepted leaves exactly once, through :meth:`schedule` (aborted) or
  :meth:`release`, with a :class:`FinishReason`.
- **Admission: what fits, fairly.** Each step, waiting texts are admitted into the free rows within a
  budget of ``max_batch_tokens`` new source tokens (the newcomers' encoder pass; the first admission
  of a step may exceed it, so a long text never waits forever). Requests take turns, one text a turn:
  higher priority first, then the request holding the fewest rows, then the older; so a one-sentence
  call behind a 16-text beam-8 call starts at the next free rows instead of after all sixteen. A text
  that does not fit is passed over for one that does, in the same step.
- **Ageing, so nothing starves.** Being passed over is how a wide text (beam 8) could starve behind a
  stream of narrow ones. A request that holds no rows and has been passed over for ``aging_seconds``
  reserves the rows it needs: nothing behind it is admitted until it fits, and since running texts
  only finish, its room always comes.
- **Newcomers join in groups.** While texts are running, waiting texts are admitted once
  ``join_rows`` rows are free (an eighth of the rows by default) or after they have been held
  ``join_steps`` steps (4). An encoder pass for one newcomer costs nearly what one for several does:
  at saturation, when a row frees at almost every step, admitting each newcomer alone spent 45% of the
  engine's time encoding (the tiny test model, 16 rows). An idle batch admits at once.
- **Within a request**, texts start in order (``order="arrival"``), or longest first
  (``order="longest_first"``: the offline Translator's order, so that texts decoding together have
  similar lengths and pad less).
- **Cancellation and deadlines**: a cancelled waiting text leaves the queue at once (freeing queue
  room); a cancelled running one, and any text whose deadline passed (``now >= deadline``), leaves at
  the next ``schedule``, whose admissions may use its rows (the core removes it from the batch first).
- **Shedding**: a text is not admitted when it cannot finish before its deadline: its expected
  output length (the source length times the output/source ratio seen so far, at most its max_length)
  times the recent step time. It ends DEADLINE at once instead of spending rows on an answer nobody
  will read. A request one of whose texts could not finish in time even if admitted on arrival is
  refused by ``submit`` (DeadlineUnreachableError), before it takes queue room that a call which can
  finish could use (when the core passes the time; without it, admission sheds it as above).

Thread safety: ``submit`` and ``cancel`` come from the event loop's thread, the rest from the engine's;
one lock guards the state, and ``wait_for_work`` lets an idle engine sleep until something arrives.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import DeadlineUnreachableError, QueueFullError
from .events import FinishReason

Order = Literal["arrival", "longest_first"]

# How fast the step-time and length-ratio estimates follow new observations (exponential averages).
_STEP_SMOOTHING = 0.1
_RATIO_SMOOTHING = 0.05


class TextState(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"  # see Text.finish_reason


@dataclass(eq=False)
class Text:
    """One text of a request, from submission to its end. Identity is the object (eq=False)."""

    text_id: Hashable
    rows: int  # KV rows it holds while running
    source_tokens: int
    max_tokens: int  # the most tokens it may generate (its max_length): the ceiling of the shedding estimate
    #: What the batch decodes (engine.batch.NewText); the scheduler never looks inside.
    work: Any = None
    request: Request = field(init=False, repr=False)
    state: TextState = TextState.WAITING
    finish_reason: FinishReason | None = None
    admitted_time: float | None = None
    # Set by the engine core, for the latency metrics.
    first_token_time: float | None = None
    tokens: int = 0  # decoder steps it has taken part in (its output length so far)


@dataclass(eq=False)
class Request:
    """One call's texts, admitted and cancelled together."""

    request_id: Hashable
    texts: list[Text]
    arrival_time: float
    deadline: float | None = None  # absolute, on the clock passed to schedule(now)
    priority: int = 0  # higher is admitted first (ageing still applies across priorities)
    #: Who hears its events (the server's call); the scheduler never calls it.
    listener: Any = None
    #: How log lines name it (the server uses the call's x-request-id); the request id when empty.
    label: str = ""
    running_rows: int = field(default=0, init=False)
    open_texts: int = field(default=0, init=False)  # texts that have not ended
    passed_over_since: float | None = field(default=None, init=False)
    sequence: int = field(default=0, init=False)  # arrival order among requests

    def __post_init__(self) -> None:
        self.label = self.label or str(self.request_id)
        for text in self.texts:
            text.request = self
        self.open_texts = len(self.texts)


@dataclass(frozen=True)
class Abort:
    text: Text
    reason: FinishReason
    was_running: bool  # True: the batch holds its rows and must drop them


@dataclass
class SchedulerOutput:
    """What to do this step: drop ``aborted`` from the batch (those that were running), then add ``admitted``."""

    admitted: list[Text] = field(default_factory=list)
    aborted: list[Abort] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        max_rows: int,
        max_batch_tokens: int,
        max_queue: int,
        *,
        order: Order = "arrival",
        aging_seconds: float = 2.0,
        join_rows: int | None = None,
        join_steps: int = 4,
    ) -> None:
        for name, value in (("max_rows", max_rows), ("max_batch_tokens", max_batch_tokens),
                            ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if order not in ("arrival", "longest_first"):
            raise ValueError(f"order must be 'arrival' or 'longest_first', got {order!r}")
        if not aging_seconds >= 0:
            raise ValueError(f"aging_seconds must be >= 0, got {aging_seconds!r}")
        self.max_rows = max_rows
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.order = order
        self.aging_seconds = aging_seconds
        self.join_rows = max(1, max_rows // 8) if join_rows is None else join_rows
        if not 1 <= self.join_rows <= max_rows:
            raise ValueError(f"join_rows must be in [1, max_rows={max_rows}], got {self.join_rows!r}")
        if join_steps < 0:
            raise ValueError(f"join_steps must be >= 0, got {join_steps!r}")
        self.join_steps = join_steps
        self._held_steps = 0  # steps newcomers have been held back for company (see _admit)
        # Waiting texts per request, requests in arrival order; texts in the order they start.
        self._waiting: dict[Hashable, deque[Text]] = {}
        self._num_waiting = 0
        self._running: dict[Text, None] = {}  # insertion-ordered set
        self._rows_in_use = 0
        self._pending: list[Abort] = []  # cancelled while waiting: reported by the next schedule()
        self._cancelled: set[Hashable] = set()  # requests cancelled with texts still running
        self._budget = max_batch_tokens  # source tokens still admissible in this step
        self._requests: dict[Hashable, Request] = {}  # every request with a text not yet ended
        self._next_deadline = math.inf  # earliest deadline of a waiting request
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        # Estimates for shedding, learned from the engine's own steps.
        self.step_seconds: float | None = None
        self.length_ratio: float | None = None

    # -- counters (read without the lock: each is one atomic read, good enough for gauges) --

    @property
    def num_waiting(self) -> int:
        return self._num_waiting

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def rows_in_use(self) -> int:
        return self._rows_in_use

    @property
    def free_rows(self) -> int:
        return self.max_rows - self._rows_in_use

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def running(self) -> list[Text]:
        with self._cond:
            return list(self._running)

    def has_work(self) -> bool:
        return bool(self._num_waiting or self._running or self._pending)

    # -- the event loop side -----------------------------------------------------------------

    def submit(self, request: Request, now: float | None = None) -> None:
        """Queue a request's texts, all or none (QueueFullError when they do not all fit now;
        DeadlineUnreachableError, given the time `now`, when one of them cannot finish before the
        request's deadline even if admitted at once: see Shedding).

        ValueError for what the caller should have checked: more texts than ``max_queue``, a text needing
        more than ``max_rows`` rows, a request id already in use.
        """
        texts = request.texts
        if len(texts) > self.max_queue:
            raise ValueError(f"the request has {len(texts)} texts, more than max_queue={self.max_queue}")
        for text in texts:
            if not 1 <= text.rows <= self.max_rows:
                raise ValueError(f"text {text.text_id!r} needs {text.rows} rows; max_rows is {self.max_rows}")
        with self._cond:
            if self._num_waiting + len(texts) > self.max_queue:
                raise QueueFullError(len(texts), self._num_waiting, self.max_queue)
            if now is not None and request.deadline is not None:
                slowest = max((self.expected_seconds(text) or 0.0 for text in texts), default=0.0)
                if now + slowest > request.deadline:
                    raise DeadlineUnreachableError(request.deadline - now, slowest)
            if request.request_id in self._requests:
                raise ValueError(f"request id {request.request_id!r} is already in use")
            if not texts:
                return
            request.sequence = next(self._sequence)
            ordered = sorted(texts, key=lambda t: -t.source_tokens) if self.order == "longest_first" else texts
            self._waiting[request.request_id] = deque(ordered)
            self._num_waiting += len(texts)
            self._requests[request.request_id] = request
            if request.deadline is not None:
                self._next_deadline = min(self._next_deadline, request.deadline)
            self._cond.notify_all()

    def cancel(self, request_id: Hashable) -> int:
        """Cancel every text of a request that has not ended; returns how many that was."""
        with self._cond:
            request = self._requests.get(request_id)
            if request is None:
                return 0
            count = 0
            for text in self._waiting.pop(request_id, ()):
                self._num_waiting -= 1
                self._end(text, FinishReason.CANCELLED)
                self._pending.append(Abort(text, FinishReason.CANCELLED, False))
                count += 1
            running = sum(1 for t in request.texts if t.state is TextState.RUNNING)
            if running:
                self._cancelled.add(request_id)  # its running texts leave at the next schedule()
            count += running
            self._cond.notify_all()
            return count

    # -- the engine side -------------------------------------------------------------------------

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until there is something to schedule (or ``timeout`` seconds pass); True if there is."""
        with self._cond:
            return self._cond.wait_for(self.has_work, timeout)

    def schedule(self, now: float) -> SchedulerOutput:
        """Drop cancelled and expired texts, then admit waiting texts into the free rows."""
        with self._cond:
            out = SchedulerOutput(aborted=self._pending)
            self._pending = []
            self._abort_running(now, out)
            if now >= self._next_deadline:
                self._abort_expired_waiting(now, out)
            self._admit(now, out)
            return out

    def release(self, text: Text, reason: FinishReason) -> None:
        """A running text left the batch (finished, or failed in a step): its rows are free."""
        with self._cond:
            if text.state is not TextState.RUNNING:
                raise ValueError(f"text {text.text_id!r} is {text.state.value}, not running")
            del self._running[text]
            self._rows_in_use -= text.rows
            text.request.running_rows -= text.rows
            self._end(text, reason)

    def resize(self, text: Text, rows: int) -> None:
        """A running text now holds fewer rows (some of its samples finished)."""
        with self._cond:
            freed = text.rows - rows
            text.rows = rows
            self._rows_in_use -= freed
            text.request.running_rows -= freed

    def abort_all(self, reason: FinishReason) -> list[Abort]:
        """End every text, waiting and running (the batch was lost, or the engine stops); what ended."""
        with self._cond:
            aborted = self._pending
            self._pending = []
            for text in list(self._running):
                self.release(text, reason)
                aborted.append(Abort(text, reason, True))
            for texts in self._waiting.values():
                for text in texts:
                    self._end(text, reason)
                    aborted.append(Abort(text, reason, False))
            self._waiting.clear()
            self._num_waiting = 0
            return aborted

    def upcoming(self, max_texts: int, max_tokens: int) -> list[Text]:
        """Waiting texts in about the order they will be admitted (requests by turn, their texts in order,
        one text of each request a round), at most `max_texts` with `max_tokens` source tokens in all:
        what the batch may encode ahead of their admission. A guess, never a promise: nothing changes."""
        with self._cond:
            line = sorted(self._waiting, key=lambda rid: self._turn_key(self._requests[rid]))
            queues = [iter(self._waiting[rid]) for rid in line]
            chosen: list[Text] = []
            tokens = 0
            while queues and len(chosen) < max_texts:
                still = []
                for queue in queues:
                    text = next(queue, None)
                    if text is None:
                        continue
                    if tokens + text.source_tokens > max_tokens or len(chosen) == max_texts:
                        return chosen
                    chosen.append(text)
                    tokens += text.source_tokens
                    still.append(queue)
                queues = still
            return chosen

    def observe_step(self, seconds: float) -> None:
        """How long the last engine step took (for the shedding estimate)."""
        self.step_seconds = _smooth(self.step_seconds, seconds, _STEP_SMOOTHING)

    def observe_output(self, source_tokens: int, output_tokens: int) -> None:
        """A text finished with this many tokens (for the shedding estimate)."""
        if source_tokens > 0:
            self.length_ratio = _smooth(self.length_ratio, output_tokens / source_tokens, _RATIO_SMOOTHING)

    def expected_seconds(self, text: Text) -> float | None:
        """How long the text will take to decode once admitted, or None before the engine has run."""
        if self.step_seconds is None or self.length_ratio is None:
            return None
        tokens = min(text.max_tokens, math.ceil(self.length_ratio * text.source_tokens) + 1)
        return tokens * self.step_seconds

    # -- inside the lock ---------------------------------------------------------------------------

    def _end(self, text: Text, reason: FinishReason) -> None:
        text.state = TextState.DONE
        text.finish_reason = reason
        request = text.request
        request.open_texts -= 1
        if request.open_texts == 0:
            self._requests.pop(request.request_id, None)
            self._cancelled.discard(request.request_id)

    def _abort_running(self, now: float, out: SchedulerOutput) -> None:
        for text in list(self._running):
            request = text.request
            if request.request_id in self._cancelled:
                reason = FinishReason.CANCELLED
            elif request.deadline is not None and now >= request.deadline:
                reason = FinishReason.DEADLINE
            else:
                continue
            self.release(text, reason)
            out.aborted.append(Abort(text, reason, True))

    def _abort_expired_waiting(self, now: float, out: SchedulerOutput) -> None:
        self._next_deadline = math.inf
        for request_id, texts in list(self._waiting.items()):
            deadline = self._requests[request_id].deadline
            if deadline is None:
                continue
            if now < deadline:
                self._next_deadline = min(self._next_deadline, deadline)
                continue
            del self._waiting[request_id]
            for text in texts:
                self._num_waiting -= 1
                self._end(text, FinishReason.DEADLINE)
                out.aborted.append(Abort(text, FinishReason.DEADLINE, False))

    def _admit(self, now: float, out: SchedulerOutput) -> None:
        free = self.max_rows - self._rows_in_use
        if free == 0 or not self._waiting:
            return
        if self._running and free < self.join_rows and self._held_steps < self.join_steps:
            self._held_steps += 1  # newcomers join in groups: one encoder pass for several
            return
        self._held_steps = 0
        self._budget = self.max_batch_tokens
        starving = self._starving(now)
        if starving is not None:
            free, _ = self._admit_head(starving, free, now, out)
            if starving.request_id in self._waiting and starving.running_rows == 0:
                return  # it reserves the rows it needs: nobody behind it goes first
        # One text per turn; a request goes back in line with the rows it now holds (round robin by need).
        line = [(self._turn_key(self._requests[rid]), rid) for rid in self._waiting]
        heapq.heapify(line)
        while line and free:
            _, request_id = heapq.heappop(line)
            request = self._requests[request_id]
            free, moved = self._admit_head(request, free, now, out)
            if moved and request_id in self._waiting:  # back in line with the rows it now holds
                heapq.heappush(line, (self._turn_key(request), request_id))
        if out.admitted:  # who holds no rows and saw a later request go first has been passed over
            latest = max(t.request.sequence for t in out.admitted)
            for request_id in self._waiting:
                request = self._requests[request_id]
                if request.sequence < latest and request.running_rows == 0 and request.passed_over_since is None:
                    request.passed_over_since = now

    @staticmethod
    def _turn_key(request: Request) -> tuple[int, int, int]:
        return (-request.priority, request.running_rows, request.sequence)

    def _admit_head(self, request: Request, free: int, now: float, out: SchedulerOutput) -> tuple[int, bool]:
        """Admit the request's next text if it fits (shed it if it cannot finish in time).

        Returns the rows still free and whether the text left the queue."""
        texts = self._waiting[request.request_id]
        text = texts[0]
        first = not out.admitted  # the first admission of a step may exceed the token budget
        if text.rows > free or (not first and text.source_tokens > self._budget):
            return free, False
        texts.popleft()
        if not texts:
            del self._waiting[request.request_id]
        self._num_waiting -= 1
        if self._cannot_finish_in_time(text, now):
            self._end(text, FinishReason.DEADLINE)
            out.aborted.append(Abort(text, FinishReason.DEADLINE, False))
            return free, True
        text.state = TextState.RUNNING
        text.admitted_time = now
        self._running[text] = None
        self._rows_in_use += text.rows
        request.running_rows += text.rows
        request.passed_over_since = None
        self._budget -= text.source_tokens
        out.admitted.append(text)
        return free - text.rows, True

    def _starving(self, now: float) -> Request | None:
        """The oldest request that holds no rows and has been passed over for ``aging_seconds``."""
        for request_id in self._waiting:
            request = self._requests[request_id]
            since = request.passed_over_since
            if request.running_rows == 0 and since is not None and now - since >= self.aging_seconds:
                return request
        return None

    def _cannot_finish_in_time(self, text: Text, now: float) -> bool:
        deadline = text.request.deadline
        if deadline is None:
            return False
        expected = self.expected_seconds(text)
        return expected is not None and now + expected > deadline


def _smooth(average: float | None, value: float, weight: float) -> float:
    return value if average is None else average + weight * (value - average)


__all__ = ["Abort", "FinishReason", "Order", "Request", "Scheduler", "SchedulerOutput", "Text", "TextState"]
