"""Server exceptions and the one place that maps exceptions to gRPC status codes.

Code below the service raises these plain exceptions; only the service turns
them into a status (``status_for`` / ``abort``), so the mapping is uniform:

=========================  ===================  ==========================
exception                  gRPC code            ``reason`` (rejection metric)
=========================  ===================  ==========================
ValidationError            INVALID_ARGUMENT     invalid_argument
ModelNotFoundError         INVALID_ARGUMENT     model_not_found
QueueFullError (engine)    RESOURCE_EXHAUSTED   queue_full
CallerLimitError           RESOURCE_EXHAUSTED   caller_limit
ModelExistsError (admin)   ALREADY_EXISTS       model_exists
DefaultModelError (admin)  FAILED_PRECONDITION  default_model
PermissionDeniedError      PERMISSION_DENIED    permission_denied
DrainingError              UNAVAILABLE          draining
NotReadyError              UNAVAILABLE          not_ready
EngineDeadError (engine)   UNAVAILABLE          engine_stopped
DeadlineExceededError      DEADLINE_EXCEEDED    deadline
DeadlineUnreachableError   DEADLINE_EXCEEDED    deadline
TimeoutError               DEADLINE_EXCEEDED    deadline
RequestCancelledError      CANCELLED            cancelled
anything else              INTERNAL             internal   (traceback logged)
=========================  ===================  ==========================

The engine core (mtserve.engine) raises plain exceptions that know nothing of gRPC; they are mapped here
too, so this table is the whole mapping.

An unknown model is INVALID_ARGUMENT, not NOT_FOUND: the name is part of the
request the caller wrote, the fix is on the caller's side, and the issue lists
it with the validation errors; the message lists the served models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import grpc

from mtserve.engine.errors import DeadlineUnreachableError, EngineDeadError, QueueFullError

log = logging.getLogger(__name__)


def excerpt(value: str, limit: int = 64) -> str:
    """`value` as an error message may quote it: at most `limit` characters (a request's own strings can be
    megabytes, and a message longer than the metadata limit would turn the status into another error)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


class MtserveError(Exception):
    """Base of the errors that map to a specific status code; ``str(e)`` is the client's message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "internal"


class ValidationError(MtserveError):
    """A request field is invalid; the message names the field and the limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ModelNotFoundError(ValidationError):
    """The request names a model this server does not serve."""

    reason = "model_not_found"

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        served = ", ".join(repr(n) for n in self.available) or "none"
        super().__init__("model", f"unknown model {excerpt(name)!r}; this server serves {served}")


class CallerLimitError(MtserveError):
    """One caller (a token, or an address) has as many texts in flight as it may; nothing of this call ran."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "caller_limit"

    def __init__(self, in_flight: int, needed: int, limit: int) -> None:
        super().__init__(
            f"this caller has {in_flight} texts in flight and this call needs {needed}, at most {limit} "
            f"(--max-texts-per-caller); wait for some to finish"
        )


class ModelExistsError(MtserveError):
    """LoadModel names a model the server already serves."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "model_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"name: the server already serves a model named {excerpt(name)!r}; unload it first "
                         "or choose another name")


class DefaultModelError(MtserveError):
    """UnloadModel names the default model."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "default_model"

    def __init__(self, name: str) -> None:
        super().__init__(f"name: {excerpt(name)!r} is the default model and cannot be unloaded; make another "
                         "model the default first (LoadModel with make_default)")


class PermissionDeniedError(MtserveError):
    """The caller's token may not make this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class UnavailableError(MtserveError):
    """The server cannot take the call now; another replica or a later retry can."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "unavailable"


class DrainingError(UnavailableError):
    reason = "draining"

    def __init__(self, message: str = "server is shutting down and accepts no new calls") -> None:
        super().__init__(message)


class NotReadyError(UnavailableError):
    reason = "not_ready"

    def __init__(self, message: str = "server is starting: models are still loading") -> None:
        super().__init__(message)


class DeadlineExceededError(MtserveError):
    """The call's deadline passed while it waited or decoded."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "deadline"

    def __init__(self, message: str = "deadline exceeded before the translation finished") -> None:
        super().__init__(message)


class RequestCancelledError(MtserveError):
    """The client cancelled the call (it will not see the status; it is for logs and metrics)."""

    code = grpc.StatusCode.CANCELLED
    reason = "cancelled"

    def __init__(self, message: str = "cancelled by the client") -> None:
        super().__init__(message)


# gRPC cancels a handler when its deadline passes on the transport's timer, which can fire a little before
# the context's time_remaining() reaches 0; a call this close to its deadline ended because of it.
_DEADLINE_SLACK_SECONDS = 0.05


def cancelled_status(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """What a handler cancelled by grpc.aio (asyncio.CancelledError) ended with: its deadline passed, or the
    client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_SLACK_SECONDS:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


@dataclass(frozen=True)
class Status:
    """What a failed call returns: the code, the client's message, and a metric ``reason``."""

    code: grpc.StatusCode
    details: str
    reason: str


def status_for(exc: BaseException, *, request_id: str | None = None) -> Status:
    """Map an exception to its gRPC status. Unexpected exceptions are logged with their traceback (and the
    call's request id, when given)."""
    if isinstance(exc, MtserveError):
        return Status(exc.code, str(exc), exc.reason)
    if isinstance(exc, QueueFullError):
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "queue_full")
    if isinstance(exc, EngineDeadError):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc), "engine_stopped")
    if isinstance(exc, DeadlineUnreachableError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc), "deadline")
    # Timeouts of awaited work; on Python 3.10 the asyncio and futures ones are not the builtin.
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | concurrent.futures.TimeoutError):
        return Status(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded", "deadline")
    # A bug: log the traceback here, where it is known, and give the client nothing internal.
    log.error("internal error%s: %s: %s", f" in request {request_id}" if request_id else "", type(exc).__name__,
              exc, exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log",
                  "internal")


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with the status for ``exc`` (raises, as ``context.abort`` does)."""
    status = status_for(exc)
    await context.abort(status.code, status.details)
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


__all__ = [
    "CallerLimitError",
    "DeadlineExceededError",
    "DefaultModelError",
    "DrainingError",
    "ModelExistsError",
    "ModelNotFoundError",
    "MtserveError",
    "NotReadyError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "Status",
    "UnavailableError",
    "ValidationError",
    "abort",
    "cancelled_status",
    "excerpt",
    "status_for",
]
