"""grpc.health.v1 with every method of the current health.proto: Check, Watch and List.

grpcio-health-checking's servicer leaves List unimplemented (each call then logs a traceback and
answers UNIMPLEMENTED); here it answers with every service's status, as the proto describes: the
overall status (""), the service's, and each model's.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2

from mtserve.proto.api import SERVICE_NAME


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name of one model: NOT_SERVING when its engine has died."""
    return f"{SERVICE_NAME}/{model}"


class HealthService(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}

    async def set(self, service: str, status: Any) -> None:
        if not self._gracefully_shutting_down:
            self._statuses[service] = status
        await super().set(service, status)

    async def forget(self, service: str) -> None:
        """A service that is gone (an unloaded model): its watchers see NOT_SERVING, List no longer names it,
        and Check answers NOT_FOUND, as for a service never known."""
        await super().set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._statuses.pop(service, None)
        self._server_status.pop(service, None)  # grpcio-health-checking's table: what Check reads

    async def enter_graceful_shutdown(self) -> None:
        self._statuses = dict.fromkeys(self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING)
        await super().enter_graceful_shutdown()

    async def List(self, request: Any, context: Any) -> Any:
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status) for service, status in self._statuses.items()
        })
