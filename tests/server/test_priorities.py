"""Request priorities on a real server: an interactive call is admitted ahead of queued batch calls, and a
batch call is not starved by a steady interactive load (the scheduler's ageing; its policy is tested with
a fake clock in tests/engine/test_scheduler.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.client import TranslationClient
from mtserve.proto.api import pb2, pb2_grpc


@pytest.fixture(scope="module")
def one_row(model_dirs: dict[str, Path], helpers: Any) -> Any:
    """One KV row: texts decode one after another, so the order they finish in is the order admitted."""
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", max_batch_rows=1)) as running:
        yield running


def test_interactive_goes_before_queued_batch_calls(one_row: Any, helpers: Any) -> None:
    engine = one_row.engine("tiny")
    scheduler = engine.scheduler
    finished: list[str] = []
    lock = threading.Lock()

    def call(name: str, priority: str) -> None:
        with TranslationClient(one_row.address, timeout=60) as client:
            client.translate([f"Tom reads the book number {len(name)}."], max_length=8, priority=priority)
        with lock:
            finished.append(name)

    with helpers.StepGate(engine) as gate, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(call, "first", "normal")]
        helpers.wait_until(lambda: scheduler.num_running == 1, "the first call running")
        futures += [pool.submit(call, f"batch{i}", "batch") for i in range(3)]
        helpers.wait_until(lambda: scheduler.num_waiting == 3, "the batch calls queued")
        futures.append(pool.submit(call, "interactive", "interactive"))
        futures.append(pool.submit(call, "normal", "normal"))
        helpers.wait_until(lambda: scheduler.num_waiting == 5, "all calls queued")
        gate.open()
        for future in futures:
            future.result(timeout=60)
    assert finished[:3] == ["first", "interactive", "normal"]
    assert sorted(finished[3:]) == ["batch0", "batch1", "batch2"]


def test_a_batch_call_is_not_starved_by_a_steady_interactive_load(one_row: Any) -> None:
    stop = threading.Event()
    interactive_done: list[float] = []

    def interactive_load() -> None:
        with TranslationClient(one_row.address, timeout=60) as client:
            while not stop.is_set():
                client.translate(["Mary eats the red apple today."], max_length=8, priority="interactive")
                interactive_done.append(time.monotonic())

    loaders = [threading.Thread(target=interactive_load) for _ in range(3)]  # more than one row can serve
    for loader in loaders:
        loader.start()
    try:
        time.sleep(0.3)
        with TranslationClient(one_row.address, timeout=30) as client:
            [result] = client.translate(["Tom reads the small book."], max_length=8, priority="batch")
        batch_done = time.monotonic()
        time.sleep(0.3)
    finally:
        stop.set()
        for loader in loaders:
            loader.join(60)
    assert result.text
    # The interactive load ran before and after it: it was admitted while that load went on.
    assert any(t < batch_done for t in interactive_done) and any(t > batch_done for t in interactive_done)


def test_an_unknown_priority_is_invalid(one_row: Any) -> None:
    with grpc.insecure_channel(one_row.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(pb2.TranslateRequest(texts=["x"], priority=7), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith("priority: unknown value 7")
    with pytest.raises(ValueError, match="priority must be one of batch, normal, interactive"):
        TranslationClient(one_row.address).translate(["x"], priority="urgent")
