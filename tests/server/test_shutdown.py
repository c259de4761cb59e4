"""`mtserve serve` as a process: SIGTERM drains (calls in flight finish, new calls get UNAVAILABLE) and the
process exits 0 within --grace-seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.proto.api import pb2, pb2_grpc

GRACE_SECONDS = 60.0
STARTUP_SECONDS = 120.0


def mtserve_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("mtserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtserve.server.cli"]


class ServeProcess:
    """A `mtserve serve` subprocess whose output goes to a log file (read back when a test fails)."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [*mtserve_command(), "serve", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, address: str, helpers: Any) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                if self.process.poll() is not None:
                    pytest.fail(f"mtserve serve exited with {self.process.returncode}:\n{self.log()}")
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                except grpc.RpcError:
                    return False
                return response.status == health_pb2.HealthCheckResponse.SERVING

            helpers.wait_until(serving, "mtserve serve to report SERVING", timeout=STARTUP_SECONDS)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._log.close()


@pytest.fixture()
def serve_process(model_dirs: dict[str, Path], tmp_path: Path, helpers: Any) -> Iterator[tuple[ServeProcess, str]]:
    port = helpers.free_port()
    args = [
        "--model", f"endless={model_dirs['endless']}", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--device", "cpu", "--grace-seconds", str(GRACE_SECONDS),
    ]  # fmt: skip
    process = ServeProcess(args, tmp_path / "serve.log")
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        process.stop()


def test_sigterm_drains_and_exits_zero(serve_process: tuple[ServeProcess, str], helpers: Any) -> None:
    process, address = serve_process
    process.wait_serving(address, helpers)
    max_length = 250
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        # 250 decoder steps (the model never ends a text early), streamed so that the test knows the call
        # is in flight before it signals; draining starts within a few steps' time.
        request = pb2.TranslateRequest(
            texts=["Tom reads the house."],
            partial_results=True,
            options=pb2.DecodingOptions(max_length=max_length),
        )
        call = stub.TranslateStream(request, timeout=120)
        first = next(call)
        assert first.WhichOneof("event") == "partial"
        messages: list[Any] = [first]
        errors: list[grpc.RpcError] = []
        done = threading.Event()

        def read_rest() -> None:
            try:
                messages.extend(call)
            except grpc.RpcError as error:
                errors.append(error)
            done.set()

        reader = threading.Thread(target=read_rest, daemon=True)
        reader.start()
        assert not done.is_set()
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)

        # New calls are refused once the server drains (a call racing the signal may still get in).
        def refused() -> bool:
            try:
                stub.ListModels(pb2.ListModelsRequest(), timeout=5)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return True
            return False

        helpers.wait_until(refused, "new calls to be refused after SIGTERM")
        with pytest.raises(grpc.RpcError) as translate_refused:
            stub.Translate(pb2.TranslateRequest(texts=["a."]), timeout=5)
        assert translate_refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not done.is_set(), "the long call finished before the drain could be observed"

        assert done.wait(GRACE_SECONDS), "the call in flight did not finish"
        reader.join(helpers.WAIT_SECONDS)
    assert not errors, errors
    results = {m.result.index: m.result for m in messages if m.WhichOneof("event") == "result"}
    assert list(results) == [0]
    assert results[0].output_tokens == max_length  # completed in full, not cut off

    returncode = process.process.wait(GRACE_SECONDS)
    assert returncode == 0, process.log()
    assert time.monotonic() - signalled < GRACE_SECONDS
    log = process.log()
    assert "draining" in log and "stopped" in log, log
