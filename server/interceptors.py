"""A grpc.aio server interceptor that fills the standard ``grpc_server_*`` metrics.

Labels and values follow go-grpc-prometheus: ``grpc_service`` ("mtserve.v1.TranslationService"),
``grpc_method`` ("Translate"), ``grpc_type`` (unary, client_stream, server_stream, bidi_stream) and
``grpc_code`` (OK, InvalidArgument, ...). Every method the server has is covered, health and
reflection included: coroutine and async-generator handlers, and sync ones with a unary request
(a sync handler reading a request stream, which mtserve has none of, is passed through uncounted).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from .errors import cancelled_status
from .metrics import Metrics, code_label


def _split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with, as grpc.aio will send it."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # grpc.aio ends the handler: client gone, or deadline
        return cancelled_status(context)
    code = context.code()  # set by context.abort / set_code
    if code is not None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


class _CodeRecordingContext:
    """Wraps a sync handler's context, whose status code cannot be read back, to remember it."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        self._context.abort(code, details, trailing_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


# Handler attribute -> whether requests stream; and the factory that rebuilds such a handler.
_KINDS = {"unary_unary": False, "unary_stream": False, "stream_unary": True, "stream_stream": True}
_MAKE_HANDLER = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts started/handled calls and their latency into ``metrics``' grpc_server_* metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        service, method = _split_method(handler_call_details.method)
        labels = {"grpc_service": service, "grpc_method": method, "grpc_type": _rpc_type(handler)}
        m = self._m

        def started() -> float:
            m.grpc_started.labels(**labels).inc()
            return time.perf_counter()

        def handled(t0: float, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            m.grpc_handled.labels(**labels, grpc_code=code_label(_final_code(context, exc))).inc()
            m.grpc_handling_seconds.labels(**labels).observe(time.perf_counter() - t0)

        async def counted(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                m.grpc_msg_received.labels(**labels).inc()
                yield request

        def wrap_unary_response(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
            async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                t0 = started()
                if request_streaming:
                    request_or_iterator = counted(request_or_iterator)
                else:
                    m.grpc_msg_received.labels(**labels).inc()
                try:
                    response = await behavior(request_or_iterator, context)
                except BaseException as exc:
                    handled(t0, context, exc)
                    raise
                if response is not None:
                    m.grpc_msg_sent.labels(**labels).inc()
                handled(t0, context, None)
                return response

            return wrapper

        def wrap_stream_response(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
            async def wrapper(
                request_or_iterator: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                t0 = started()
                if request_streaming:
                    request_or_iterator = counted(request_or_iterator)
                else:
                    m.grpc_msg_received.labels(**labels).inc()
                try:
                    async for response in behavior(request_or_iterator, context):
                        m.grpc_msg_sent.labels(**labels).inc()
                        yield response
                except BaseException as exc:
                    handled(t0, context, exc)
                    raise
                handled(t0, context, None)

            return wrapper

        # Sync handlers (grpc runs them in a thread; e.g. the generated servicer base class's
        # UNIMPLEMENTED methods) with a unary request.
        def wrap_sync_unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: Any) -> Any:
                context = _CodeRecordingContext(context)
                t0 = started()
                m.grpc_msg_received.labels(**labels).inc()
                try:
                    response = behavior(request, context)
                except BaseException as exc:
                    handled(t0, context, exc)
                    raise
                if response is not None:
                    m.grpc_msg_sent.labels(**labels).inc()
                handled(t0, context, None)
                return response

            return wrapper

        def wrap_sync_stream_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(request: Any, context: Any) -> Iterator[Any]:
                context = _CodeRecordingContext(context)
                t0 = started()
                m.grpc_msg_received.labels(**labels).inc()
                try:
                    for response in behavior(request, context):
                        m.grpc_msg_sent.labels(**labels).inc()
                        yield response
                except BaseException as exc:
                    handled(t0, context, exc)
                    raise
                handled(t0, context, None)

            return wrapper

        def wrap(behavior: Callable[..., Any], request_streaming: bool) -> Callable[..., Any] | None:
            if inspect.isasyncgenfunction(behavior):
                return wrap_stream_response(behavior, request_streaming)
            if inspect.iscoroutinefunction(behavior):
                # Unary responses, or a streaming handler that writes with context.write().
                return wrap_unary_response(behavior, request_streaming)
            if request_streaming:
                return None  # a sync handler reading a request stream: rare, left uncounted
            if handler.response_streaming and inspect.isgeneratorfunction(behavior):
                return wrap_sync_stream_response(behavior)
            return wrap_sync_unary_response(behavior)

        return rebuild_handler(handler, wrap)


def rebuild_handler(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable[..., Any], bool], Callable[..., Any] | None],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped (``wrap(behavior, request_streaming)``; None: leave it) and
    optionally another request deserializer. What the server's interceptors share."""
    for kind, request_streaming in _KINDS.items():
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        wrapped = wrap(behavior, request_streaming)
        if wrapped is None and request_deserializer is None:
            return handler
        return _MAKE_HANDLER[kind](
            wrapped or behavior,
            request_deserializer=request_deserializer or handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


__all__ = ["MetricsInterceptor", "rebuild_handler"]
