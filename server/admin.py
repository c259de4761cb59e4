"""The Admin service (``mtserve serve --admin``): load and unload models while the server runs.

LoadModel reads a model directory into a new engine off the event loop (the calls of the other models go
on meanwhile), warms it up, and serves it: its health service (``mtserve.v1.TranslationService/<name>``)
turns SERVING. UnloadModel takes the model out of the registry first, so calls that name it from then on
are told it is unknown, waits for the calls already accepted for it to end, then stops its engine; its
memory goes with the last reference. One admin operation runs at a time.

With bearer tokens configured, only the tokens ``--admin-tokens`` names may call it (PERMISSION_DENIED
otherwise; the interceptor has already refused calls without a valid token). Without tokens anyone who
reaches the port may: serve it only where the port is private.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from mtserve.proto.api import pb2, pb2_grpc

from .auth import current_caller
from .config import ModelSpec, ServerConfig
from .errors import PermissionDeniedError, ValidationError, abort
from .health import HealthService, model_health_name
from .registry import ModelRegistry
from .service import TranslationService

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# An unload waits at most this long for the model's calls to end; then the rest fail with UNAVAILABLE.
DRAIN_TIMEOUT_SECONDS = 60.0
_POLL_SECONDS = 0.02


class AdminService(pb2_grpc.AdminServicer):
    def __init__(self, registry: ModelRegistry, service: TranslationService, health: HealthService,
                 config: ServerConfig) -> None:
        self.registry = registry
        self.service = service
        self.health = health
        self.config = config
        self._lock = asyncio.Lock()

    def _authorize(self) -> None:
        if self.config.auth_token_file is None:
            return
        caller = current_caller.get()
        if caller not in self.config.admin_tokens:
            raise PermissionDeniedError(
                f"the token {caller!r} may not call the Admin service; --admin-tokens names the ones that may")

    async def LoadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authorize()
            if not _NAME.match(request.name):
                raise ValidationError("name", "1 to 64 letters, digits, '.', '_' or '-'")
            path = Path(request.path)
            if not request.path or not path.is_dir():
                raise ValidationError("path", f"{request.path!r} is not a directory on the server")
            async with self._lock:
                loop = asyncio.get_running_loop()
                spec = ModelSpec(request.name, str(path))
                try:
                    model = await loop.run_in_executor(
                        None, lambda: self.registry.add(spec, make_default=request.make_default))
                except (OSError, ValueError) as exc:  # what loading a bad directory raises
                    raise ValidationError("path", f"cannot load a model from {request.path!r}: {exc}") from None
                await self.health.set(model_health_name(model.name), health_pb2.HealthCheckResponse.SERVING)
            log.info("admin: loaded model %s from %s%s", model.name, path, " (now the default)"
                     if request.make_default else "")
            return pb2.LoadModelResponse(model=self.service.model_info(model))
        except Exception as exc:
            await abort(context, exc)

    async def UnloadModel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authorize()
            async with self._lock:
                model = self.registry.remove(request.name)
                await self.health.forget(model_health_name(model.name))
                drained = self.service.calls_by_model.get(model.name, 0)
                deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
                scheduler = model.engine.scheduler
                while (self.service.calls_by_model.get(model.name) or scheduler.num_running
                       or scheduler.num_waiting) and time.monotonic() < deadline:
                    await asyncio.sleep(_POLL_SECONDS)
                await asyncio.get_running_loop().run_in_executor(None, model.engine.close)
            log.info("admin: unloaded model %s (%d call(s) drained)", model.name, drained)
            return pb2.UnloadModelResponse(drained_calls=drained)
        except Exception as exc:
            await abort(context, exc)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authorize()
        except Exception as exc:
            await abort(context, exc)
        return await self.service.ListModels(request, context)

