"""Who may call: TLS, mutual TLS, bearer tokens (health open, reflection closed, counted by name, never
logged), certificates and tokens re-read on SIGHUP without dropping connections, --no-reflection."""

from __future__ import annotations

import logging
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _certs import CA
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import pb2, pb2_grpc

TOKEN = "s3cret-token-of-alice-0123456789"
OTHER = "s3cret-token-of-bob-9876543210xx"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = CA(root, "ca"), CA(root, "rogue-ca")
    return {"ca": ca, "rogue": rogue, "server": ca.issue("server", server=True),
            "client": ca.issue("client", server=False), "rogue_client": rogue.issue("rogue-client", server=False)}


def _translate(client: TranslationClient) -> str:
    return client.translate(["Tom reads."], max_length=6)[0].text


def test_tls(model_dirs: dict[str, Path], helpers: Any, pki: dict[str, Any]) -> None:
    pair = pki["server"]
    config = helpers.server_config(model_dirs, "tiny", tls_cert=str(pair.cert), tls_key=str(pair.key))
    with helpers.running_server(config) as server:
        with TranslationClient(server.address, root_certificates=pki["ca"].pair.cert, retries=0) as client:
            assert _translate(client)
        for refused in ({}, {"root_certificates": pki["rogue"].pair.cert}):  # plaintext; a CA it does not know
            with TranslationClient(server.address, retries=0, timeout=5, **refused) as client, \
                    pytest.raises(TranslationError) as failed:
                _translate(client)
            assert failed.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(model_dirs: dict[str, Path], helpers: Any, pki: dict[str, Any]) -> None:
    pair = pki["server"]
    config = helpers.server_config(model_dirs, "tiny", tls_cert=str(pair.cert), tls_key=str(pair.key),
                                   tls_client_ca=str(pki["ca"].pair.cert))
    ca = pki["ca"].pair.cert
    with helpers.running_server(config) as server:
        client_pair = pki["client"]
        with TranslationClient(server.address, root_certificates=ca, certificate_chain=client_pair.cert,
                               private_key=client_pair.key, retries=0) as client:
            assert _translate(client)
        rogue = pki["rogue_client"]
        for refused in ({}, {"certificate_chain": rogue.cert, "private_key": rogue.key}):  # none; a stranger's
            with TranslationClient(server.address, root_certificates=ca, retries=0, timeout=5, **refused) as client, \
                    pytest.raises(TranslationError) as failed:
                _translate(client)
            assert failed.value.code == grpc.StatusCode.UNAVAILABLE


def test_bad_tls_files_fail_the_start_naming_them(model_dirs: dict[str, Path], helpers: Any,
                                                  pki: dict[str, Any], tmp_path: Path) -> None:
    from mtserve.server.app import MtserveServer
    from mtserve.server.tls import TLSConfigError

    pair = pki["server"]
    missing = helpers.server_config(model_dirs, "tiny", tls_cert=str(tmp_path / "nope.crt"), tls_key=str(pair.key))
    with pytest.raises(TLSConfigError, match=r"tls_cert: cannot read .*nope\.crt"):
        MtserveServer(missing)
    mismatched = helpers.server_config(model_dirs, "tiny", tls_cert=str(pair.cert), tls_key=str(pki["client"].key))
    with pytest.raises(TLSConfigError, match="are not a certificate chain and its private key"):
        MtserveServer(mismatched)
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        helpers.server_config(model_dirs, "tiny", tls_cert=str(pair.cert))


@pytest.fixture()
def token_server(model_dirs: dict[str, Path], helpers: Any, tmp_path: Path) -> Iterator[Any]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call\nalice {TOKEN}\n\n{OTHER}\n")
    config = helpers.server_config(model_dirs, "tiny", auth_token_file=str(tokens), log_level="INFO")
    with helpers.running_server(config) as server:
        yield server


def test_tokens(token_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mtserve")
    address = token_server.address
    for token in (None, "wrong-token-wrong-token-wrong", TOKEN[:-1]):
        with TranslationClient(address, token=token, retries=0) as client, pytest.raises(TranslationError) as failed:
            _translate(client)
        assert failed.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in failed.value.details and (token is None or token not in failed.value.details)
    for token in (TOKEN, OTHER):
        with TranslationClient(address, token=token, retries=0) as client:
            assert _translate(client)
            assert client.list_models()
    with grpc.insecure_channel(address) as channel:  # probes need no token
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)  # the API's description does
        with pytest.raises(grpc.RpcError) as described:
            list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=10))
        assert described.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metrics = token_server.server.metrics
    assert metrics.registry.get_sample_value("mtserve_token_calls_total", {"token": "alice"}) == 2
    assert metrics.registry.get_sample_value("mtserve_token_calls_total", {"token": "token-4"}) == 2
    assert metrics.registry.get_sample_value("mtserve_token_calls_total", {"token": ""}) == 4
    exposition = metrics.exposition().decode()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "caller=alice" in logged
    for secret in (TOKEN, OTHER):
        assert secret not in exposition and secret not in logged


def test_no_reflection(model_dirs: dict[str, Path], helpers: Any) -> None:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", no_reflection=True)) as server, \
            grpc.insecure_channel(server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_listen_on_loopback_unless_told(model_dirs: dict[str, Path], helpers: Any) -> None:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", metrics_host="127.0.0.1")) as server:
        assert server.server.metrics_server.httpd.server_address[0] == "127.0.0.1"
    from mtserve.server.config import ServerConfig

    assert ServerConfig().metrics_host == "127.0.0.1"


