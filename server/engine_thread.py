"""One model's engine core, stepped in its own thread; each request's events go back to its listener.

The event loop hands requests in through :meth:`EngineThread.submit` (the scheduler's thread-safe
queue); every step's events are grouped by request and passed to ``request.listener`` from this thread
(the service's listener re-posts them with ``loop.call_soon_threadsafe``). torch releases the GIL in its
kernels, so the event loop stays responsive while a step runs.

If the loop itself dies (a fault the core could not contain), every text it holds fails with
EngineDeadError (UNAVAILABLE to callers, who retry elsewhere), later submissions fail the same way at
once, and ``on_death`` lets the server turn the model NOT_SERVING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable

from mtserve.engine.core import EngineCore, StepOutput
from mtserve.engine.errors import EngineDeadError
from mtserve.engine.events import FinishReason, TextEvent
from mtserve.engine.memory import TRIM_INTERVAL_SECONDS, release_free_memory
from mtserve.engine.scheduler import Abort, Request, Scheduler

from .metrics import Metrics

log = logging.getLogger(__name__)

_DONE = (FinishReason.FINISHED, FinishReason.MAX_LENGTH)


class EngineThread:
    def __init__(
        self,
        name: str,
        core: EngineCore,
        metrics: Metrics | None = None,
        *,
        on_death: Callable[[BaseException], None] | None = None,
        idle_wait_seconds: float = 0.05,
    ) -> None:
        self.name = name
        self.core = core
        self.metrics = metrics
        self.on_death = on_death
        self.idle_wait_seconds = idle_wait_seconds
        self.steps = 0  # decoder steps that decoded something
        self.error: BaseException | None = None  # set when the loop died
        self._submit_lock = threading.Lock()  # orders submissions against the death of the loop
        self._stop = threading.Event()
        self._closed = False  # unloaded: submissions are refused
        self._thread: threading.Thread | None = None

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """The model is unloaded: refuse new requests (EngineDeadError), stop the thread, and end whatever
        is left (nothing, after a drain) as FAILED."""
        with self._submit_lock:
            self._closed = True
        self.stop(timeout)
        self._fail(self.scheduler.abort_all(FinishReason.FAILED), RuntimeError("the model was unloaded"))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    # -- the event loop side ----------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request (all or none: QueueFullError leaves nothing behind); EngineDeadError when the
        loop has died."""
        with self._submit_lock:
            if self.error is not None:
                raise EngineDeadError(self.name, self.error)
            if self._closed:
                raise EngineDeadError(self.name, RuntimeError("the model was unloaded"))
            self.core.submit(request)

    def cancel(self, request_id: Hashable) -> None:
        """The caller went away: its texts leave the queue now, or the batch at the next step."""
        self.core.cancel(request_id)

    # -- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        trimmed = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() - trimmed > TRIM_INTERVAL_SECONDS:  # between steps: memory.py says why
                    release_free_memory()
                    trimmed = time.monotonic()
                if not self.core.has_work() and not self.scheduler.wait_for_work(self.idle_wait_seconds):
                    continue
                output = self.core.step()
                self._observe(output)
                self._deliver(output.events)
        except BaseException as exc:  # the core keeps faults to texts; this is one it could not
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        log.critical("model %s: the engine thread died (%s: %s); the model is NOT_SERVING", self.name,
                     type(exc).__name__, exc, exc_info=exc)
        with self._submit_lock:
            self.error = exc
            aborted = self.scheduler.abort_all(FinishReason.FAILED)
        self._fail(aborted, exc)
        self._publish_state()
        if self.on_death is not None:
            try:
                self.on_death(exc)
            except Exception:
                log.exception("model %s: reporting the engine's death failed", self.name)

    def _fail(self, aborted: list[Abort], cause: BaseException) -> None:
        """Tell the callers of the texts the engine will not finish that it has stopped, and why."""
        error = EngineDeadError(self.name, cause)
        self._deliver([TextEvent(a.text, finish_reason=a.reason, error=error) for a in aborted])

    def _observe(self, output: StepOutput) -> None:
        if output.rows:
            self.steps += 1
        metrics = self.metrics
        if metrics is None:
            return
        for text in output.admitted:
            assert text.admitted_time is not None
            metrics.observe_text(self.name, queue_wait=text.admitted_time - text.request.arrival_time,
                                 input_tokens=text.source_tokens)
        now = time.monotonic()
        for event in output.events:
            text = event.text
            if event.finish_reason not in _DONE or text.first_token_time is None:
                continue
            per_token = (now - text.first_token_time) / (text.tokens - 1) if text.tokens > 1 else None
            metrics.observe_text(self.name, time_to_first_token=text.first_token_time - text.request.arrival_time,
                                 time_per_output_token=per_token)
        if output.rows:
            metrics.observe_step(self.name, batch_rows=output.rows, generated_tokens=output.rows)
        self._publish_state()

    def _publish_state(self) -> None:
        if self.metrics is None:
            return
        scheduler = self.scheduler
        self.metrics.set_engine_state(self.name, waiting=scheduler.num_waiting, running=scheduler.num_running,
                                      rows_in_use=scheduler.rows_in_use, max_rows=scheduler.max_rows)
        device = self.core.batch.device
        if device.type == "cuda":
            import torch

            self.metrics.set_gpu_memory(str(device), float(torch.cuda.memory_allocated(device)))

    def _deliver(self, events: list[TextEvent]) -> None:
        by_request: dict[Request, list[TextEvent]] = defaultdict(list)
        for event in events:
            by_request[event.text.request].append(event)
        for request, request_events in by_request.items():
            if request.listener is None:
                continue
            try:
                request.listener(request_events)
            except Exception:  # a closed event loop during shutdown: nobody is listening any more
                log.debug("model %s: the listener of request %s failed", self.name, request.label, exc_info=True)


__all__ = ["EngineThread"]
