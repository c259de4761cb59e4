"""The HTTP server: one Starlette application (LibreTranslate's API, the JSON API, the page) served by
uvicorn in the event loop the gRPC server runs in: same process, same engines, same metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..auth import TokenFile
from ..config import ServerConfig
from ..service import TranslationService
from .calls import CallFailed, Gateway
from .languages import LanguagePairs, NotReadyError
from .libretranslate import LibreTranslateApi, call_failed
from .native import NativeApi
from .requests import HttpError, error_response

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "page"


def body_limit(config: ServerConfig) -> int:
    """The largest body worth reading: the most characters a request may carry, 6 bytes each (a JSON
    \\uXXXX escape), and room for the options."""
    return 6 * config.max_request_chars + 65_536


def build_app(service: TranslationService, config: ServerConfig, tokens: TokenFile | None) -> Starlette:
    gateway = Gateway(service, tokens)
    limit = body_limit(config)
    libretranslate = LibreTranslateApi(gateway, LanguagePairs(service.registry), limit, config.beam_size_limit)
    native = NativeApi(gateway, limit)

    async def page(request: Request) -> FileResponse:
        return FileResponse(PAGE / "index.html")

    async def metrics(request: Request) -> Response:
        # The page links here: the same registry as the metrics port, for a person trying the server.
        registry = service.metrics.registry if service.metrics is not None else None
        return Response(generate_latest(registry) if registry is not None else b"", media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HttpError)
        return error_response(exc.status, exc.message)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error_response(404, f"no such endpoint: {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}")

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error (logged by the server)")

    async def not_ready(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, str(exc))

    routes = [Route("/", page, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Mount("/static", StaticFiles(directory=PAGE), name="static"), *libretranslate.routes, *native.routes]
    return Starlette(routes=routes, exception_handlers={
        HttpError: http_error, CallFailed: call_failed, NotReadyError: not_ready, 404: not_found,
        405: method_not_allowed, Exception: internal,
    })


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        # SIGTERM and SIGINT are the gRPC server's: its drain stops both front doors.
        return contextlib.nullcontext()


class HttpServer:
    """uvicorn on a socket bound here (so that a busy port fails the start with its name, and port 0 works)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(1024)
        self.socket.setblocking(False)
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None
        self.socket.close()
