"""Fixtures every test folder may use: clients the project did not write, from other ecosystems."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

JS_CLIENTS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="session")
def js_clients() -> Callable[..., dict[str, Any]]:
    """js_clients(command, *args) -> the JSON reply of ``node tests/js/clients.js command args...``

    grpc-js and friends, installed by ``npm ci --prefix tests/js`` (.ci/run does it). Missing: the test is
    skipped, or failed under CI=true.
    """
    node = shutil.which("node")
    if node is None or not (JS_CLIENTS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        why = "node is not installed" if node is None else "tests/js has no node_modules: npm ci --prefix tests/js"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run this test")
        pytest.skip(why)

    def call(command: str, *args: str) -> dict[str, Any]:
        done = subprocess.run([node, str(JS_CLIENTS / "clients.js"), command, *args], capture_output=True,
                              text=True, timeout=90, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return call
