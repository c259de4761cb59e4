"""Faults stay local, seen from clients: a failing text fails alone, a dead engine turns its model NOT_SERVING
and UNAVAILABLE at once, ports are the server's own, and a large request does not stall the event loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.engine.scheduler import Text
from mtserve.proto.api import SERVICE_NAME, pb2, pb2_grpc
from mtserve.server.app import PortInUseError
from mtserve.server.health import model_health_name


def _endless(max_length: int, text: str = "Tom reads the house.") -> Any:
    return pb2.TranslateRequest(texts=[text], model="endless", options=pb2.DecodingOptions(max_length=max_length))


@pytest.fixture()
def own_server(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    config = helpers.server_config(model_dirs, "endless", "tiny", max_batch_rows=8)
    with helpers.running_server(config) as running:
        yield running


def test_a_text_that_fails_in_a_step_fails_alone_with_its_request_id_logged(
    own_server: Any, helpers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    engine = own_server.engine("endless")
    culprit = "Mary eats the red apple."

    def inject(phase: str, texts: Sequence[Text]) -> None:
        if phase == "decode" and any(t.work.source_ids == engine_source for t in texts):
            raise RuntimeError("injected fault")

    engine_source = own_server.server.registry.models["endless"].translator.tokenizer.encode(culprit)
    with grpc.insecure_channel(own_server.address) as channel, helpers.StepGate(engine) as gate, caplog.at_level(
            logging.ERROR):
        stub = pb2_grpc.TranslationServiceStub(channel)
        mates = [stub.Translate.future(_endless(10 + i), timeout=60) for i in range(3)]
        helpers.wait_until(lambda: engine.scheduler.num_running + engine.scheduler.num_waiting == 3, "three queued")
        bad = stub.Translate.future(_endless(20, culprit), timeout=60, metadata=(("x-request-id", "culprit-42"),))
        helpers.wait_until(lambda: engine.scheduler.num_running + engine.scheduler.num_waiting == 4, "four queued")
        engine.core.inject = inject  # under the gate's own hook: the gate calls what was there before it
        gate._previous = inject
        gate.open()
        with pytest.raises(grpc.RpcError) as failed:
            bad.result()
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert ("x-request-id", "culprit-42") in tuple(failed.value.trailing_metadata())
        assert [m.result().results[0].output_tokens for m in mates] == [10, 11, 12]  # its batch-mates finished
    engine.core.inject = None
    assert any("culprit-42" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    helpers.wait_until(lambda: engine.scheduler.rows_in_use == 0 == engine.core.batch.rows_in_use, "rows back")


class _Fatal(BaseException):
    """Not an Exception: the core does not contain it, so the engine thread dies."""


def test_a_dead_engine_turns_its_model_not_serving_and_fails_calls_fast(own_server: Any, helpers: Any) -> None:
    engine = own_server.engine("endless")

    def die(phase: str, texts: Sequence[Text]) -> None:
        if phase == "decode":
            raise _Fatal("the engine thread is gone")

    with grpc.insecure_channel(own_server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        assert status(model_health_name("endless")) == health_pb2.HealthCheckResponse.SERVING
        engine.core.inject = die
        with pytest.raises(grpc.RpcError) as in_flight:
            stub.Translate(_endless(50), timeout=60)
        assert in_flight.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "has stopped" in in_flight.value.details()
        helpers.wait_until(lambda: status("") == health_pb2.HealthCheckResponse.NOT_SERVING, "overall NOT_SERVING")
        for service in (SERVICE_NAME, model_health_name("endless")):
            assert status(service) == health_pb2.HealthCheckResponse.NOT_SERVING, service
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as later:
            stub.Translate(_endless(5), timeout=60)
        assert later.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 2.0
        # The other model's engine is alive and serves (callers of it are not failed by the dead one).
        other = stub.Translate(pb2.TranslateRequest(texts=["Tom reads."], model="tiny"), timeout=60)
        assert other.results[0].text is not None
    registry = own_server.server.metrics.registry
    assert registry.get_sample_value("mtserve_engine_up", {"model": "endless"}) == 0
    assert registry.get_sample_value("mtserve_engine_up", {"model": "tiny"}) == 1


def test_a_port_in_use_fails_the_start_naming_the_port(own_server: Any, model_dirs: dict[str, Path],
                                                      helpers: Any) -> None:
    taken = own_server.server.port
    second = helpers.server_config(model_dirs, "tiny", port=taken)
    with pytest.raises(PortInUseError, match=f"gRPC port {taken} of 127.0.0.1.*--port"):
        helpers.ServerThread(second)
    metrics_taken = own_server.server.metrics_port
    third = helpers.server_config(model_dirs, "tiny", metrics_port=metrics_taken)
    with pytest.raises(PortInUseError, match=f"metrics port {metrics_taken} of 127.0.0.1.*--metrics-port"):
        helpers.ServerThread(third)
    # The first server still has its port to itself.
    with grpc.insecure_channel(own_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(8):  # on separate connections, so a shared port would have split them
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1


def test_mtserve_serve_on_a_port_in_use_exits_with_the_port_named(own_server: Any, tmp_path: Path,
                                                                 helpers: Any, model_dirs: dict[str, Path]) -> None:
    process = helpers.ServeProcess(["--model", f"tiny={model_dirs['tiny']}", "--host", "127.0.0.1", "--port",
                                    str(own_server.server.port), "--metrics-port", "0"], tmp_path / "serve.log")
    try:
        assert process.process.wait(60) == 1
    finally:
        process.stop()
    log = process.log()
    assert f"cannot listen on the gRPC port {own_server.server.port} of 127.0.0.1" in log
    assert "draining" not in log and "stopped" not in log, log


def test_health_answers_while_a_large_request_is_prepared(model_dirs: dict[str, Path], helpers: Any) -> None:
    """Tokenizing and splitting 4 million characters runs off the event loop."""
    config = helpers.server_config(model_dirs, "tiny", max_texts_per_request=400, max_text_chars=10_000,
                                   max_request_chars=4_000_000, max_message_bytes=8 * 2**20, max_queue=1_000_000)
    sentence = "Tom reads the small red book and Mary eats the apple today again. "
    texts = [(sentence * 200)[:10_000] for _ in range(399)] + ["x" * 10_000]  # the last one cannot be split
    latencies: list[float] = []
    with helpers.running_server(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                started = time.monotonic()
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                latencies.append(time.monotonic() - started)
                time.sleep(0.01)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Translate(pb2.TranslateRequest(texts=texts), timeout=120)
        took = time.monotonic() - started
        done.set()
        prober.join(10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("texts[399]: a sentence is")
    assert took > 0.5, f"preparing took {took:.2f} s: too little for the test to show anything"
    # Were the preparation on the event loop, one probe would wait about as long as the whole preparation
    # (`took`, seconds). A probe sharing the GIL with the tokenizer on 2 busy cores sees ~0.25 s at worst.
    limit = min(1.0, took / 2)
    assert len(latencies) > 5 and max(latencies) < limit, (took, limit, sorted(latencies)[-5:])


def test_a_request_that_splits_into_more_sentences_than_the_queue_holds_is_invalid(
    model_dirs: dict[str, Path], helpers: Any
) -> None:
    config = helpers.server_config(model_dirs, "short", max_queue=16, max_text_chars=5000)
    text = "Tom reads the small red book today. " * 40  # 40 sentences for a 32-position model
    with helpers.running_server(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Translate(pb2.TranslateRequest(texts=[text]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("texts: the request splits into 40 sentences")
    assert "max_queue=16" in refused.value.details()
