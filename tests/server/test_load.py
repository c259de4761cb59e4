"""Load against a real `mtserve serve` process on loopback: overload, fairness, a cancellation storm, SIGTERM.

Short versions run by default (seconds each); ``pytest -m slow`` runs them longer, and ``pytest -m soak``
is the ten-minute mixed soak. Each test adds its figures to the report printed at the end of the run
(calls by outcome, p99 of accepted calls, rows and resident memory before and after).
"""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _load import REPORT, LoadResult, closed_loop, cpu_seconds, in_background, rss_bytes, translate_request
from prometheus_client.parser import text_string_to_metric_families

from mtserve.proto.api import pb2, pb2_grpc

GRACE_SECONDS = 30.0
LOG_LEVEL = os.environ.get("MTSERVE_LOAD_LOG_LEVEL", "WARNING")


class Served:
    """A `mtserve serve` subprocess with its gRPC and metrics addresses."""

    def __init__(self, helpers: Any, tmp_path: Path, model_dirs: dict[str, Path], *extra: str) -> None:
        self.port, self.metrics_port = helpers.free_port(), helpers.free_port()
        args = [
            "--model", f"tiny={model_dirs['tiny']}", "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), "--device", "cpu", "--threads", "1",
            "--grace-seconds", str(GRACE_SECONDS), "--log-level", LOG_LEVEL, *extra,
        ]  # fmt: skip
        self.process = helpers.ServeProcess(args, tmp_path / "serve.log")
        self.address = f"127.0.0.1:{self.port}"
        self.process.wait_serving(self.address)

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def rss(self) -> int:
        return rss_bytes(self.process.process.pid)

    def idle(self) -> bool:
        return all(self.metric(name, model="tiny") == 0 for name in
                   ("mtserve_texts_running", "mtserve_texts_waiting", "mtserve_rows_in_use"))

    def translates(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb2_grpc.TranslationServiceStub(channel)
            return bool(stub.Translate(translate_request("Tom reads."), timeout=30).results[0].output_tokens)


@pytest.fixture(params=["short", pytest.param("long", marks=pytest.mark.slow)])
def scale(request: pytest.FixtureRequest) -> float:
    """How long the load runs: 1 by default, 3 times as long with -m slow."""
    return 1.0 if request.param == "short" else 3.0


@pytest.fixture()
def served(helpers: Any, tmp_path: Path, model_dirs: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[Any]:
    extra = getattr(request, "param", ())
    server = Served(helpers, tmp_path, model_dirs, *extra)
    try:
        yield server
    finally:
        server.process.stop()


def _sentence(rng: random.Random) -> str:
    words = ["Tom", "Mary", "reads", "eats", "the", "house", "book", "apple", "today", "again", "small", "red"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + "."


def _figures(result: LoadResult) -> str:
    codes = ", ".join(f"{code} {count}" for code, count in sorted(result.codes().items()))
    return (f"{len(result.calls)} calls in {result.seconds:.1f} s ({codes}); OK {result.rate():.1f}/s, "
            f"p50 {result.median() * 1e3:.0f} ms, p99 {result.percentile(0.99) * 1e3:.0f} ms")


def test_sigterm_under_load_every_call_completes_or_is_refused(served: Served, scale: float) -> None:
    """In flight or arriving during the drain: OK or UNAVAILABLE, never CANCELLED, reset or lost; exit 0."""
    exited = served.process.process.poll

    def make(rng: random.Random) -> tuple[Any, float, str]:
        kind = rng.choice(["unary", "stream"])
        request = translate_request(_sentence(rng), max_length=rng.choice([8, 24, 48]))
        request.partial_results = kind == "stream"
        return request, 60.0, kind

    thread, box = in_background(lambda: closed_loop(
        served.address, make, workers=24, until=lambda: exited() is not None,
        backoff_seconds=0.002, max_backoff_seconds=0.005))  # clients that retry at once, to race the drain
    time.sleep(2.0 * scale)
    signalled = time.monotonic()
    served.process.process.send_signal(signal.SIGTERM)
    returncode = served.process.process.wait(GRACE_SECONDS + 10)
    drained = time.monotonic() - signalled
    thread.join(60)
    [result] = box
    codes = result.codes()
    REPORT.add("SIGTERM under load", f"{_figures(result)}; exit {returncode} after {drained:.2f} s")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, {(c.code, c.details) for c in result.calls if c.code != "OK"}
    assert codes["OK"] > 50 and codes["UNAVAILABLE"] > 0, codes
    assert returncode == 0, served.process.log()
    assert drained < GRACE_SECONDS
    log = served.process.log()
    assert "Traceback" not in log and " ERROR " not in log, log


def _greedy(max_length: int = 16) -> Any:
    def make(rng: random.Random) -> tuple[Any, float | None, str]:
        return translate_request(_sentence(rng), max_length=max_length), None, "unary"

    return make


OVERLOAD_ARGS = ("--max-batch-rows", "16", "--max-queue", "8")


@pytest.mark.parametrize("served", [OVERLOAD_ARGS], indirect=True)
def test_overload_sheds_and_still_delivers_capacity(served: Served, scale: float) -> None:
    """Three times the clients the batch can serve, short deadlines, a small queue: every call ends OK,
    RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED within its deadline + 1 s; work that cannot meet its deadline is
    shed, not decoded (at least 96% of the tokens the decoder generates reach a caller in an OK answer); and
    the successful calls per second stay at 0.6x capacity or more.

    Why these two figures: the share of decoded tokens delivered is what shedding controls, and it does not
    depend on the machine. The throughput ratio does: the load generator shares the 2 cores, and answering
    ~150 refusals a second costs the server's event loop CPU time that its engine thread (sharing the GIL)
    would have used: 0.86-0.99x on a 2-core AMD EPYC, 0.71-0.86x on a 2-core Xeon (both before and after
    the speed work of issue 13); the floor catches a collapse, not that."""
    seconds = 5.0 * scale
    rss_before = served.rss()
    closed_loop(served.address, _greedy(), workers=16, seconds=1.0)  # warm-up

    def with_deadline(rng: random.Random) -> tuple[Any, float | None, str]:
        request, _, kind = _greedy()(rng)
        return request, rng.uniform(0.05, 0.5), kind

    # Capacity and overload are measured back to back; a second pair is measured when the first falls
    # short, so that another process taking a core for a few seconds is not read as a shedding fault.
    # Every call of both pairs is checked; the better pair must meet both figures.
    pairs: list[tuple[float, float]] = []
    for attempt in range(2):
        cpu = _CpuUse(served)
        capacity = closed_loop(served.address, _greedy(), workers=16, seconds=seconds)
        capacity_cpu = cpu.since()
        # (A few RESOURCE_EXHAUSTED even here: texts that arrive within one step wait for the next one.)
        assert set(capacity.codes()) <= {"OK", "RESOURCE_EXHAUSTED"}, capacity.codes()
        generated_before = served.metric("mtserve_generated_tokens_total", model="tiny")
        cpu = _CpuUse(served)
        overload = closed_loop(served.address, with_deadline, workers=48, seconds=seconds)
        overload_cpu = cpu.since()
        helpers_wait(served.idle, "the batch to empty")
        generated = served.metric("mtserve_generated_tokens_total", model="tiny") - generated_before
        delivered = sum(call.output_tokens for call in overload.calls if call.code == "OK")
        codes = overload.codes()
        late = [c for c in overload.calls if c.deadline is not None and c.seconds > c.deadline + 1.0]
        pairs.append((overload.rate() / capacity.rate(), delivered / generated))
        suffix = f" (measured again: {pairs[0][0]:.2f}x, {pairs[0][1]:.0%} the first time)" if attempt else ""
        REPORT.add("overload: capacity (16 clients)", f"{_figures(capacity)}; {capacity_cpu}")
        REPORT.add("overload: 48 clients, deadlines 0.05-0.5 s, --max-queue 8",
                   f"{_figures(overload)}; {overload_cpu}; {pairs[-1][0]:.2f}x capacity; "
                   f"{delivered} of {generated:.0f} decoded tokens delivered ({pairs[-1][1]:.0%}){suffix}")
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
        assert not late, late[:5]
        if pairs[-1][0] >= 0.6 and pairs[-1][1] >= 0.96:
            break
    assert any(ratio >= 0.6 and share >= 0.96 for ratio, share in pairs), pairs
    helpers_wait(served.idle, "the gauges and rows to come back to 0")
    assert served.translates()
    REPORT.add("overload: resident memory", f"{rss_before / 2**20:.0f} MB before, {served.rss() / 2**20:.0f} MB after")


class _CpuUse:
    """CPU seconds the server and this (client) process use from now on: on a 2-core machine the load
    generator competes with the server, and more clients take more of the machine."""

    def __init__(self, served: Served) -> None:
        self.pid = served.process.process.pid
        self.wall, self.server, self.client = time.monotonic(), cpu_seconds(self.pid), cpu_seconds()

    def since(self) -> str:
        wall = time.monotonic() - self.wall
        server, client = cpu_seconds(self.pid) - self.server, cpu_seconds() - self.client
        return f"CPU: server {server / wall:.2f} cores, clients {client / wall:.2f}"


def helpers_wait(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_small_call_behind_a_large_request_is_not_held_up(served: Served) -> None:
    """The head-of-line case: one sentence arriving behind a 48-text beam-8 request (six times the batch:
    long enough still to be decoding when the small call comes, however fast the steps get)."""
    with grpc.insecure_channel(served.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        small = translate_request("Mary eats the red apple.", max_length=16)
        for _ in range(3):
            stub.Translate(small, timeout=60)  # warm-up
        alone = []
        for _ in range(5):
            started = time.monotonic()
            stub.Translate(small, timeout=60)
            alone.append(time.monotonic() - started)
        unloaded = sorted(alone)[2]
        big = pb2.TranslateRequest(
            texts=[f"Tom reads the small book {i} and the red house again today." for i in range(48)],
            options=pb2.DecodingOptions(beam_size=8, max_length=64))
        large = stub.Translate.future(big, timeout=120)
        time.sleep(0.2)  # the large request is decoding, and most of it waits
        started = time.monotonic()
        stub.Translate(small, timeout=60)
        behind = time.monotonic() - started
        assert not large.done(), "the large request ended before the small call came: nothing was tested"
        large.result()
    REPORT.add("fairness", f"one sentence alone {unloaded * 1e3:.0f} ms, behind a 48-text beam-8 request "
                           f"{behind * 1e3:.0f} ms ({behind / unloaded:.1f}x)")
    assert behind < 5 * unloaded, (behind, unloaded)


def _storm(served: Served, calls: int, seed: int) -> tuple[LoadResult, LoadResult]:
    """`calls` calls cancelled at random moments beside a saturating load of calls nobody cancels."""

    def mixed(rng: random.Random) -> tuple[Any, float | None, str]:
        kind = rng.choice(["unary", "stream"])
        request = translate_request(_sentence(rng), max_length=rng.choice([16, 32, 64]),
                                    beam_size=rng.choice([1, 1, 2, 4]))
        request.partial_results = kind == "stream" and request.options.beam_size == 1
        return request, 60.0, kind

    storm_done = [False]
    background, box = in_background(lambda: closed_loop(
        served.address, _greedy(32), workers=24, until=lambda: storm_done[0], seed=seed))
    storm = closed_loop(served.address, mixed, workers=32, calls=calls, seed=seed + 1,
                        cancel_after=lambda rng: rng.uniform(0.0, 0.25))
    storm_done[0] = True
    background.join(120)
    return storm, box[0]


def test_a_cancellation_storm_fails_nobody_and_leaks_nothing(served: Served, scale: float) -> None:
    """1,000 calls cancelled at random moments beside a saturating load: nobody else fails, every row comes
    back, and resident memory stays within 5%. The warm-up runs the same mix first: the packed layers keep
    state per row-count bucket (model/cpu_linear.py), a bounded set, and memory grows until the mix has met
    it (about 3,000 calls here; 209 shapes, then flat)."""
    calls = int(1000 * scale)
    for seed in range(3):
        _storm(served, 1000, seed=10 + seed)
    helpers_wait(served.idle, "the warm-up to drain")
    before = served.rss()
    storm, background = _storm(served, calls, seed=2)
    helpers_wait(served.idle, "the gauges and rows to come back to 0")
    after = served.rss()
    cancelled = sum(1 for call in storm.calls if call.cancelled_by_us)
    REPORT.add(f"cancellation storm: {calls} calls cancelled at random", _figures(storm))
    REPORT.add("cancellation storm: the calls beside it", _figures(background))
    REPORT.add("cancellation storm: resident memory",
               f"{before / 2**20:.0f} MB before, {after / 2**20:.0f} MB after ({after / before - 1:+.1%}); rows 0")
    assert set(background.codes()) == {"OK"}, background.codes()
    assert set(storm.codes()) <= {"OK", "CANCELLED"}, storm.codes()
    assert all(call.cancelled_by_us for call in storm.calls if call.code == "CANCELLED")
    assert cancelled > calls // 2, f"only {cancelled} of {calls} were cancelled before they finished"
    assert after <= before * 1.05, (before, after)
    assert served.translates()
    log = served.process.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def _soak_mix(rng: random.Random) -> tuple[Any, float | None, str]:
    kind = rng.choice(["unary", "unary", "stream"])
    search = rng.choice([{}, {"beam_size": 4}, {"beam_size": 2, "num_hypotheses": 2},
                         {"sampling_temperature": 0.8, "num_hypotheses": 2}, {"sampling_topk": 5}])
    request = translate_request(" ".join(_sentence(rng) for _ in range(rng.randint(1, 3))),
                                max_length=rng.choice([16, 32, 64]), **search)
    request.partial_results = kind == "stream"
    return request, rng.choice([None, 30.0, 2.0]), kind


@pytest.mark.soak
@pytest.mark.timeout(float(os.environ.get("MTSERVE_SOAK_MINUTES", "10")) * 60 + 600)
def test_soak_mixed_load_keeps_memory_flat(served: Served) -> None:
    """Ten minutes (MTSERVE_SOAK_MINUTES) of greedy, beam, sampling and streaming calls, a fifth of them
    cancelled at random: resident memory grows less than 5% after the warm-up, and every row comes back."""
    minutes = float(os.environ.get("MTSERVE_SOAK_MINUTES", "10"))

    def cancel_some(rng: random.Random) -> float | None:
        return rng.uniform(0.0, 0.5) if rng.random() < 0.2 else None

    def chunk(seconds: float, seed: int) -> LoadResult:
        return closed_loop(served.address, _soak_mix, workers=24, seconds=seconds, seed=seed, cancel_after=cancel_some)

    warm = chunk(60.0, seed=0)
    helpers_wait(served.idle, "the warm-up to drain")
    baseline = served.rss()
    samples, outcomes = [], warm.codes()
    outcomes.clear()
    for index in range(max(1, int(minutes * 2))):
        result = chunk(30.0, seed=index + 1)
        outcomes.update(result.codes())
        samples.append(served.rss())
    helpers_wait(served.idle, "the gauges and rows to come back to 0")
    growth = max(samples) / baseline - 1
    REPORT.add(f"soak, {minutes:g} min", f"calls {dict(outcomes)}; resident memory {baseline / 2**20:.0f} MB after "
               f"warm-up, at most {max(samples) / 2**20:.0f} MB ({growth:+.1%}), rows 0 at the end")
    assert set(outcomes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, outcomes
    assert growth < 0.05, [s / 2**20 for s in samples]
    log = served.process.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
