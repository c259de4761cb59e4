"""Load against a real `mtserve serve` process on loopback: overload, fairness, a cancellation storm, SIGTERM.

Short versions run by default (seconds each); ``-m slow`` runs them longer, and ``-m soak`` is the
ten-minute mixed soak. Each test adds its figures to the report printed at the end of the run
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
from _load import REPORT, LoadResult, closed_loop, in_background, rss_bytes, translate_request
from prometheus_client.parser import text_string_to_metric_families

from mtserve.proto.api import pb2_grpc

LONG = os.environ.get("MTSERVE_LOAD_LONG") == "1"
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


def test_sigterm_under_load_every_call_completes_or_is_refused(served: Served, helpers: Any) -> None:
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
    time.sleep(6.0 if LONG else 2.0)
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
