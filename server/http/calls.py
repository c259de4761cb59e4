"""HTTP requests through the gRPC service's own code: the same validation, scheduling, metrics and errors.

The service's handlers take a request message and a call context. An HTTP request becomes the message
(protobuf at this edge too) and an `HttpCallContext`, the part of grpc.aio's context they use; their
abort becomes `CallFailed`, whose gRPC code `http_status` maps to an HTTP status, in one place.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from ..auth import TokenFile, current_caller
from ..service import TranslationService

#: gRPC status -> HTTP status, for every code the service answers with (LibreTranslate's own choices where
#: it has them: 400 for a bad request, 403 for a bad API key, 429 when it is busy).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 400,
    grpc.StatusCode.UNAUTHENTICATED: 403,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


class CallFailed(Exception):
    """The service aborted the call: its gRPC code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details

    @property
    def http_status(self) -> int:
        return http_status(self.code)


class HttpCallContext:
    """What TranslationService uses of a grpc.aio.ServicerContext, for one HTTP request."""

    def __init__(self, client: tuple[str, int] | None, headers: Mapping[str, str], timeout: float | None) -> None:
        host, port = client or ("unknown", 0)
        self._peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        request_id = headers.get("x-request-id")
        self._metadata: Sequence[tuple[str, str]] = (("x-request-id", request_id),) if request_id else ()
        self._deadline = time.monotonic() + timeout if timeout is not None else None
        self.trailing_metadata: Sequence[tuple[str, str]] = ()

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing_metadata = metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return False

    def code(self) -> grpc.StatusCode | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise CallFailed(code, details)

    @property
    def request_id(self) -> str:
        return dict(self.trailing_metadata).get("x-request-id", "")


class Gateway:
    """Translate and TranslateStream for HTTP callers, who authenticate with the gRPC callers' tokens."""

    def __init__(self, service: TranslationService, tokens: TokenFile | None) -> None:
        self.service = service
        self.tokens = tokens

    def authenticate(self, api_key: str | None) -> None:
        """The caller's token name becomes its identity (per-caller limits, metrics), as on gRPC."""
        if self.tokens is None:
            return
        name = self.tokens.caller(f"Bearer {api_key}" if api_key else None)
        if name is None:
            raise CallFailed(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key: send api_key")
        current_caller.set(name)

    # Endpoints authenticate first; uvicorn runs each request in a task of its own, so the caller set there
    # is the one these calls see.
    async def translate(self, request: Any, context: HttpCallContext) -> Any:
        return await self.service.Translate(request, context)  # type: ignore[arg-type]

    async def translate_stream(self, request: Any, context: HttpCallContext) -> AsyncIterator[Any]:
        async for message in self.service.TranslateStream(request, context):  # type: ignore[arg-type]
            yield message
