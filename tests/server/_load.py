"""Load against a real server on loopback, for the load tests: a closed loop of asyncio gRPC clients.

A plain module (``from _load import ...``) so that the load tests share one load generator. Each worker
sends a call, waits for its end, and sends the next; after a refusal (RESOURCE_EXHAUSTED, UNAVAILABLE) it
backs off exponentially with jitter first, as gRPC retry policies do. Every call's status code and
duration are recorded; the tests assert on them and report them (``Report``: a table printed at the end of the run).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from mtserve.proto.api import pb2, pb2_grpc

REFUSED_NAMES = {"RESOURCE_EXHAUSTED", "UNAVAILABLE"}


@dataclass
class Call:
    code: str
    seconds: float
    deadline: float | None  # seconds the call was given
    cancelled_by_us: bool = False
    details: str = ""
    ended: float = 0.0  # seconds from the start of the load
    output_tokens: int = 0  # of a unary call's answer: its texts' best translations, </s> included


@dataclass
class LoadResult:
    calls: list[Call]
    seconds: float
    window: float | None = None  # the load's planned duration: rates count calls that ended within it

    def codes(self) -> Counter[str]:
        return Counter(call.code for call in self.calls)

    def rate(self, code: str = "OK") -> float:
        window = self.window or self.seconds
        return sum(1 for call in self.calls if call.code == code and call.ended <= window) / window

    def percentile(self, q: float, code: str = "OK") -> float:
        times = sorted(call.seconds for call in self.calls if call.code == code)
        if not times:
            return float("nan")
        return times[min(len(times) - 1, int(q * len(times)))]

    def median(self, code: str = "OK") -> float:
        times = [call.seconds for call in self.calls if call.code == code]
        return statistics.median(times) if times else float("nan")


RequestMaker = Callable[[random.Random], tuple[Any, float | None, str]]  # request, deadline, "unary"|"stream"


def translate_request(text: str, model: str = "", max_length: int = 16, **options: Any) -> Any:
    return pb2.TranslateRequest(texts=[text], model=model,
                                options=pb2.DecodingOptions(max_length=max_length, **options))


async def _one(stub: Any, request: Any, deadline: float | None, kind: str, cancel_after: float | None) -> Call:
    started = time.monotonic()
    call = stub.Translate(request, timeout=deadline) if kind == "unary" else stub.TranslateStream(
        request, timeout=deadline)
    ours = False
    details = ""
    output_tokens = 0

    def cancel() -> None:
        nonlocal ours
        ours = True
        call.cancel()

    timer = asyncio.get_running_loop().call_later(cancel_after, cancel) if cancel_after is not None else None
    try:
        if kind == "unary":
            output_tokens = sum(result.output_tokens for result in (await call).results)
        else:
            async for _ in call:
                pass
        code = "OK"
    except asyncio.CancelledError:  # how grpc.aio ends a call the client cancelled
        code = "CANCELLED"
    except grpc.aio.AioRpcError as error:
        code, details = error.code().name, error.details() or ""
    finally:
        if timer is not None:
            timer.cancel()
    return Call(code, time.monotonic() - started, deadline, ours, details, output_tokens=output_tokens)


def closed_loop(
    address: str,
    make_request: RequestMaker,
    *,
    workers: int,
    seconds: float | None = None,
    calls: int | None = None,
    until: Callable[[], bool] | None = None,
    backoff_seconds: float = 0.05,
    max_backoff_seconds: float = 1.0,
    cancel_after: Callable[[random.Random], float | None] | None = None,
    seed: int = 0,
) -> LoadResult:
    """Run `workers` closed-loop clients on one channel until `seconds` pass, `calls` calls have been made,
    or `until()` turns true; every call's outcome."""

    async def main() -> LoadResult:
        outcomes: list[Call] = []
        started = time.monotonic()
        made = 0

        def more() -> bool:
            if seconds is not None and time.monotonic() - started >= seconds:
                return False
            if calls is not None and made >= calls:
                return False
            return not (until is not None and until())

        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb2_grpc.TranslationServiceStub(channel)

            async def worker(index: int) -> None:
                nonlocal made
                rng = random.Random(seed * 1000 + index)
                refusals = 0
                while more():
                    made += 1
                    request, deadline, kind = make_request(rng)
                    after = cancel_after(rng) if cancel_after is not None else None
                    call = await _one(stub, request, deadline, kind, after)
                    call.ended = time.monotonic() - started
                    outcomes.append(call)
                    if call.code in REFUSED_NAMES:  # back off exponentially, with full jitter, as retry policies do
                        refusals += 1
                        await asyncio.sleep(rng.uniform(0, min(max_backoff_seconds, backoff_seconds * 2**refusals)))
                    else:
                        refusals = 0

            await asyncio.gather(*(worker(i) for i in range(workers)))
        return LoadResult(outcomes, time.monotonic() - started, seconds)

    return asyncio.run(main())


def in_background(run: Callable[[], LoadResult]) -> tuple[threading.Thread, list[LoadResult]]:
    """Start `run` in a thread; the list gets its result."""
    box: list[LoadResult] = []
    thread = threading.Thread(target=lambda: box.append(run()), daemon=True)
    thread.start()
    return thread, box


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time a process has used so far (Linux /proc; this process when pid is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Report:
    """Figures the load tests print at the end of the run (tests/server/conftest.py's terminal summary)."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, test: str, figures: str) -> None:
        self.rows.append((test, figures))


REPORT = Report()


def cpu_line() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"
