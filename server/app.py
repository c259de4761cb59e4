"""Assembling and running the server: gRPC (service, health, reflection), /metrics, models, shutdown.

Start-up order: the port opens at once with health NOT_SERVING (so an orchestrator sees a live but
unready process), models load and warm up, then health turns SERVING. On SIGTERM/SIGINT health goes
NOT_SERVING, new calls get UNAVAILABLE, calls in flight get ``grace_seconds`` to finish, exit code 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mtserve.proto.api import SERVICE_NAME, pb2_grpc

from .config import ServerConfig, configure_logging, render_config
from .interceptors import MetricsInterceptor
from .metrics import Metrics, MetricsServer, start_metrics_server
from .registry import ModelRegistry
from .service import TranslationService

log = logging.getLogger(__name__)


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name of one model: NOT_SERVING when its engine has died."""
    return f"{SERVICE_NAME}/{model}"

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MtserveServer:
    """One server instance; tests run several in a process (each with its own metrics registry)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = ModelRegistry(config, self.metrics, on_engine_death=self._engine_died)
        self.health = health.aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.grpc = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics)], options=config.grpc_server_options()
        )
        self.service = TranslationService(self.registry, config, self.metrics)
        pb2_grpc.add_TranslationServiceServicer_to_server(self.service, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.grpc,
        )
        self.port = 0
        self.metrics_server: MetricsServer | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    async def _set_health(self, status: int) -> None:
        """The overall status ('' and the service's name), and every loaded model's (model_health_name)."""
        for service in ("", SERVICE_NAME, *(model_health_name(name) for name in self.registry.models)):
            await self.health.set(service, status)

    def _engine_died(self, name: str) -> None:
        """From the dying engine's thread: the model, and so the replica, is NOT_SERVING (an orchestrator
        restarts it; callers go to other replicas)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._set_health(_NOT_SERVING)))

    async def start(self) -> None:
        """Open the ports, load and warm up the models, then report SERVING."""
        config = self.config
        self._loop = asyncio.get_running_loop()
        await self._set_health(_NOT_SERVING)
        self.port = self.grpc.add_insecure_port(f"{config.host}:{config.port}")
        if not self.port:
            raise OSError(f"could not bind {config.host}:{config.port}")
        await self.grpc.start()
        if config.metrics_port is not None:
            self.metrics_server = start_metrics_server(self.metrics.registry, config.metrics_port, config.host)
        log.info("gRPC on %s:%d, metrics on %s; loading models", config.host, self.port, self.metrics_port)
        await asyncio.get_running_loop().run_in_executor(None, self.registry.load)
        await self._set_health(_SERVING)
        log.info("serving models: %s (default %s)", ", ".join(self.registry.models), self.registry.default_name)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let calls in flight finish within `grace` seconds.

        The port stays open while calls in flight finish, so that new calls get a clear UNAVAILABLE
        (which clients retry elsewhere) instead of racing the transport's shutdown, which cancels them.
        """
        grace = self.config.grace_seconds if grace is None else grace
        log.info("draining: waiting up to %.1fs for calls in flight", grace)
        self.registry.draining = True
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.service.accepted_calls and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.grpc.stop(max(0.0, deadline - loop.time()))
        self.registry.stop()
        self.service.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        log.info("stopped")


async def serve_async(config: ServerConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = MtserveServer(config)
    try:
        await server.start()
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        await server.stop(0)
        return 1
    await stop.wait()
    await server.stop()
    return 0


def serve(config: ServerConfig) -> int:
    """`mtserve serve`: run until SIGTERM/SIGINT; the exit code."""
    configure_logging(config.log_level)
    log.info("effective configuration:\n%s", render_config(config))
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    return asyncio.run(serve_async(config))
