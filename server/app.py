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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.proto.api import ADMIN_SERVICE_NAME, SERVICE_NAME, pb2_grpc

from .admin import AdminService
from .auth import TokenFile, TokenFileError
from .config import ServerConfig, configure_logging, render_config
from .guards import AuthInterceptor, WellFormedInterceptor
from .health import HealthService, model_health_name
from .http.app import HttpServer, build_app
from .interceptors import MetricsInterceptor
from .metrics import Metrics, MetricsServer, start_metrics_server
from .reflection import enable_reflection
from .registry import ModelRegistry
from .service import TranslationService
from .tls import ServerCertificates, TLSConfigError

log = logging.getLogger(__name__)


_PORT_FLAGS = {"gRPC": "port", "metrics": "metrics-port", "HTTP": "http-port"}


class PortInUseError(OSError):
    """A port this server needs cannot be bound (another process holds it, or the address is wrong)."""

    def __init__(self, which: str, host: str, port: int, cause: OSError | None = None) -> None:
        why = f": {cause.strerror}" if cause is not None and cause.strerror else ""
        super().__init__(
            f"cannot listen on the {which} port {port} of {host}{why}; is another mtserve (or another program) "
            f"using it? Choose another with --{_PORT_FLAGS[which]}"
        )


#: How long a drain waits for a moment without new calls before it closes the port (see MtserveServer.stop):
#: as long as a client's backoff after UNAVAILABLE usually is.
DRAIN_QUIET_SECONDS = 1.0
# Time kept back from the grace period for closing the port, and the wait for clients to read its GOAWAY.
_CLOSING_SECONDS = 1.0
_GOAWAY_SECONDS = 0.05

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MtserveServer:
    """One server instance; tests run several in a process (each with its own metrics registry)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = ModelRegistry(config, self.metrics, on_engine_death=self._engine_died)
        self.health = HealthService()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Read now, so that a missing or mismatched file fails the start with its name.
        self.certificates = (ServerCertificates(config.tls_cert, config.tls_key, config.tls_client_ca)
                             if config.tls_cert is not None and config.tls_key is not None else None)
        self.tokens = TokenFile(config.auth_token_file) if config.auth_token_file is not None else None
        # Outermost first: every call is counted, whatever the guards inside answer.
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(self.metrics)]
        if self.tokens is not None:
            interceptors.append(AuthInterceptor(self.tokens, self.metrics))
        interceptors.append(WellFormedInterceptor())
        self.grpc = grpc.aio.server(interceptors=interceptors, options=config.grpc_server_options())
        self.service = TranslationService(self.registry, config, self.metrics)
        pb2_grpc.add_TranslationServiceServicer_to_server(self.service, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        services = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        if config.admin:
            pb2_grpc.add_AdminServicer_to_server(AdminService(self.registry, self.service, self.health, config),
                                                 self.grpc)
            services.append(ADMIN_SERVICE_NAME)
        if not config.no_reflection:
            enable_reflection(services, self.grpc)
        self.port = 0
        self.metrics_server: MetricsServer | None = None
        self.http: HttpServer | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

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
        address = f"{config.host}:{config.port}"
        try:
            if self.certificates is not None:
                self.port = self.grpc.add_secure_port(address, self.certificates.credentials())
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise PortInUseError("gRPC", config.host, config.port)
        await self.grpc.start()
        if config.metrics_port is not None:
            try:
                self.metrics_server = start_metrics_server(self.metrics.registry, config.metrics_port,
                                                           config.metrics_host)
            except OSError as exc:
                raise PortInUseError("metrics", config.metrics_host, config.metrics_port, exc) from None
        if config.http_port is not None:
            try:
                self.http = HttpServer(build_app(self.service, config, self.tokens), config.host, config.http_port)
            except OSError as exc:
                raise PortInUseError("HTTP", config.host, config.http_port, exc) from None
            await self.http.start()
        log.info("gRPC on %s:%d (%s%s), HTTP on %s, metrics on %s; loading models", config.host, self.port,
                 "mutual TLS" if self.certificates is not None and self.certificates.mutual
                 else "TLS" if self.certificates is not None else "plaintext",
                 f", {len(self.tokens.names)} token(s)" if self.tokens is not None else "",
                 f"http://{config.host}:{self.http_port}/" if self.http_port is not None else "off",
                 f"http://{config.metrics_host}:{self.metrics_port}/metrics" if self.metrics_port else "off")
        await asyncio.get_running_loop().run_in_executor(None, self.registry.load)
        await self._set_health(_SERVING)
        names = list(self.registry.models)
        if len(names) == 1:
            log.info("serving model %r; health SERVING", names[0])
        else:
            log.info("serving models %s (requests that name none get %r); health SERVING", ", ".join(names),
                     self.registry.default_name)

    def reload(self) -> None:
        """SIGHUP: re-read the TLS certificates and the tokens; connections and calls carry on."""
        if self.certificates is not None:
            self.certificates.reload()
        if self.tokens is not None:
            self.tokens.reload()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, let calls in flight finish within `grace` seconds.

        The port stays open while calls in flight finish, so that new calls get a clear UNAVAILABLE
        (which clients retry elsewhere) instead of racing the transport's shutdown, which cancels them.
        Only calls an engine accepted are waited for; calls being refused do not hold the drain up.
        """
        grace = self.config.grace_seconds if grace is None else grace
        log.info("draining: waiting up to %.1fs for %d call(s) in flight", grace, self.service.accepted_calls)
        self.registry.draining = True
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.service.accepted_calls and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.service.accepted_calls:
            log.warning("draining: %d call(s) still in flight after %.1fs are cancelled", self.service.accepted_calls,
                        grace)
        # Then the port closes. grpc core cancels (CANCELLED, which clients do not retry) every call it has
        # received but not yet handed to a handler when a server stops, and every call arriving until the
        # client has read the GOAWAY (grpc/grpc#41785). So from here refusals are held, not answered, until
        # no call has come for DRAIN_QUIET_SECONDS (a client waiting for its answer sends nothing else, and
        # one backing off has come back by then); then the port closes, and the held calls get UNAVAILABLE.
        self.service.hold_refusals()
        while (loop.time() - self.service.last_call_time < DRAIN_QUIET_SECONDS
               and loop.time() < deadline - _CLOSING_SECONDS):
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(self.grpc.stop(max(0.0, deadline - loop.time())))
        await asyncio.sleep(_GOAWAY_SECONDS)  # the port closes and clients read the GOAWAY before the answers
        self.service.release_refusals()
        await stopping
        await self.close()
        log.info("stopped")

    async def close(self) -> None:
        """Release everything (also after a failed start, when there is nothing to drain)."""
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.grpc.stop(0)
        self.registry.stop()
        self.service.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None


async def serve_async(config: ServerConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = MtserveServer(config)
    except (TLSConfigError, TokenFileError) as exc:
        log.error("start-up failed: %s", exc)
        return 1
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
    except Exception as exc:
        log.error("start-up failed: %s", exc)
        await server.close()
        return 1
    await stop.wait()
    await server.stop()
    return 0


def serve(config: ServerConfig) -> int:
    """`mtserve serve`: run until SIGTERM/SIGINT; the exit code."""
    configure_logging(config.log_level, config.log_format)
    import torch

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    resolved = {"threads": f"{torch.get_num_threads()}" + ("" if config.threads is not None else
                                                            " (torch's default: one per core)")}
    log.info("effective configuration:\n%s", render_config(config, resolved))
    return asyncio.run(serve_async(config))