def test_sighup_rotates_certificates_and_tokens_without_dropping_connections(
    model_dirs: dict[str, Path], helpers: Any, pki: dict[str, Any], tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name, source in (("server.crt", pki["server"].cert), ("server.key", pki["server"].key)):
        shutil.copy(source, live / name)
    tokens = live / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    port, metrics_port = helpers.free_port(), helpers.free_port()
    process = helpers.ServeProcess([
        "--model", f"tiny={model_dirs['tiny']}", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", str(metrics_port), "--device", "cpu", "--tls-cert", str(live / "server.crt"),
        "--tls-key", str(live / "server.key"), "--auth-token-file", str(tokens)], tmp_path / "serve.log")
    address = f"127.0.0.1:{port}"
    try:
        old_ca, new_ca = pki["ca"].pair.cert, pki["rogue"].pair.cert
        with TranslationClient(address, root_certificates=old_ca, token=TOKEN, retries=0, timeout=120) as before:
            helpers.wait_until(lambda: _ready(before), "the TLS server to serve")
            # Rotate: a certificate from another CA, and bob's token instead of alice's.
            rotated = pki["rogue"].issue("server-2", server=True)
            shutil.copy(rotated.cert, live / "server.crt")
            shutil.copy(rotated.key, live / "server.key")
            tokens.write_text(f"bob {OTHER}\n")
            process.process.send_signal(signal.SIGHUP)
            helpers.wait_until(lambda: "tokens reloaded" in process.log(), "the reload to be logged")
            with TranslationClient(address, root_certificates=new_ca, token=OTHER, retries=0) as after:
                assert _translate(after)  # a new connection: the new certificate and the new token
            with TranslationClient(address, root_certificates=new_ca, token=TOKEN, retries=0) as alice, \
                    pytest.raises(TranslationError) as gone:
                _translate(alice)
            assert gone.value.code == grpc.StatusCode.UNAUTHENTICATED  # alice's token no longer works
            with TranslationClient(address, root_certificates=old_ca, token=OTHER, retries=0, timeout=5) as stale, \
                    pytest.raises(TranslationError):
                _translate(stale)  # the old certificate is not offered to new connections
            # The connection opened before the reload is still up (the old certificate is its business).
            with pytest.raises(TranslationError) as same_connection:
                _translate(before)
            assert same_connection.value.code == grpc.StatusCode.UNAUTHENTICATED  # not UNAVAILABLE: not dropped
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert b'mtserve_token_calls_total{token="bob"}' in response.read()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(60) == 0
    finally:
        process.stop()
    log = process.log()
    assert "TLS certificates reloaded" in log and TOKEN not in log and OTHER not in log


def _ready(client: TranslationClient) -> bool:
    try:
        return client.health() == "SERVING"
    except TranslationError:
        time.sleep(0.2)
        return False


def test_the_proto_is_enough_for_a_token(token_server: Any) -> None:
    """A raw stub (no mtserve client) passes the token as plain metadata."""
    with grpc.insecure_channel(token_server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        response = stub.Translate(pb2.TranslateRequest(texts=["Tom."]),
                                  metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        assert response.results[0].output_tokens > 0


def test_one_caller_cannot_take_more_than_its_share(model_dirs: dict[str, Path], helpers: Any,
                                                     tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\nbob {OTHER}\n")
    config = helpers.server_config(model_dirs, "endless", auth_token_file=str(tokens), max_texts_per_caller=3)
    request = pb2.TranslateRequest(texts=["Tom reads.", "Mary eats."], options=pb2.DecodingOptions(max_length=40))
    with helpers.running_server(config) as server, grpc.insecure_channel(server.address) as channel, \
            helpers.StepGate(server.engine("endless")) as gate:
        stub = pb2_grpc.TranslationServiceStub(channel)
        alice = (("authorization", f"Bearer {TOKEN}"),)
        first = stub.Translate.future(request, metadata=alice, timeout=60)  # alice: 2 texts in flight
        gate.wait_entered()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Translate(request, metadata=alice, timeout=60)  # 2 more would be 4 > 3
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-texts-per-caller" in refused.value.details() and "at most 3" in refused.value.details()
        second = stub.Translate.future(request, metadata=(("authorization", f"Bearer {OTHER}"),), timeout=60)
        helpers.wait_until(lambda: server.engine("endless").scheduler.num_requests == 2, "bob's call queued")
        gate.open()
        assert [r.output_tokens for call in (first, second) for r in call.result().results] == [40] * 4
        assert stub.Translate(request, metadata=alice, timeout=60).results  # alice's share is back
    rejected = server.server.metrics.registry.get_sample_value(
        "mtserve_requests_rejected_total", {"model": "endless", "reason": "caller_limit"})
    assert rejected == 1


def test_idle_connections_are_closed(model_dirs: dict[str, Path], helpers: Any) -> None:
    config = helpers.server_config(model_dirs, "tiny", idle_connection_seconds=1.0)
    states: list[grpc.ChannelConnectivity] = []
    with helpers.running_server(config) as server, grpc.insecure_channel(server.address) as channel:
        channel.subscribe(states.append, try_to_connect=False)
        pb2_grpc.TranslationServiceStub(channel).Translate(pb2.TranslateRequest(texts=["Tom."]), timeout=30)
        helpers.wait_until(lambda: grpc.ChannelConnectivity.READY in states, "the connection")
        ready_at = len(states)
        helpers.wait_until(lambda: grpc.ChannelConnectivity.IDLE in states[ready_at:], "the server to close it",
                           timeout=10)
