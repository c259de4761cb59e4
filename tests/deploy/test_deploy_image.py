"""The image, built and run for real: deploy/offline/build-image.sh builds deploy/Dockerfile with BuildKit
(a debootstrap base, a local wheelhouse), then the container runs with the flags a Kubernetes pod gets
(deploy/k8s: uid 10001, read-only root, tmpfs for /tmp and the home, no capabilities, no new privileges).

Needs a Docker daemon: skipped without one, failed under CI=true (.ci/run starts dockerd). The build's
time and the image's size are printed in pytest's summary.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from _deploy_support import docker_cli, run, wait_until

from mtserve.client import TranslationClient
from mtserve.engine import Translator

TEXTS = ["Guten Morgen!", "Wie spät ist es?", "Das Haus ist groß."]
#: The pod's security settings as docker flags (deploy/k8s/base/deployment.yaml).
POD_FLAGS = [
    "--user", "10001:10001", "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/mtserve:uid=10001,gid=10001",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
]  # fmt: skip


@dataclass
class Container:
    docker: str
    id: str

    def inspect(self, template: str) -> str:
        return run([self.docker, "inspect", "-f", template, self.id]).stdout.strip()

    def port(self, container_port: int) -> int:
        mapped = run([self.docker, "port", self.id, f"{container_port}/tcp"]).stdout.split()
        return int(mapped[0].rsplit(":", 1)[1])

    def logs(self) -> str:
        done = run([self.docker, "logs", "--tail", "60", self.id])
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    docker = docker_cli()
    started = run([docker, "run", "-d", *POD_FLAGS, "-e", "MTSERVE_THREADS=1", "-e", "MTSERVE_METRICS_HOST=0.0.0.0",
                   "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9090", image])  # fmt: skip
    assert started.returncode == 0, started.stderr
    running = Container(docker, started.stdout.strip())
    yield running
    run([docker, "rm", "-f", running.id])


def test_the_image_runs_as_the_pod_user(image: str) -> None:
    docker = docker_cli()
    user, entrypoint = run([docker, "image", "inspect", "-f", "{{.Config.User}} {{json .Config.Entrypoint}}",
                            image]).stdout.split(" ", 1)  # fmt: skip
    assert user == "10001:10001"
    assert json.loads(entrypoint) == ["mtserve", "serve"]


def test_the_container_turns_healthy_and_translates(container: Container) -> None:
    # The image's own HEALTHCHECK (every 10 s), with the pod's flags: a read-only root and no capabilities.
    wait_until(lambda: container.inspect("{{.State.Health.Status}}") == "healthy", "the HEALTHCHECK to pass",
               240, container.logs)
    expected = [r.text for r in Translator.load_default(device="cpu").translate(TEXTS)]
    with TranslationClient(f"127.0.0.1:{container.port(50051)}", timeout=60) as client:
        assert [r.text for r in client.translate(TEXTS)] == expected
        assert client.health() == "SERVING"
    with urllib.request.urlopen(f"http://127.0.0.1:{container.port(9090)}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'mtserve_request_duration_seconds_count{code="OK"' in metrics, metrics[:2000]


def test_docker_stop_drains_the_call_in_flight_and_exits_0(container: Container) -> None:
    texts = [f"Das ist der Satz Nummer {i} in einem langen Auftrag, den der Server übersetzt." for i in range(120)]
    outcome: dict[str, object] = {}

    def translate() -> None:
        with TranslationClient(f"127.0.0.1:{container.port(50051)}", timeout=120, retries=0) as client:
            try:
                outcome["texts"] = [r.text for r in client.translate(texts, beam_size=4)]
            except Exception as error:  # the test reports it
                outcome["error"] = error

    call = threading.Thread(target=translate)
    call.start()
    time.sleep(1.0)  # the call has reached the server and is decoding
    stopped = run([container.docker, "stop", "-t", "30", container.id], timeout=60)
    call.join(60)
    assert stopped.returncode == 0, stopped.stderr
    assert "error" not in outcome, (outcome, container.logs())
    assert len(outcome["texts"]) == len(texts) and all(outcome["texts"])  # type: ignore[arg-type]
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    # The call was in flight when SIGTERM came, and the drain waited for it.
    assert "for 1 call(s) in flight" in container.logs(), container.logs()
