"""The client side never imports torch: it must start fast and install without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
assert "torch" not in sys.modules, "torch was imported"
"""


@pytest.mark.parametrize("module", ["mtserve.client", "mtserve.client.cli", "mtserve.client.bench",
                                    "mtserve.server.cli", "mtserve.proto.api"])
def test_module_does_not_import_torch(module):
    # A fresh interpreter: this test process may well have torch loaded already.
    proc = subprocess.run([sys.executable, "-c", CHECK.format(module=module)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
