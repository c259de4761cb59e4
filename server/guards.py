"""Interceptors at the door: a call must carry a valid token (when tokens are configured), and its request
must be a message of the method's type. Both end a call with a status and one log line at most, so whatever
reaches the port is answered and counted in ``grpc_server_handled_total`` (MetricsInterceptor sits outside
them).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from .auth import TokenFile, current_caller
from .errors import excerpt
from .interceptors import rebuild_handler
from .metrics import Metrics

log = logging.getLogger(__name__)

#: Methods open without a token: probes must reach the health service.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


def _ending_with(code: grpc.StatusCode, details: str) -> Callable[[Callable[..., Any], bool], Callable[..., Any]]:
    """A behavior wrapper whose calls end at once with this status, in the handler's own shape."""

    def wrap(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):
            async def end_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await context.abort(code, details)
                yield  # pragma: no cover (abort raises)

            return end_stream

        async def end(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, details)

        return end

    return wrap


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for calls without a valid bearer token; the token's name for the rest."""

    def __init__(self, tokens: TokenFile, metrics: Metrics | None = None) -> None:
        self.tokens = tokens
        self.metrics = metrics

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        name = self.tokens.caller(metadata.get("authorization"))
        if self.metrics is not None:
            self.metrics.count_token_call(name)
        if name is None:
            details = "missing or invalid bearer token: send the metadata 'authorization: Bearer <token>'"
            return rebuild_handler(handler, _ending_with(grpc.StatusCode.UNAUTHENTICATED, details))

        def as_caller(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any] | None:
            if inspect.isasyncgenfunction(behavior):
                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    current_caller.set(name)  # the handler's task has its own context: no reset needed
                    async for response in behavior(request, context):
                        yield response

                return stream
            if inspect.iscoroutinefunction(behavior):
                async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    current_caller.set(name)
                    return await behavior(request, context)

                return unary
            return None

        return rebuild_handler(handler, as_caller)


@dataclass(frozen=True)
class MalformedRequest:
    """What a request that does not parse becomes, so that its handler can answer it."""

    type_name: str
    reason: str


class WellFormedInterceptor(grpc.aio.ServerInterceptor):
    """INVALID_ARGUMENT (and one warning line) for a request body that is not a message of the method's type:
    garbage, a lying length, invalid UTF-8 in a string field. grpc would answer UNKNOWN with a traceback."""

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer
        owner = getattr(parse, "__self__", None)
        type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "message")

        def parse_or_mark(raw: bytes) -> Any:
            try:
                return parse(raw)
            except Exception as exc:  # DecodeError, or anything a deserializer raises on bad bytes
                return MalformedRequest(type_name, f"{type(exc).__name__}: {excerpt(str(exc), 120)}")

        async def refuse(malformed: MalformedRequest, context: grpc.aio.ServicerContext) -> None:
            log.warning("malformed request to %s from %s: %s", method, context.peer(), malformed.reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request: not a valid {malformed.type_name} message ({malformed.reason})")

        def checked(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any] | None:
            if request_streaming:
                async def parsed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    async for request in requests:
                        if isinstance(request, MalformedRequest):
                            await refuse(request, context)
                        yield request

                if inspect.isasyncgenfunction(behavior):
                    async def stream_in_out(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                        async for response in behavior(parsed(requests, context), context):
                            yield response

                    return stream_in_out
                if inspect.iscoroutinefunction(behavior):
                    async def stream_in(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                        return await behavior(parsed(requests, context), context)

                    return stream_in
                return None
            if inspect.isasyncgenfunction(behavior):
                async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    if isinstance(request, MalformedRequest):
                        await refuse(request, context)
                    async for response in behavior(request, context):
                        yield response

                return stream_out
            if inspect.iscoroutinefunction(behavior):
                async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    if isinstance(request, MalformedRequest):
                        await refuse(request, context)
                    return await behavior(request, context)

                return unary
            return None

        return rebuild_handler(handler, checked, parse_or_mark)


__all__ = ["OPEN_METHOD_PREFIXES", "AuthInterceptor", "MalformedRequest", "WellFormedInterceptor"]
