"""Fixtures every test folder may use: clients the project did not write, from other ecosystems."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

# tests/ is on sys.path (this conftest's folder), as each test folder is.
from _js import JS_CLIENTS, js_modules


@pytest.fixture(scope="session")
def js_clients() -> Callable[..., dict[str, Any]]:
    """js_clients(command, *args) -> the JSON reply of ``node tests/js/clients.js command args...``"""
    node, _ = js_modules()

    def call(command: str, *args: str) -> dict[str, Any]:
        done = subprocess.run([node, str(JS_CLIENTS / "clients.js"), command, *args], capture_output=True,
                              text=True, timeout=90, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return call
