"""The one mapping from exceptions to gRPC status codes."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from mtserve.server.errors import (
    DeadlineExceededError,
    DrainingError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    RequestCancelledError,
    UnavailableError,
    ValidationError,
    abort,
    status_for,
)

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (ValidationError("options.beam_size", "must be <= 8, got 9"), C.INVALID_ARGUMENT, "invalid_argument"),
        (ModelNotFoundError("xx", ["en-de", "de-en"]), C.INVALID_ARGUMENT, "model_not_found"),
        (QueueFullError(needed=3, waiting=1023, max_queue=1024), C.RESOURCE_EXHAUSTED, "queue_full"),
        (DrainingError(), C.UNAVAILABLE, "draining"),
        (NotReadyError(), C.UNAVAILABLE, "not_ready"),
        (UnavailableError("engine stopped"), C.UNAVAILABLE, "unavailable"),
        (DeadlineExceededError(), C.DEADLINE_EXCEEDED, "deadline"),
        (TimeoutError(), C.DEADLINE_EXCEEDED, "deadline"),
        (asyncio.TimeoutError(), C.DEADLINE_EXCEEDED, "deadline"),
        (RequestCancelledError(), C.CANCELLED, "cancelled"),
    ],
)
def test_mapping(exc, code, reason):
    status = status_for(exc)
    assert (status.code, status.reason) == (code, reason)
    assert status.details


def test_validation_message_names_field_and_limit():
    e = ValidationError("texts[3]", "has 12001 characters, the limit is 10000 (--max-text-chars)")
    assert (e.field, e.message) == ("texts[3]", "has 12001 characters, the limit is 10000 (--max-text-chars)")
    assert status_for(e).details == "texts[3]: has 12001 characters, the limit is 10000 (--max-text-chars)"


def test_unknown_model_lists_the_served_ones():
    details = status_for(ModelNotFoundError("fr-en", ["en-de", "de-en"])).details
    assert details == "model: unknown model 'fr-en'; this server serves 'de-en', 'en-de'"
    assert isinstance(ModelNotFoundError("x", []), ValidationError)


def test_queue_full_message_says_so():
    details = status_for(QueueFullError(needed=3, waiting=1023, max_queue=1024)).details
    assert "queue is full" in details and "max_queue=1024" in details and "retry" in details


def test_anything_else_is_internal_and_logged_with_traceback(caplog):
    def fail() -> None:
        raise KeyError("secret/internal/path")

    try:
        fail()
    except KeyError as e:
        with caplog.at_level(logging.ERROR, logger="mtserve.server.errors"):
            status = status_for(e)
    assert status.code == C.INTERNAL and status.reason == "internal"
    assert "KeyError" in status.details and "secret" not in status.details  # nothing internal leaks
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "in fail" in caplog.text  # the traceback


def test_abort_uses_the_mapping():
    class FakeContext:
        async def abort(self, code, details):
            self.aborted = (code, details)
            raise grpc.aio.AbortError()

    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(abort(context, QueueFullError(1, 4, 4)))
    assert context.aborted[0] == C.RESOURCE_EXHAUSTED and "max_queue=4" in context.aborted[1]
