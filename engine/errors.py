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


class EngineDeadError(Exception):
    """The model's engine thread stopped after a fault it could not contain; the model serves nothing now."""

    def __init__(self, model: str, cause: BaseException | None = None) -> None:
        self.model = model
        self.cause = cause
        what = f" ({type(cause).__name__})" if cause is not None else ""
        super().__init__(f"the engine of model {model!r} has stopped{what}; this replica cannot serve it")


__all__ = ["EngineDeadError", "QueueFullError"]
