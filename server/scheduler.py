"""Iteration-level (continuous) batching of sequence groups into KV-cache slots. Pure Python, no torch.

A *sequence group* is one text of a request (or one sentence of a long text).
While it decodes it occupies ``slots`` KV-cache rows: its beams (beam search),
its samples (sampling, one per hypothesis) or one row (greedy). The engine
drives the scheduler once per decoding step::

    out = scheduler.schedule(now)      # aborts first, then admissions
    for a in out.aborted: ...          # cancel in the decoder if a.was_running; fail the caller
    for g in out.admitted: ...         # add to the decoder (one encoder pass for all of them)
    finished = runner.step()
    scheduler.update(finished)         # frees their slots for the next schedule()

Policy, and why:

- **Queue bound in groups**, not requests: a group is the unit of work and
  memory, so ``max_queue`` bounds both whatever the texts-per-request mix. A
  request is queued all-or-nothing: when its groups do not all fit,
  ``submit`` raises QueueFullError and queues none of them. Everything
  accepted leaves exactly once: admitted and later finished (``update``), or
  reported in ``SchedulerOutput.aborted``.
- **Admission**: oldest first into free slots (``max_batch_size``) within a
  per-step budget of ``max_batch_tokens`` new source tokens (the encoder pass
  of the newcomers). A group larger than the whole budget is admitted alone as
  the first admission of a step, so it never starves. When the oldest group
  does not fit, nothing behind it is admitted (no bypass): running groups only
  finish, so its room always comes and nothing waits forever.
- ``policy="shortest_first"``: the oldest group still goes first (the no-bypass
  rule above keeps every group starvation-free: each becomes the oldest), and
  the rest of the step's room is filled with the shortest waiting sources,
  which packs more texts per step and reduces encoder padding. The default
  is "fifo".
- **Cancellation and deadlines**: a cancelled waiting group leaves the queue at
  once (freeing queue room); a cancelled running one, and any group whose
  deadline passed (``now >= deadline``), leaves at the next ``schedule``.
  Slots freed by aborts are available to the same step's admissions.

Thread safety: ``submit`` and ``cancel*`` come from the event loop thread,
``schedule``/``update`` from the engine thread; one lock guards the state,
and ``wait_for_work`` lets an idle engine sleep until something arrives.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import QueueFullError, ValidationError

GroupId = Hashable
Policy = Literal["fifo", "shortest_first"]


class AbortReason(str, enum.Enum):
    CANCELLED = "cancelled"
    DEADLINE = "deadline"


@dataclass
class SequenceGroup:
    """One text to decode. ``payload`` is the engine's (source ids, options...); the scheduler ignores it."""

    group_id: GroupId
    slots: int
    source_tokens: int
    arrival_time: float
    request_id: Hashable | None = None
    deadline: float | None = None  # absolute, on the clock passed to schedule(now)
    payload: Any = None
    admitted_time: float | None = None  # set by schedule()


@dataclass(frozen=True)
class Aborted:
    group_id: GroupId
    request_id: Hashable | None
    reason: AbortReason
    was_running: bool  # True: the decoder holds it and must cancel it


@dataclass
class SchedulerOutput:
    """What to do this step. Apply ``aborted`` before ``admitted`` (admissions may use aborted slots)."""

    admitted: list[SequenceGroup] = field(default_factory=list)
    aborted: list[Aborted] = field(default_factory=list)
    # State after this step's changes, for the gauges.
    num_waiting: int = 0
    num_running: int = 0
    slots_in_use: int = 0

    @property
    def admitted_ids(self) -> list[GroupId]:
        return [g.group_id for g in self.admitted]

    @property
    def admitted_tokens(self) -> int:
        return sum(g.source_tokens for g in self.admitted)


