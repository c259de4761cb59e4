"""The assembled server: grpc.health.v1 through start-up, serving and draining, and server reflection."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import SERVICE_NAME, pb2, pb2_grpc
from mtserve.server.app import MtserveServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_health_serving_after_start(server: Any, channel: grpc.Channel) -> None:
    assert _check(channel) == SERVING
    assert _check(channel, SERVICE_NAME) == SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        _check(channel, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with TranslationClient(server.address) as client:
        assert client.health() == "SERVING"
        assert client.health(SERVICE_NAME) == "SERVING"


def test_reflection_lists_and_describes_the_service(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    # The descriptors come over the wire too, enough for grpcurl-style clients to build requests.
    service = descriptor_pool.DescriptorPool(database).FindServiceByName(SERVICE_NAME)
    assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "ListModels"}
    assert service.methods_by_name["TranslateStream"].output_type.full_name == "mtserve.v1.TranslateStreamResponse"


def test_not_serving_until_models_are_loaded(model_dirs: dict[str, Path], helpers: Any) -> None:
    release = threading.Event()

    def hold_loading(server: MtserveServer) -> None:
        load = server.registry.load

        def held() -> None:
            release.wait(helpers.WAIT_SECONDS)
            load()

        server.registry.load = held  # type: ignore[method-assign]

    running = helpers.ServerThread(helpers.server_config(model_dirs, "tiny"), prepare=hold_loading, wait=False)
    try:
        helpers.wait_until(lambda: running.server.port != 0, "the gRPC port to open")
        with grpc.insecure_channel(running.address) as channel:
            statuses: list[int] = []

            def reachable() -> bool:
                try:
                    statuses.append(_check(channel))
                except grpc.RpcError:
                    return False
                return True

            helpers.wait_until(reachable, "the health service to answer while models load")
            assert statuses[-1] == NOT_SERVING
            assert _check(channel, SERVICE_NAME) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as early:
                pb2_grpc.TranslationServiceStub(channel).Translate(pb2.TranslateRequest(texts=["a."]), timeout=10)
            assert early.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "models are still loading" in early.value.details()

            release.set()
            running.started.result(120)
            assert _check(channel) == SERVING
            assert _check(channel, SERVICE_NAME) == SERVING
    finally:
        release.set()
        running.stop()


def test_draining_is_not_serving_and_refuses_new_calls(model_dirs: dict[str, Path], helpers: Any) -> None:
    running = helpers.ServerThread(helpers.server_config(model_dirs, "endless"))
    engine = running.engine("endless")
    try:
        with grpc.insecure_channel(running.address) as channel, helpers.StepGate(engine) as gate:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=helpers.WAIT_SECONDS
            )
            assert next(watch).status == SERVING
            stub = pb2_grpc.TranslationServiceStub(channel)
            in_flight = stub.Translate.future(
                pb2.TranslateRequest(texts=["Tom reads."], options=pb2.DecodingOptions(max_length=40)), timeout=120
            )
            gate.wait_entered()

            stopping = running.submit(running.server.stop(helpers.WAIT_SECONDS))
            running.stopped = True
            assert next(watch).status == NOT_SERVING  # health turns first, while the call is still in flight
            watch.cancel()
            with pytest.raises(grpc.RpcError) as refused:
                stub.Translate(pb2.TranslateRequest(texts=["a."]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not in_flight.done()

            gate.open()
            assert in_flight.result().results[0].output_tokens == 40  # finished in full within the grace
            stopping.result(helpers.WAIT_SECONDS)
    finally:
        running.stop()


def test_client_sees_unavailable_after_stop(model_dirs: dict[str, Path], helpers: Any) -> None:
    running = helpers.ServerThread(helpers.server_config(model_dirs, "tiny"))
    address = running.address
    running.stop(grace=0)
    with TranslationClient(address, timeout=5, retries=1) as client, pytest.raises(TranslationError) as failed:
        client.translate(["a."])
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
