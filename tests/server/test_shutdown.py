"""`mtserve serve` as a process: SIGTERM drains (calls in flight finish, new calls get UNAVAILABLE) and the
process exits 0 within --grace-seconds."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.proto.api import pb2, pb2_grpc

GRACE_SECONDS = 60.0


@pytest.fixture()
def serve_process(model_dirs: dict[str, Path], tmp_path: Path, helpers: Any) -> Iterator[tuple[Any, str]]:
    port = helpers.free_port()
    args = [
        "--model", f"endless={model_dirs['endless']}", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--device", "cpu", "--grace-seconds", str(GRACE_SECONDS),
    ]  # fmt: skip
    process = helpers.ServeProcess(args, tmp_path / "serve.log")
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        process.stop()


def test_sigterm_drains_and_exits_zero(serve_process: tuple[Any, str], helpers: Any) -> None:
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