class Scheduler:
    def __init__(
        self,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue: int,
        policy: Policy = "fifo",
    ) -> None:
        for name, value in (("max_batch_size", max_batch_size), ("max_batch_tokens", max_batch_tokens),
                            ("max_queue", max_queue)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if policy not in ("fifo", "shortest_first"):
            raise ValueError(f"policy must be 'fifo' or 'shortest_first', got {policy!r}")
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.policy = policy
        self._waiting: dict[GroupId, SequenceGroup] = {}  # insertion order = arrival order
        self._running: dict[GroupId, SequenceGroup] = {}
        self._cancel_running: set[GroupId] = set()
        self._pending_aborts: list[Aborted] = []  # cancelled while waiting; reported at the next schedule
        self._slots_in_use = 0
        self._cond = threading.Condition()

    # -- counters (read without the lock: each is one atomic read, good enough for gauges) --

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def slots_in_use(self) -> int:
        return self._slots_in_use

    @property
    def free_slots(self) -> int:
        return self.max_batch_size - self._slots_in_use

    @property
    def usage_ratio(self) -> float:
        return self._slots_in_use / self.max_batch_size

    def has_work(self) -> bool:
        return bool(self._waiting or self._running or self._pending_aborts)

    # -- the event loop side -----------------------------------------------------------------

    def submit(self, groups: Sequence[SequenceGroup]) -> None:
        """Queue a request's groups, all or none.

        Raises QueueFullError when they do not all fit in the queue now, ValidationError when
        they never could (more groups than ``max_queue``), ValueError for a group needing more
        slots than ``max_batch_size`` or an id already in use (the service checks both first).
        """
        if not groups:
            return
        if len(groups) > self.max_queue:
            raise ValidationError(
                "texts", f"the request has {len(groups)} texts/sentences, more than max_queue={self.max_queue}"
            )
        for g in groups:
            if not 1 <= g.slots <= self.max_batch_size:
                raise ValueError(f"group {g.group_id!r} needs {g.slots} slots; max_batch_size is "
                                 f"{self.max_batch_size}")
        with self._cond:
            if len(self._waiting) + len(groups) > self.max_queue:
                raise QueueFullError(len(groups), len(self._waiting), self.max_queue)
            ids = {g.group_id for g in groups}
            if len(ids) != len(groups) or any(i in self._waiting or i in self._running for i in ids):
                raise ValueError(f"duplicate group ids in {sorted(map(repr, ids))}")
            for g in groups:
                self._waiting[g.group_id] = g
            self._cond.notify_all()

    def cancel(self, group_id: GroupId) -> bool:
        """Cancel a group wherever it is; False when it is unknown or already finished/aborted."""
        with self._cond:
            found = self._cancel_locked(group_id)
            if found:
                self._cond.notify_all()
            return found

    def cancel_request(self, request_id: Hashable) -> int:
        """Cancel every group of a request; returns how many were still waiting or running."""
        with self._cond:
            ids = [g.group_id for g in (*self._waiting.values(), *self._running.values())
                   if g.request_id == request_id]
            n = sum(self._cancel_locked(i) for i in ids)
            if n:
                self._cond.notify_all()
            return n

    def _cancel_locked(self, group_id: GroupId) -> bool:
        group = self._waiting.pop(group_id, None)
        if group is not None:
            self._pending_aborts.append(Aborted(group_id, group.request_id, AbortReason.CANCELLED, False))
            return True
        if group_id in self._running and group_id not in self._cancel_running:
            self._cancel_running.add(group_id)
            return True
        return False

    # -- the engine side -------------------------------------------------------------------------

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until there is something to schedule (or ``timeout`` seconds pass); True if there is."""
        with self._cond:
            return self._cond.wait_for(self.has_work, timeout)

    def schedule(self, now: float) -> SchedulerOutput:
        """Drop cancelled and expired groups, then admit waiting groups into the free room."""
        with self._cond:
            out = SchedulerOutput(aborted=self._pending_aborts)
            self._pending_aborts = []
            self._abort_running(now, out)
            self._abort_expired_waiting(now, out)
            self._admit(now, out)
            out.num_waiting, out.num_running = len(self._waiting), len(self._running)
            out.slots_in_use = self._slots_in_use
            return out

    def update(self, finished: Iterable[GroupId]) -> None:
        """Free the slots of groups that finished this step (ids no longer running are ignored)."""
        with self._cond:
            for group_id in finished:
                group = self._running.pop(group_id, None)
                if group is not None:
                    self._slots_in_use -= group.slots
                    self._cancel_running.discard(group_id)

    def _abort_running(self, now: float, out: SchedulerOutput) -> None:
        for group_id, group in list(self._running.items()):
            if group_id in self._cancel_running:
                reason = AbortReason.CANCELLED
            elif group.deadline is not None and now >= group.deadline:
                reason = AbortReason.DEADLINE
            else:
                continue
            del self._running[group_id]
            self._cancel_running.discard(group_id)
            self._slots_in_use -= group.slots
            out.aborted.append(Aborted(group_id, group.request_id, reason, True))

    def _abort_expired_waiting(self, now: float, out: SchedulerOutput) -> None:
        expired = [g for g in self._waiting.values() if g.deadline is not None and now >= g.deadline]
        for group in expired:
            del self._waiting[group.group_id]
            out.aborted.append(Aborted(group.group_id, group.request_id, AbortReason.DEADLINE, False))

    def _admit(self, now: float, out: SchedulerOutput) -> None:
        free = self.max_batch_size - self._slots_in_use
        budget = self.max_batch_tokens
        waiting = iter(self._waiting.values())
        oldest = next(waiting, None)
        if oldest is None or not self._fits(oldest, free, budget, first=True):
            return  # no bypass of the oldest: its room is coming as running groups finish
        chosen = [oldest]
        free -= oldest.slots
        budget -= oldest.source_tokens
        rest = list(waiting)
        if self.policy == "shortest_first":
            rest.sort(key=lambda g: g.source_tokens)  # stable: ties stay in arrival order
        for group in rest:
            if free == 0:
                break
            if self._fits(group, free, budget, first=False):
                chosen.append(group)
                free -= group.slots
                budget -= group.source_tokens
            elif self.policy == "fifo":
                break  # strict arrival order
        for group in chosen:
            del self._waiting[group.group_id]
            group.admitted_time = now
            self._running[group.group_id] = group
            self._slots_in_use += group.slots
        out.admitted = chosen

    @staticmethod
    def _fits(group: SequenceGroup, free: int, budget: int, *, first: bool) -> bool:
        # The first admission of a step may exceed the token budget, so no group waits forever.
        return group.slots <= free and (first or group.source_tokens <= budget)


__all__ = ["AbortReason", "Aborted", "Policy", "Scheduler", "SchedulerOutput", "SequenceGroup"]
