"""The saturation repro of the engine-core issue, seen from clients: with every KV row running and a text
waiting, a running call is cancelled (or its deadline passes). Nobody else's call may fail, the waiting
call must be served, and every row must come back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.proto.api import pb2, pb2_grpc


def _endless(max_length: int, text: str = "Tom reads the house.") -> Any:
    return pb2.TranslateRequest(texts=[text], model="endless", options=pb2.DecodingOptions(max_length=max_length))


@pytest.fixture()
def full_server(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    """Two KV rows: two greedy texts fill the batch."""
    config = helpers.server_config(model_dirs, "endless", max_batch_rows=2, max_queue=8)
    with helpers.running_server(config) as running:
        yield running


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_abort_at_a_full_batch_fails_nobody_else(full_server: Any, helpers: Any, how: str) -> None:
    engine = full_server.engine("endless")
    scheduler = engine.scheduler
    with grpc.insecure_channel(full_server.address) as channel, helpers.StepGate(engine) as gate:
        stub = pb2_grpc.TranslationServiceStub(channel)
        victim = stub.Translate.future(_endless(200), timeout=2.0 if how == "deadline" else 120)
        innocent = stub.Translate.future(_endless(12), timeout=120)
        gate.wait_entered()
        helpers.wait_until(lambda: scheduler.num_running + scheduler.num_waiting == 2, "two calls queued")
        gate.allow(1)  # one step: the second call joins the batch, which is then full
        helpers.wait_until(lambda: scheduler.num_running == 2, "both calls running (the batch is full)")
        waiting = stub.Translate.future(_endless(7), timeout=120)
        helpers.wait_until(lambda: scheduler.num_waiting == 1, "a third call waiting")
        if how == "cancel":
            victim.cancel()
        else:
            with pytest.raises(grpc.RpcError) as expired:
                victim.result()
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        helpers.wait_until(
            lambda: full_server.server.metrics.registry.get_sample_value(
                "mtserve_request_duration_seconds_count",
                {"model": "endless", "code": "Canceled" if how == "cancel" else "DeadlineExceeded"},
            ) == 1,
            "the server to see the abort",
        )
        gate.open()
        assert innocent.result(timeout=60).results[0].output_tokens == 12
        assert waiting.result(timeout=60).results[0].output_tokens == 7
    helpers.wait_until(lambda: scheduler.num_running == 0 and scheduler.num_waiting == 0, "the engine to go idle")
    assert stub_translates(full_server)


def stub_translates(server: Any) -> bool:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        return stub.Translate(_endless(3), timeout=60).results[0].output_tokens == 3
