"""Whatever reaches the gRPC port ends with a status or a closed connection: never a dead server, a wedged
engine or a flood of error logs. Each case against a real server on loopback, which translates afterwards."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.proto.api import SERVICE_NAME, pb2, pb2_grpc


@pytest.fixture(scope="module")
def abused(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    config = helpers.server_config(model_dirs, "tiny", max_message_bytes=64 * 1024, max_metadata_bytes=8 * 1024,
                                   handshake_timeout_seconds=2.0, max_connections=200)
    with helpers.running_server(config) as server:
        yield server


def _translates(server: Any) -> None:
    """A new connection gets a translation (waiting for the connection, as a retrying client would)."""
    with grpc.insecure_channel(server.address) as channel:
        result = pb2_grpc.TranslationServiceStub(channel).Translate(pb2.TranslateRequest(texts=["Tom reads."]),
                                                                   timeout=30, wait_for_ready=True)
    assert result.results[0].output_tokens > 0


def _handled(server: Any, code: str) -> float:
    value = server.server.metrics.registry.get_sample_value("grpc_server_handled_total", {
        "grpc_service": SERVICE_NAME, "grpc_method": "Translate", "grpc_type": "unary", "grpc_code": code})
    return value or 0.0


BODIES = {
    "garbage": b"\xff\xfe\xfd\xfc\xfb\xfa",
    "a lying length": b"\x0a\xff\xff\xff\x0f" + b"abc",  # field 1, 4 GB claimed, 3 bytes sent
    "invalid UTF-8 in a text": b"\x0a\x04\xff\xfe\xc0\xaf",
    "deeply nested groups": b"\x0b" * 5000,  # unknown field 1, start-group, 5,000 deep
    "a truncated varint": b"\x28\xff\xff\xff",
}


@pytest.mark.parametrize("case", list(BODIES))
def test_a_body_that_does_not_parse_is_invalid_argument(abused: Any, case: str, helpers: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    before = _handled(abused, "InvalidArgument")
    with grpc.insecure_channel(abused.address) as channel, caplog.at_level(logging.WARNING):
        raw = channel.unary_unary(f"/{SERVICE_NAME}/Translate")  # bytes in, bytes out: no serializer
        with pytest.raises(grpc.RpcError) as failed:
            raw(BODIES[case], timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
    assert failed.value.details().startswith("request: not a valid mtserve.v1.TranslateRequest message")
    helpers.wait_until(lambda: _handled(abused, "InvalidArgument") == before + 1, "the call to be counted")
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1 and problems[0].levelno == logging.WARNING and not problems[0].exc_info
    _translates(abused)


def test_a_message_above_the_size_limit(abused: Any) -> None:
    with grpc.insecure_channel(abused.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(pb2.TranslateRequest(texts=["x" * 70_000]), timeout=30)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in failed.value.details()
    _translates(abused)


@pytest.mark.parametrize("metadata", [
    tuple((f"x-header-{i}", "v") for i in range(3000)),
    (("x-big", "v" * 1_000_000),),
], ids=["3000 headers", "a megabyte of metadata"])
def test_too_much_metadata(abused: Any, metadata: tuple[tuple[str, str], ...]) -> None:
    with grpc.insecure_channel(abused.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(pb2.TranslateRequest(texts=["Tom."]), metadata=metadata, timeout=30)
    assert failed.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
                                   grpc.StatusCode.UNAVAILABLE), failed.value.code()
    _translates(abused)


def _port(server: Any) -> tuple[str, int]:
    return "127.0.0.1", server.server.port


def test_http1_text_gets_a_closed_connection(abused: Any) -> None:
    with socket.create_connection(_port(abused), timeout=10) as connection:
        connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
    assert b"200 OK" not in received  # no HTTP/1 service here: HTTP/2 GOAWAY or nothing, then closed
    _translates(abused)


def test_connections_that_send_nothing_are_closed_after_the_handshake_timeout(abused: Any) -> None:
    idle = [socket.create_connection(_port(abused), timeout=10) for _ in range(50)]
    try:
        _translates(abused)  # served while they hang around
        started = time.monotonic()
        goodbyes = [_until_closed(connection) for connection in idle]  # the server's SETTINGS, then GOAWAY
        assert time.monotonic() - started < 10, "handshake_timeout_seconds=2: closed within seconds"
        assert all(b"handshake timeout" in goodbye for goodbye in goodbyes)
    finally:
        for connection in idle:
            connection.close()
    _translates(abused)


def _until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return received


def test_many_connections_opened_and_closed_at_once(abused: Any) -> None:
    for _ in range(3):
        burst = []
        for _ in range(150):
            try:
                burst.append(socket.create_connection(_port(abused), timeout=10))
            except OSError:
                break  # the server may refuse past --max-connections: that is the limit working
        for connection in burst:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.close()  # a reset, not a polite close
    for _ in range(30):  # and many real connections, each for one call
        _translates(abused)
