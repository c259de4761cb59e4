"""/metrics over HTTP from a live server: valid for promtool, and every metric moves by exactly what the
traffic implies (a fresh server, so its counters start at zero)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from mtserve.proto.api import SERVICE_NAME, pb2, pb2_grpc

MAX_LENGTH = 24
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metrics_server(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny")) as running:
        yield running


def scrape(server: Any) -> str:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode("utf-8")


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series that does not exist yet (a labelled counter before its first use)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (Debian package prometheus); CI must run this check")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr


def _method(method: str, grpc_type: str = "unary", service: str = SERVICE_NAME) -> dict[str, str]:
    return {"grpc_service": service, "grpc_method": method, "grpc_type": grpc_type}


def test_metrics_before_traffic(metrics_server: Any) -> None:
    text = scrape(metrics_server)
    promtool_check(text)
    samples = parse(text)
    # Per-model series exist at zero before any traffic, so dashboards show them.
    for name in ("mtserve_texts_running", "mtserve_texts_waiting", "mtserve_kv_cache_usage_ratio",
                 "mtserve_input_tokens_total", "mtserve_generated_tokens_total", "mtserve_queue_wait_seconds_count"):
        assert (name, frozenset({("model", "tiny")})) in samples, name
        assert value(samples, name, model="tiny") == 0
    info = [key for key in samples if key[0] == "mtserve_model_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert labels["model"] == "tiny"
    assert (labels["source_language"], labels["target_language"], labels["device"]) == ("en", "de", "cpu")
    assert value(samples, "mtserve_model_load_seconds", model="tiny") > 0


def test_metrics_follow_traffic(metrics_server: Any, helpers: Any) -> None:
    before = parse(scrape(metrics_server))
    engine = metrics_server.engine("tiny")
    steps_before = engine.steps
    texts = helpers.sample_sentences(6, seed=21)  # the per-text timings below count the engine's texts
    # A text that decodes to max_length (offline), so it is still in the batch when its deadline is seen.
    late_text = "Tom reads the house."
    translator = metrics_server.server.registry.models["tiny"].translator
    assert len(translator.translate([late_text], max_length=MAX_LENGTH)[0].token_ids) == MAX_LENGTH - 1
    late_tokens = len(translator.tokenizer.encode(late_text))
    results: list[Any] = []
    with grpc.insecure_channel(metrics_server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        options = pb2.DecodingOptions(max_length=MAX_LENGTH)
        for i in range(3):
            response = stub.Translate(pb2.TranslateRequest(texts=texts[2 * i : 2 * i + 2], options=options))
            results += response.results
        messages = list(stub.TranslateStream(pb2.TranslateRequest(texts=["Tom eats an apple."], options=options)))
        results += [m.result for m in messages]
        for bad in (
            pb2.TranslateRequest(texts=["x"], options=pb2.DecodingOptions(beam_size=0)),
            pb2.TranslateRequest(texts=["x"], model="nope"),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                stub.Translate(bad)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub.ListModels(pb2.ListModelsRequest())
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        # A deadline that passes in the batch: the engine is held until the server has seen it, so the
        # text gets exactly one decoder step (the held one) and is dropped at the next.
        with helpers.StepGate(engine) as gate:
            with pytest.raises(grpc.RpcError) as failed:
                stub.Translate(pb2.TranslateRequest(texts=[late_text], options=options), timeout=0.3)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            helpers.wait_until(
                lambda: metrics_server.server.metrics.registry.get_sample_value(
                    "mtserve_request_duration_seconds_count", {"model": "tiny", "code": "DeadlineExceeded"}
                ),
                "the server to see the deadline",
            )
            gate.open()
        helpers.wait_until(lambda: engine.scheduler.num_running == 0 and engine.scheduler.rows_in_use == 0, "idle")

    text = scrape(metrics_server)
    promtool_check(text)
    after = parse(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # The standard gRPC metrics, with go-grpc-prometheus' label values.
    assert delta("grpc_server_started_total", **_method("Translate")) == 6
    assert delta("grpc_server_handled_total", **_method("Translate"), grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **_method("Translate"), grpc_code="InvalidArgument") == 2
    assert delta("grpc_server_handled_total", **_method("Translate"), grpc_code="DeadlineExceeded") == 1
    assert delta("grpc_server_handling_seconds_count", **_method("Translate")) == 6
    stream = _method("TranslateStream", "server_stream")
    assert delta("grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert delta("grpc_server_msg_sent_total", **stream) == len(messages) == 1
    assert delta("grpc_server_handled_total", **_method("ListModels"), grpc_code="OK") == 1
    health = _method("Check", service="grpc.health.v1.Health")
    assert delta("grpc_server_handled_total", **health, grpc_code="OK") == 1

    # Requests, by final status; rejections by reason (an unknown model is counted under model="").
    assert delta("mtserve_request_duration_seconds_count", model="tiny", code="OK") == 4
    assert delta("mtserve_request_duration_seconds_count", model="tiny", code="InvalidArgument") == 1
    assert delta("mtserve_request_duration_seconds_count", model="", code="InvalidArgument") == 1
    assert delta("mtserve_request_duration_seconds_count", model="tiny", code="DeadlineExceeded") == 1
    assert delta("mtserve_requests_rejected_total", model="tiny", reason="invalid_argument") == 1
    assert delta("mtserve_requests_rejected_total", model="", reason="model_not_found") == 1
    assert delta("mtserve_requests_rejected_total", model="tiny", reason="deadline") == 1

    # Tokens and per-text timings: exactly what the answers report (greedy: one token per row and step),
    # plus the text that passed its deadline after one token (admitted, so it waited and was read, but
    # the timings of texts that finish are all that the token histograms hold).
    assert delta("mtserve_input_tokens_total", model="tiny") == sum(r.input_tokens for r in results) + late_tokens
    assert delta("mtserve_queue_wait_seconds_count", model="tiny") == len(results) + 1
    assert delta("mtserve_time_to_first_token_seconds_count", model="tiny") == len(results)
    assert delta("mtserve_time_per_output_token_seconds_count", model="tiny") == sum(
        1 for r in results if r.output_tokens > 1
    )
    generated = sum(r.output_tokens for r in results) + 1
    assert delta("mtserve_generated_tokens_total", model="tiny") == generated
    assert delta("mtserve_decoder_batch_size_sum", model="tiny") == generated
    assert delta("mtserve_decoder_batch_size_count", model="tiny") == engine.steps - steps_before
    # Idle again.
    for name in ("mtserve_texts_running", "mtserve_texts_waiting", "mtserve_kv_cache_usage_ratio"):
        assert value(after, name, model="tiny") == 0, name
