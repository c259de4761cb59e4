"""Metrics: naming, `promtool check metrics`, the gRPC interceptor on real calls, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtserve.client import AsyncTranslationClient, TranslationError
from mtserve.proto.api import pb2, pb2_grpc
from mtserve.server.interceptors import MetricsInterceptor
from mtserve.server.metrics import Metrics, code_label, start_metrics_server

SERVICE = "mtserve.v1.TranslationService"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class Servicer(pb2_grpc.TranslationServiceServicer):
    async def Translate(self, request, context):
        if request.model == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model: unknown model 'invalid'")
        if request.model == "crash":
            raise RuntimeError("bug")
        if request.model == "slow":
            await asyncio.sleep(5)
        return pb2.TranslateResponse(model="m", results=[pb2.TranslationResult(text=t) for t in request.texts])

    async def TranslateStream(self, request, context):
        for i, text in enumerate(request.texts):
            yield pb2.TranslateStreamResponse(model="m", result=pb2.TranslationResult(index=i, text=text))
        if request.model == "full":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")

    # ListModels is left unimplemented: grpc answers UNIMPLEMENTED.


async def exercise(metrics: Metrics) -> None:
    """Real calls of every kind and outcome through a server with the interceptor."""
    server = grpc.aio.server(interceptors=[MetricsInterceptor(metrics)])
    pb2_grpc.add_TranslationServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncTranslationClient(f"127.0.0.1:{port}", retries=0) as client:
            await client.translate(["a"])
            await client.translate(["b", "c"])
            for model, timeout in (("invalid", None), ("crash", None), ("slow", 0.2)):
                with pytest.raises(TranslationError):
                    await client.translate(["x"], model=model, timeout=timeout)
            assert len([r async for r in client.translate_stream(["x", "y", "z"])]) == 3
            with pytest.raises(TranslationError):
                _ = [r async for r in client.translate_stream(["x", "y"], model="full")]
            with pytest.raises(TranslationError):
                await client.list_models()
        await asyncio.sleep(0.3)  # let the cancelled "slow" handler finish its bookkeeping
    finally:
        await server.stop(None)


def populated() -> Metrics:
    m = Metrics()
    m.add_model("en-de", {"source_language": "en", "target_language": "de", "device": "cpu", "dtype": "float32",
                          "parameters": "74000000"}, load_seconds=1.5)
    m.observe_request("en-de", None, 0.12)
    m.observe_request("en-de", grpc.StatusCode.INVALID_ARGUMENT, 0.001)
    m.reject("en-de", "queue_full")
    m.reject("", "model_not_found")
    m.observe_text("en-de", queue_wait=0.002, time_to_first_token=0.03, time_per_output_token=0.004,
                   input_tokens=12)
    m.observe_step("en-de", batch_rows=7, generated_tokens=7)
    m.set_engine_state("en-de", waiting=3, running=5, rows_in_use=20, max_rows=64)
    m.set_gpu_memory("cuda:0", 1.5e9)
    asyncio.run(exercise(m))
    return m


@pytest.fixture(scope="module")
def metrics() -> Metrics:
    return populated()


def test_promtool_check_metrics_is_clean(metrics):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus); CI=true makes this a failure")
    proc = subprocess.run([promtool, "check", "metrics"], input=metrics.exposition(), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout.decode() + proc.stderr.decode())


def test_names_help_units_and_labels(metrics):
    families = list(text_string_to_metric_families(metrics.exposition().decode()))
    names = {f.name for f in families}
    for expected in ("mtserve_request_duration_seconds", "mtserve_time_to_first_token_seconds",
                     "mtserve_time_per_output_token_seconds", "mtserve_queue_wait_seconds",
                     "mtserve_texts_running", "mtserve_texts_waiting", "mtserve_rows_in_use", "mtserve_engine_up",
                     "mtserve_input_tokens",
                     "mtserve_generated_tokens", "mtserve_decoder_batch_size", "mtserve_kv_cache_usage_ratio",
                     "mtserve_requests_rejected", "mtserve_model_info", "mtserve_model_load_seconds",
                     "mtserve_gpu_memory_allocated_bytes", "grpc_server_started", "grpc_server_handled",
                     "grpc_server_handling_seconds"):
        assert expected in names, expected
    allowed = {"model", "code", "reason", "device", "grpc_service", "grpc_method", "grpc_type", "grpc_code", "le"}
    for family in families:
        assert family.name.startswith(("mtserve_", "grpc_server_")), family.name
        assert family.documentation, family.name
        for s in family.samples:
            if family.type == "counter" and not s.name.endswith("_created"):
                assert s.name.endswith("_total"), s.name
            if family.name == "mtserve_model_info":
                continue  # an info metric's labels are its content
            assert set(s.labels) <= allowed, (s.name, s.labels)


def test_helpers_fill_the_right_series(metrics):
    m = metrics
    assert sample(m, "mtserve_request_duration_seconds_count", model="en-de", code="OK") == 1
    assert sample(m, "mtserve_request_duration_seconds_count", model="en-de", code="InvalidArgument") == 1
    assert sample(m, "mtserve_requests_rejected_total", model="en-de", reason="queue_full") == 1
    assert sample(m, "mtserve_input_tokens_total", model="en-de") == 12
    assert sample(m, "mtserve_generated_tokens_total", model="en-de") == 7
    assert sample(m, "mtserve_decoder_batch_size_bucket", model="en-de", le="8.0") == 1
    assert sample(m, "mtserve_decoder_batch_size_bucket", model="en-de", le="4.0") == 0
    assert sample(m, "mtserve_kv_cache_usage_ratio", model="en-de") == pytest.approx(20 / 64)
    assert sample(m, "mtserve_texts_waiting", model="en-de") == 3
    assert sample(m, "mtserve_texts_running", model="en-de") == 5
    assert sample(m, "mtserve_rows_in_use", model="en-de") == 20
    assert sample(m, "mtserve_engine_up", model="en-de") == 1
    assert sample(m, "mtserve_model_load_seconds", model="en-de") == 1.5
    assert sample(m, "mtserve_model_info", model="en-de", source_language="en", target_language="de",
                  device="cpu", dtype="float32", parameters="74000000") == 1
    assert sample(m, "mtserve_gpu_memory_allocated_bytes", device="cuda:0") == 1.5e9
    assert sample(m, "mtserve_queue_wait_seconds_count", model="en-de") == 1


def test_model_series_exist_at_zero_before_traffic():
    m = Metrics()
    m.add_model("fr-en", {"device": "cpu"}, load_seconds=0.5)
    assert sample(m, "mtserve_generated_tokens_total", model="fr-en") == 0
    assert sample(m, "mtserve_texts_running", model="fr-en") == 0
    assert sample(m, "mtserve_queue_wait_seconds_count", model="fr-en") == 0


def test_interceptor_counts_real_calls(metrics):
    m = metrics

    def handled(method: str, code: str, kind: str = "unary") -> float | None:
        return sample(m, "grpc_server_handled_total", grpc_service=SERVICE, grpc_method=method, grpc_type=kind,
                      grpc_code=code)

    unary = {"grpc_service": SERVICE, "grpc_method": "Translate", "grpc_type": "unary"}
    stream = {"grpc_service": SERVICE, "grpc_method": "TranslateStream", "grpc_type": "server_stream"}
    assert sample(m, "grpc_server_started_total", **unary) == 5
    assert handled("Translate", "OK") == 2
    assert handled("Translate", "InvalidArgument") == 1
    assert handled("Translate", "Unknown") == 1  # an unhandled exception in the handler
    assert handled("Translate", "DeadlineExceeded") == 1
    assert sample(m, "grpc_server_handling_seconds_count", **unary) == 5
    assert sample(m, "grpc_server_started_total", **stream) == 2
    assert handled("TranslateStream", "OK", "server_stream") == 1
    assert handled("TranslateStream", "ResourceExhausted", "server_stream") == 1
    assert sample(m, "grpc_server_msg_sent_total", **stream) == 5  # 3 + 2 results before the abort
    assert sample(m, "grpc_server_msg_received_total", **stream) == 2
    assert handled("ListModels", "Unimplemented") == 1


def test_code_labels_match_the_go_names():
    assert code_label(None) == "OK"
    assert code_label(grpc.StatusCode.RESOURCE_EXHAUSTED) == "ResourceExhausted"
    assert code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert {code_label(c) for c in grpc.StatusCode}.__len__() == len(grpc.StatusCode)


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()  # a shared registry would raise "Duplicated timeseries"
    a.reject("x", "queue_full")
    assert sample(a, "mtserve_requests_rejected_total", model="x", reason="queue_full") == 1
    assert sample(b, "mtserve_requests_rejected_total", model="x", reason="queue_full") is None


def test_http_endpoint():
    m = Metrics()
    m.reject("en-de", "draining")
    server = start_metrics_server(m.registry, port=0, host="127.0.0.1")
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200
            body = response.read().decode()
    finally:
        server.close()
    assert 'mtserve_requests_rejected_total{model="en-de",reason="draining"} 1.0' in body
