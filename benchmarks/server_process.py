"""``mtserve serve`` in a subprocess on a free port, for the serving benchmark."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

_PORT_RE = re.compile(r"gRPC on \S+?:(\d+)")
# What mtserve serve logs once it serves ("serving model 'x'; health SERVING", or "serving models ...").
_READY_RE = re.compile(r"; health SERVING")


def mtserve_command() -> list[str]:
    """The ``mtserve`` console script of this interpreter's environment (or the one on PATH)."""
    script = Path(sys.executable).with_name("mtserve")
    if script.is_file():
        return [str(script)]
    found = shutil.which("mtserve")
    if found is None:
        raise FileNotFoundError("mtserve is not installed: pip install -e '.[bench]'")
    return [found]


class ServerProcess:
    """Start the server, wait until it serves, stop it with SIGTERM (as an orchestrator would).

    The port is 0 and is read back from the server's start-up log; /metrics is off.
    """

    def __init__(self, model: Path, extra_args: Sequence[str] = (), threads: int | None = None,
                 ready_timeout: float = 900.0, command: Sequence[str] | None = None) -> None:
        # `command`: another server that logs the same start-up lines (benchmarks/ct2_server.py).
        self.args = list(command) if command is not None else [
            *mtserve_command(), "serve", "--model", f"bench={model}", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "off", *extra_args]
        self.env = dict(os.environ)
        if threads is not None:  # torch reads it at start-up: the server's intra-op threads
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.ready_timeout = ready_timeout
        self.port = 0
        self.log: list[str] = []
        self._ready = threading.Event()
        self._process: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self.log.append(line.rstrip())
            if not self.port and (match := _PORT_RE.search(line)):
                self.port = int(match.group(1))
            if _READY_RE.search(line):
                self._ready.set()
        self._ready.set()  # exited: wake the waiter, which then sees the exit

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(timeout=1.0):
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready after {self.ready_timeout:.0f}s: {self.tail()}")
        if self._process.poll() is not None or not self.port:
            self.stop()
            raise RuntimeError(f"server did not start: {self.tail()}")
        return self

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.log[-lines:])

    def stop(self, grace: float = 60.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
