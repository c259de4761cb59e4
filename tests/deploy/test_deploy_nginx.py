"""deploy/nginx/mtserve.conf in the real nginx, in front of two real `mtserve serve` replicas (the bundled model).

The module's replicas and nginx are shared; the tests run in file order and the last one stops the replicas
(failover, then no replica at all).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator

import grpc
import pytest
from _deploy_support import (
    DEPLOY,
    Nginx,
    Replica,
    free_port,
    healthcheck_command,
    nginx_directive_value,
    require_tool,
    run,
    start_replicas,
)

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import SERVICE_NAME

TEXTS = ["Guten Morgen!", "Wie spät ist es?", "Das Haus ist groß.", "Ich trinke gern Kaffee."]
CALLS = 20


def upstream_lines(replicas: list[Replica]) -> list[str]:
    """The compose stack's replica list (deploy/nginx/mtserve-upstream.conf) with these replicas' addresses."""
    shipped = re.findall(r"^\s*server\s+\S+(.*);", (DEPLOY / "nginx" / "mtserve-upstream.conf").read_text(), re.M)
    assert len(set(shipped)) == 1, f"the shipped servers have different parameters: {shipped}"
    return [f"server {replica.address}{shipped[0]};" for replica in replicas]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    running = start_replicas(2, tmp_path_factory.mktemp("replicas"))
    yield running
    for replica in running:
        replica.kill()


@pytest.fixture(scope="module")
def nginx(replicas: list[Replica], nginx_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proxy = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), upstream_lines(replicas))
    proxy.start()
    yield proxy
    proxy.stop()


def client(target: str) -> TranslationClient:
    # No client-side retries: a call that succeeds through nginx was delivered by nginx itself.
    return TranslationClient(target, timeout=30, retries=0)


def test_health_service_passes_through(nginx: Nginx) -> None:
    with client(nginx.address) as c:
        assert c.health() == "SERVING"
        assert c.health(SERVICE_NAME) == "SERVING"


def test_calls_are_balanced_over_both_replicas(nginx: Nginx, replicas: list[Replica]) -> None:
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


def test_failover_then_unavailable_without_replicas(nginx: Nginx, replicas: list[Replica]) -> None:
    stopped, survivor = replicas
    assert stopped.terminate() == 0
    before = survivor.calls_ok()
    with client(nginx.address) as c:
        # The stopped replica refuses connections: nginx passes each call on to the survivor.
        for i in range(6):
            (result,) = c.translate([TEXTS[i % len(TEXTS)]])
            assert result.text, nginx.logs()
        assert c.health() == "SERVING"
    assert survivor.calls_ok() - before == 6
    assert "connect() failed" in nginx.error_log.read_text()

    assert survivor.terminate() == 0
    with client(nginx.address) as c, pytest.raises(TranslationError) as failed:
        c.translate(TEXTS[:1])
    # nginx's 502 reaches the client as the gRPC status of the error_page reply, not as an HTTP error
    # (which gRPC would report as "Received http2 header with status: 502").
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
    assert failed.value.details == nginx_directive_value("add_header", "grpc-message")


def test_error_reply_is_a_grpc_trailers_only_response(
    start_nginx: Callable[[Iterable[str]], Nginx],
) -> None:
    """The raw HTTP/2 reply nginx gives when no replica answers: what any gRPC client library reads."""
    curl = require_tool("curl", "curl")
    if "HTTP2" not in run([curl, "--version"]).stdout:
        if os.environ.get("CI") == "true":
            pytest.fail("this curl has no HTTP/2 support; CI must run this test")
        pytest.skip("this curl has no HTTP/2 support")
    # Two ports where nothing listens.
    proxy = start_nginx([f"server 127.0.0.1:{free_port()};", f"server 127.0.0.1:{free_port()};"])
    # No request body: nginx answers before it reads one and resets the stream, which curl (unlike gRPC
    # clients, see the test above) reports as an error instead of printing the reply.
    reply = run([curl, "-sS", "-i", "--http2-prior-knowledge", "-X", "POST",
                 "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", "",
                 f"http://{proxy.address}/{SERVICE_NAME}/ListModels"])  # fmt: skip
    assert reply.returncode == 0, reply.stderr
    status_line, *header_lines = reply.stdout.strip().splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    assert status_line.split()[:2] == ["HTTP/2", "204"], reply.stdout
    assert headers.get("content-type") == "application/grpc", reply.stdout
    assert headers.get("grpc-status") == "14", reply.stdout  # UNAVAILABLE
    assert headers.get("grpc-message") == nginx_directive_value("add_header", "grpc-message"), reply.stdout
