"""Node.js and the packages of tests/js, for the tests that run clients and checkers from that ecosystem."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

JS_CLIENTS = Path(__file__).resolve().parent / "js"


def js_modules() -> tuple[str, Path]:
    """node and tests/js/node_modules, installed by ``npm ci --prefix tests/js`` (.ci/run does it).

    Missing: the test is skipped, or failed under CI=true.
    """
    node = shutil.which("node")
    modules = JS_CLIENTS / "node_modules"
    if node is None or not (modules / "@grpc" / "grpc-js").is_dir():
        why = "node is not installed" if node is None else "tests/js has no node_modules: npm ci --prefix tests/js"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI must run this test")
        pytest.skip(why)
    return node, modules
