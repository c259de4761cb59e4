"""The engine: one thread per model running ``schedule() → runner.step() → update() → emit``.

The event loop hands work in through :meth:`Engine.submit` (the scheduler's thread-safe queue) and
gets results back through a per-request *sink*, a callable the engine invokes from its own thread
with a list of :class:`TextEvent` (the service's sink re-posts them with ``loop.call_soon_threadsafe``).
torch releases the GIL in its kernels, so the loop thread stays responsive while a step runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from mtserve.model.search import Hypothesis, SearchOptions

from .metrics import Metrics
from .runner import Runner
from .scheduler import AbortReason, Scheduler, SequenceGroup

log = logging.getLogger(__name__)

GroupId = Hashable


@dataclass
class TextEvent:
    """One thing that happened to a sequence group: new tokens, its hypotheses, an abort or an error."""

    group_id: GroupId
    new_token_ids: list[int] | None = None
    hypotheses: list[Hypothesis] | None = None
    aborted: AbortReason | None = None
    error: BaseException | None = None


Sink = Callable[[list[TextEvent]], None]


@dataclass
class GroupWork:
    """What the runner needs of a group; carried in ``SequenceGroup.payload``."""

    source_ids: list[int]
    options: SearchOptions
    stream: bool = False


@dataclass
class _Timing:
    arrival: float
    first_token: float | None = None
    tokens: int = 0


class Engine:
    """Continuous batching for one model: a scheduler (pure Python) in front of a runner (torch)."""

    def __init__(
        self,
        name: str,
        runner: Runner,
        scheduler: Scheduler,
        metrics: Metrics | None = None,
        *,
        idle_wait_seconds: float = 0.05,
    ) -> None:
        self.name = name
        self.runner = runner
        self.scheduler = scheduler
        self.metrics = metrics
        self.idle_wait_seconds = idle_wait_seconds
        self._sinks: dict[Hashable, Sink] = {}
        self._request_of: dict[GroupId, Hashable] = {}
        self._timing: dict[GroupId, _Timing] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the event loop side ------------------------------------------------------------------------

    def submit(self, request_id: Hashable, groups: Sequence[SequenceGroup], sink: Sink) -> None:
        """Queue a request's groups (all or none: QueueFullError leaves nothing behind)."""
        with self._lock:
            self._sinks[request_id] = sink
            for group in groups:
                self._request_of[group.group_id] = request_id
        try:
            self.scheduler.submit(groups)
        except BaseException:
            self.release(request_id, groups)
            raise

    def cancel_request(self, request_id: Hashable) -> None:
        """The caller went away: its groups leave the queue or the batch at the next step."""
        self.scheduler.cancel_request(request_id)

    def release(self, request_id: Hashable, groups: Sequence[SequenceGroup]) -> None:
        """Forget a request's sink once the service has all it needs (or gave up)."""
        with self._lock:
            self._sinks.pop(request_id, None)
            for group in groups:
                self._request_of.pop(group.group_id, None)

    # -- the engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.runner.has_work() and not self.scheduler.wait_for_work(self.idle_wait_seconds):
                continue
            try:
                self._iterate()
            except Exception as exc:  # a failed step must fail its requests, not the server
                log.exception("engine %s: decoding step failed", self.name)
                self._fail_running(exc)

    def _iterate(self) -> None:
        now = time.monotonic()
        out = self.scheduler.schedule(now)
        events: list[TextEvent] = []
        for aborted in out.aborted:
            self._timing.pop(aborted.group_id, None)
            if aborted.was_running:
                self.runner.cancel(aborted.group_id)
            events.append(TextEvent(aborted.group_id, aborted=aborted.reason))
        for group in out.admitted:
            work: GroupWork = group.payload
            self.runner.add(group.group_id, work.source_ids, work.options, work.stream)
            self._timing[group.group_id] = _Timing(group.arrival_time)
            if self.metrics is not None:
                self.metrics.observe_text(
                    self.name, queue_wait=now - group.arrival_time, input_tokens=group.source_tokens
                )
        if self.runner.has_work():
            step_events = self.runner.step()
            rows = self.runner.last_step_rows
            if rows:  # count decoder steps that decoded something
                self.steps += 1
            finished = [e.group_id for e in step_events if e.finished]
            self.scheduler.update(finished)
            events += [
                TextEvent(e.group_id, new_token_ids=e.new_token_ids, hypotheses=e.hypotheses) for e in step_events
            ]
            self._observe_step(rows, finished)
        self._publish_state()
        self._deliver(events)

    def _observe_step(self, rows: int, finished: list[GroupId]) -> None:
        if rows == 0:  # the step only dropped cancelled rows: nothing was decoded, nothing to count
            return
        now = time.monotonic()
        for timing in self._timing.values():
            timing.tokens += 1
            if timing.first_token is None:
                timing.first_token = now
        metrics = self.metrics
        for group_id in finished:
            timing = self._timing.pop(group_id, None)
            if metrics is None or timing is None or timing.first_token is None:
                continue
            per_token = (now - timing.first_token) / (timing.tokens - 1) if timing.tokens > 1 else None
            metrics.observe_text(
                self.name, time_to_first_token=timing.first_token - timing.arrival, time_per_output_token=per_token
            )
        if metrics is not None:
            metrics.observe_step(self.name, batch_rows=rows, generated_tokens=rows)

    def _publish_state(self) -> None:
        if self.metrics is None:
            return
        self.metrics.set_scheduler_state(
            self.name,
            waiting=self.scheduler.num_waiting,
            running=self.scheduler.num_running,
            slots_in_use=self.scheduler.slots_in_use,
            max_slots=self.scheduler.max_batch_size,
        )
        memory = self.runner.device_memory_allocated()
        if memory is not None:
            self.metrics.set_gpu_memory(str(self.runner.device), memory)

    def _deliver(self, events: list[TextEvent]) -> None:
        by_request: dict[Hashable, list[TextEvent]] = defaultdict(list)
        with self._lock:
            for event in events:
                request_id = self._request_of.get(event.group_id)
                if request_id is not None:
                    by_request[request_id].append(event)
            sinks = {r: self._sinks.get(r) for r in by_request}
        for request_id, request_events in by_request.items():
            sink = sinks[request_id]
            if sink is not None:
                try:
                    sink(request_events)
                except Exception:  # a closed event loop during shutdown: nobody is listening any more
                    log.debug("engine %s: sink of %r failed", self.name, request_id, exc_info=True)

    def _fail_running(self, exc: BaseException) -> None:
        """Fail every group the runner holds, and start over with an empty batch."""
        group_ids = self.runner.reset()
        self.scheduler.update(group_ids)
        for group_id in group_ids:
            self._timing.pop(group_id, None)
        self._deliver([TextEvent(g, error=exc) for g in group_ids])
