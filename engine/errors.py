"""What the engine core raises to its callers. No gRPC here: server/errors.py maps these to status codes."""

from __future__ import annotations


class QueueFullError(Exception):
    """The waiting queue has no room for the request; nothing of it was queued. Retry later."""

    def __init__(self, needed: int, waiting: int, max_queue: int) -> None:
        self.needed, self.waiting, self.max_queue = needed, waiting, max_queue
        super().__init__(
            f"waiting queue is full: {waiting} of max_queue={max_queue} entries in use, "
            f"this request needs {needed}; retry later"
        )


class DeadlineUnreachableError(Exception):
    """The request cannot finish before its deadline even if it started now (its expected decoding time is
    longer than the time left); nothing of it was queued, so it holds no queue room it cannot use."""

    def __init__(self, seconds_left: float, expected_seconds: float) -> None:
        self.seconds_left, self.expected_seconds = seconds_left, expected_seconds
        super().__init__(
            f"deadline too close: {max(seconds_left, 0.0) * 1000:.0f} ms left, decoding is expected to take "
            f"{expected_seconds * 1000:.0f} ms at the current step time; allow a longer deadline"
        )


class EngineDeadError(Exception):
    """The model's engine thread stopped after a fault it could not contain; the model serves nothing now."""

    def __init__(self, model: str, cause: BaseException | None = None) -> None:
        self.model = model
        self.cause = cause
        what = f" ({type(cause).__name__})" if cause is not None else ""
        super().__init__(f"the engine of model {model!r} has stopped{what}; this replica cannot serve it")


__all__ = ["DeadlineUnreachableError", "EngineDeadError", "QueueFullError"]
