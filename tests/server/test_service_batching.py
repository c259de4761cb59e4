"""Continuous batching seen from clients: results independent of the batch, no head-of-line blocking,
backpressure, and slots freed by cancellation and deadlines.

Where a test needs a request to be "in flight" or "waiting", it holds the engine with ``StepGate`` instead
of relying on how fast a CPU decodes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from mtserve.client import TranslationClient, TranslationResult
from mtserve.engine.translator import Translator
from mtserve.proto.api import pb2, pb2_grpc

CLIENTS = 32
MAX_LENGTH = 24


def _sample(server: Any, name: str, model: str, **labels: str) -> float:
    value = server.server.metrics.registry.get_sample_value(name, {"model": model, **labels})
    return 0.0 if value is None else value


def _endless(max_length: int, texts: tuple[str, ...] = ("Tom reads the house.",)) -> Any:
    return pb2.TranslateRequest(texts=list(texts), model="endless", options=pb2.DecodingOptions(max_length=max_length))


@pytest.fixture()
def stub(channel: grpc.Channel) -> Any:
    return pb2_grpc.TranslationServiceStub(channel)


# -- batching never changes results ------------------------------------------------------------------


@pytest.mark.parametrize("beam_size", [1, 4], ids=["greedy", "beam4"])
def test_concurrent_clients_get_offline_results(
    server: Any, offline: Callable[[str], Translator], helpers: Any, beam_size: int
) -> None:
    texts = helpers.sample_sentences(CLIENTS, seed=7)  # one engine text per call: counted below
    translator = offline("tiny")
    alone = [translator.translate([t], max_length=MAX_LENGTH, beam_size=beam_size)[0] for t in texts]
    clients = [TranslationClient(server.address, timeout=60) for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)

    def one(i: int) -> TranslationResult:
        start.wait(timeout=helpers.WAIT_SECONDS)
        [result] = clients[i].translate([texts[i]], beam_size=beam_size, max_length=MAX_LENGTH, return_scores=True)
        return result

    engine = server.engine("tiny")
    steps_before = engine.steps
    batch_steps_before = _sample(server, "mtserve_decoder_batch_size_count", "tiny")
    big_batches_before = batch_steps_before - _sample(server, "mtserve_decoder_batch_size_bucket", "tiny", le="4.0")
    try:
        # Hold the engine until every call is queued, so they really share the batch: 31 texts join a
        # running one, and with beam 4 (124 rows > 64) the rest join as others finish.
        with helpers.StepGate(engine) as gate, ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one, i) for i in range(CLIENTS)]
            scheduler = engine.scheduler
            helpers.wait_until(lambda: scheduler.num_running + scheduler.num_waiting == CLIENTS, "all calls queued")
            gate.open()
            results = [f.result(timeout=120) for f in futures]
    finally:
        for client in clients:
            client.close()

    for text, result, want in zip(texts, results, alone, strict=True):
        assert result.text == want.text, text
        assert result.output_tokens == helpers.expected_output_tokens(want, MAX_LENGTH), text
        assert result.input_tokens == want.input_tokens
        assert result.score == pytest.approx(want.score, abs=1e-4)
    # The texts stop at different steps (so slots free up mid-batch), and batches were really shared.
    assert len({r.output_tokens for r in results}) > 3
    steps = engine.steps - steps_before
    assert steps < sum(r.output_tokens for r in results) / 4
    big_batches = _sample(server, "mtserve_decoder_batch_size_count", "tiny") - _sample(
        server, "mtserve_decoder_batch_size_bucket", "tiny", le="4.0"
    )
    assert big_batches - big_batches_before > 0


# -- head-of-line --------------------------------------------------------------------------------------


def test_short_request_overtakes_long_one(server: Any, stub: Any, helpers: Any) -> None:
    engine = server.engine("endless")
    finished: list[str] = []
    long_length, short_length = 64, 2
    with helpers.StepGate(engine) as gate:
        long_call = stub.Translate.future(_endless(long_length), timeout=120)
        long_call.add_done_callback(lambda _: finished.append("long"))
        gate.wait_entered()  # the long request is admitted and about to take its first step
        short_call = stub.Translate.future(_endless(short_length, ("Mary eats.",)), timeout=120)
        short_call.add_done_callback(lambda _: finished.append("short"))
        helpers.wait_until(lambda: engine.scheduler.num_waiting == 1, "the short request to queue")
        gate.open()
        short, long = short_call.result(), long_call.result()
    # Done-callbacks run just after result() is released: wait for both before reading the order.
    helpers.wait_until(lambda: len(finished) == 2, "both done-callbacks")
    assert finished == ["short", "long"]
    assert short.results[0].output_tokens == short_length
    assert long.results[0].output_tokens == long_length  # never stops early: it was in flight throughout


# -- backpressure ----------------------------------------------------------------------------------


@pytest.fixture()
def small_server(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    """One KV-cache row and room for two waiting texts."""
    # One caller (these tests) may fill the whole queue here: the queue limit is what they test.
    config = helpers.server_config(model_dirs, "endless", max_batch_rows=1, max_queue=2, max_texts_per_caller=8)
    with helpers.running_server(config) as running:
        yield running


def test_queue_full_is_resource_exhausted_at_once(small_server: Any, helpers: Any) -> None:
    engine = small_server.engine("endless")
    scheduler = engine.scheduler
    with grpc.insecure_channel(small_server.address) as channel, helpers.StepGate(engine) as gate:
        stub = pb2_grpc.TranslationServiceStub(channel)
        running = stub.Translate.future(_endless(30), timeout=120)
        gate.wait_entered()
        waiting = [stub.Translate.future(_endless(20 + i), timeout=120) for i in range(2)]
        helpers.wait_until(lambda: scheduler.num_waiting == 2, "two waiting requests")

        # The engine is held, so this can only be answered without waiting for room.
        with pytest.raises(grpc.RpcError) as rejected:
            stub.Translate(_endless(5), timeout=helpers.WAIT_SECONDS)
        assert rejected.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting queue is full" in rejected.value.details()
        assert "max_queue=2" in rejected.value.details()
        assert not running.done()

        gate.open()
        outputs = [call.result().results[0].output_tokens for call in (running, *waiting)]
        assert outputs == [30, 20, 21]  # everything accepted completes, in full
        # The queue has room again.
        assert stub.Translate(_endless(3), timeout=60).results[0].output_tokens == 3
    assert _sample(small_server, "mtserve_requests_rejected_total", "endless", reason="queue_full") == 1


def test_cancelled_waiting_request_leaves_the_queue(small_server: Any, helpers: Any) -> None:
    engine = small_server.engine("endless")
    scheduler = engine.scheduler
    with grpc.insecure_channel(small_server.address) as channel, helpers.StepGate(engine) as gate:
        stub = pb2_grpc.TranslationServiceStub(channel)
        running = stub.Translate.future(_endless(10), timeout=120)
        gate.wait_entered()
        queued = [stub.Translate.future(_endless(10), timeout=120) for _ in range(2)]
        helpers.wait_until(lambda: scheduler.num_waiting == 2, "two waiting requests")
        queued[0].cancel()
        # Its room is free at once, while the engine is still held.
        helpers.wait_until(lambda: scheduler.num_waiting == 1, "the cancelled request to leave the queue")
        replacement = stub.Translate.future(_endless(4), timeout=120)
        helpers.wait_until(lambda: scheduler.num_waiting == 2, "the replacement to queue")
        gate.open()
        assert running.result().results[0].output_tokens == 10
        assert queued[1].result().results[0].output_tokens == 10
        assert replacement.result().results[0].output_tokens == 4
    assert queued[0].cancelled()


# -- cancellation and deadlines free the slots ---------------------------------------------------------


def _wait_idle(server: Any, helpers: Any, model: str) -> None:
    engine = server.engine(model)
    helpers.wait_until(
        lambda: engine.scheduler.num_running == 0
        and engine.scheduler.rows_in_use == 0
        and _sample(server, "mtserve_texts_running", model) == 0
        and _sample(server, "mtserve_kv_cache_usage_ratio", model) == 0,
        f"{model}: no running texts and no KV-cache rows in use",
    )


def test_client_cancel_frees_slots(server: Any, stub: Any, helpers: Any) -> None:
    engine = server.engine("endless")
    canceled_before = _sample(server, "mtserve_request_duration_seconds_count", "endless", code="Canceled")
    with helpers.StepGate(engine) as gate:
        call = stub.Translate.future(_endless(200, ("Tom reads.", "Mary eats the house.")), timeout=120)
        gate.wait_entered()
        assert engine.scheduler.num_running == 2 and engine.scheduler.rows_in_use == 2
        steps_before = engine.steps
        call.cancel()
        # The server saw the cancellation (and cancelled the texts) before the engine moves again.
        helpers.wait_until(
            lambda: _sample(server, "mtserve_request_duration_seconds_count", "endless", code="Canceled")
            == canceled_before + 1,
            "the server to see the cancellation",
        )
        gate.open()
        _wait_idle(server, helpers, "endless")
    assert engine.steps - steps_before <= 3  # freed at the next steps, not after 200
    assert call.cancelled()


def test_deadline_frees_slots(server: Any, stub: Any, helpers: Any) -> None:
    engine = server.engine("endless")
    expired_before = _sample(server, "mtserve_request_duration_seconds_count", "endless", code="DeadlineExceeded")
    with helpers.StepGate(engine) as gate:
        with pytest.raises(grpc.RpcError) as failed:
            # The engine is held, so the deadline passes while the text is in the batch.
            stub.Translate(_endless(200), timeout=0.5)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert engine.scheduler.rows_in_use == 1
        helpers.wait_until(
            lambda: _sample(server, "mtserve_request_duration_seconds_count", "endless", code="DeadlineExceeded")
            == expired_before + 1,
            "the server to see the deadline",
        )
        steps_before = engine.steps
        gate.open()
        _wait_idle(server, helpers, "endless")
    assert engine.steps - steps_before <= 3


def test_deadline_while_waiting_leaves_the_queue(small_server: Any, helpers: Any) -> None:
    engine = small_server.engine("endless")
    with grpc.insecure_channel(small_server.address) as channel, helpers.StepGate(engine) as gate:
        stub = pb2_grpc.TranslationServiceStub(channel)
        running = stub.Translate.future(_endless(5), timeout=120)
        gate.wait_entered()
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(_endless(5), timeout=0.5)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        helpers.wait_until(lambda: engine.scheduler.num_waiting == 0, "the expired request to leave the queue")
        gate.open()
        assert running.result().results[0].output_tokens == 5
    _wait_idle(small_server, helpers, "endless")
