"""Every call can be traced: its request id (given or made up) in the trailing metadata and in every log
line about it, one access-log line per call, and --log-format json."""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.proto.api import pb2, pb2_grpc


@pytest.fixture()
def stub(channel: grpc.Channel) -> Any:
    return pb2_grpc.TranslationServiceStub(channel)


def _access(caplog: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    [record] = [r for r in caplog.records if r.name == "mtserve.access" and request_id in r.getMessage()]
    return record


def test_the_callers_request_id_comes_back_and_is_logged(stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtserve.access"):
        response, call = stub.Translate.with_call(
            pb2.TranslateRequest(texts=["Tom reads.", "Mary eats an apple."],
                                 options=pb2.DecodingOptions(max_length=9)),
            metadata=(("x-request-id", "trace-abc-123"),), timeout=60,
        )
    assert ("x-request-id", "trace-abc-123") in tuple(call.trailing_metadata())
    record = _access(caplog, "trace-abc-123")
    output_tokens = sum(r.output_tokens for r in response.results)
    input_tokens = sum(r.input_tokens for r in response.results)
    assert re.fullmatch(
        rf"Translate model=tiny texts=2 input_tokens={input_tokens} output_tokens={output_tokens} code=OK "
        r"duration_ms=\d+\.\d request_id=trace-abc-123 caller=ipv4:127.0.0.1", record.getMessage()), record.getMessage()
    assert record.access["peer"].startswith("ipv")  # type: ignore[attr-defined]


def test_a_request_id_is_made_up_when_missing_or_unusable(stub: Any) -> None:
    for metadata in ((), (("x-request-id", "has spaces in it"),), (("x-request-id", "x" * 300),)):
        _, call = stub.Translate.with_call(pb2.TranslateRequest(texts=["Tom."]), metadata=metadata, timeout=60)
        [made] = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made), made


def test_a_failed_call_is_logged_and_answered_with_its_request_id(stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtserve.access"), pytest.raises(grpc.RpcError) as failed:
        stub.TranslateStream(pb2.TranslateRequest(texts=[]), metadata=(("x-request-id", "bad-1"),),
                             timeout=60).next()
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("x-request-id", "bad-1") in tuple(failed.value.trailing_metadata())
    message = _access(caplog, "bad-1").getMessage()
    assert message.startswith("TranslateStream model=tiny texts=0 ") and " code=INVALID_ARGUMENT " in message


def test_json_log_format(model_dirs: dict[str, Path], tmp_path: Path, helpers: Any) -> None:
    port = helpers.free_port()
    process = helpers.ServeProcess(
        ["--model", f"tiny={model_dirs['tiny']}", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
         "--device", "cpu", "--log-format", "json"], tmp_path / "serve.log")
    try:
        process.wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb2_grpc.TranslationServiceStub(channel).Translate(
                pb2.TranslateRequest(texts=["Tom reads."]), metadata=(("x-request-id", "json-7"),), timeout=60)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(60) == 0
    finally:
        process.stop()
    records = [json.loads(line) for line in process.log().splitlines() if line.strip()]  # every line is JSON
    [access] = [r for r in records if r["logger"] == "mtserve.access"]
    assert access["request_id"] == "json-7" and access["code"] == "OK" and access["method"] == "Translate"
    assert access["texts"] == 1 and access["input_tokens"] > 0 and access["output_tokens"] > 0
    assert {"time", "level", "message", "duration_ms", "model", "peer"} <= set(access)
    assert any(r["message"] == "stopped" for r in records)
