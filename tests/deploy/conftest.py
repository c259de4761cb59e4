"""Fixtures for the deploy/ tests: the external tools (promtool, nginx, curl) and real processes.

A tool that is missing skips its tests locally and fails them under CI=true, where .ci/run installs it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# This folder is on sys.path (pytest puts a test folder without __init__.py there), as for the test modules.
from _deploy_support import BASE_IMAGE, REPO, Nginx, docker_cli, require_tool, run


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    return require_tool("nginx", "nginx")


@pytest.fixture()
def start_nginx(nginx_binary: str, tmp_path: Path) -> Iterator[Callable[[str], Nginx]]:
    """start(replicas_conf) -> a running nginx with deploy/nginx/mtserve.conf; stopped after the test."""
    started: list[Nginx] = []

    def start(replicas: str) -> Nginx:
        nginx = Nginx(nginx_binary, tmp_path / f"nginx-{len(started)}", replicas)
        started.append(nginx)
        nginx.start()
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


_IMAGE_REPORT: dict[str, str] = {}


@pytest.fixture(scope="session")
def image_report() -> dict[str, str]:
    """image tag -> what to say about it in the summary (size, build time)."""
    return _IMAGE_REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for tag, what in _IMAGE_REPORT.items():
        terminalreporter.write_line(f"image {tag}: {what}")


#: The tag the tests build deploy/Dockerfile as.
IMAGE = "mtserve:ci-test"


@pytest.fixture(scope="session")
def image(image_report: dict[str, str]) -> str:
    """deploy/Dockerfile built by deploy/offline/build-image.sh (a Docker daemon is needed: see docker_cli)."""
    docker = docker_cli()
    started = time.monotonic()
    built = run([str(REPO / "deploy" / "offline" / "build-image.sh"), IMAGE], timeout=1800,
                env={**os.environ, "BASE_IMAGE": BASE_IMAGE})
    assert built.returncode == 0, built.stderr[-6000:]
    seconds = time.monotonic() - started
    size = int(run([docker, "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    image_report[IMAGE] = f"{size / 1e9:.2f} GB, built in {seconds:.0f} s (deploy/offline/build-image.sh)"
    return IMAGE
