"""The HTTP front door next to gRPC, on one server and one model: calls/s and latency at 16 and 64 clients.

    python -m benchmarks.http_vs_grpc [--seconds 10] [--concurrency 16 64] [--threads 1]

One `mtserve serve` of the bundled model (gRPC and --http-port), `--threads` torch threads. For each
concurrency, that many client threads call for `--seconds`, one German sentence per call: gRPC's Translate
through mtserve.client, then LibreTranslate's POST /translate over keep-alive HTTP/1.1. Both reach the same
engine and batches, so the difference is the front door's own cost (JSON, sentence splitting, HTTP). The
clients run on the same machine and share its cores with the server. Results go to
benchmarks/results/cpu-<threads>threads-http-vs-grpc.{md,json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from mtserve.client import TranslationClient

from .common import RESULTS, cpu_model, git_revision, markdown_table, write_json

SENTENCES = [
    "Guten Morgen!", "Wie spät ist es?", "Das Haus ist groß.", "Ich trinke gern Kaffee.",
    "Wo ist der Bahnhof?", "Das Wetter ist heute schön.", "Wir fahren morgen nach Berlin.",
    "Kannst du mir helfen?", "Der Zug kommt um acht Uhr.", "Ich habe keine Zeit.",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(call: Callable[[int], None], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                call(i)
            except Exception:  # counted, not raised: the table shows them
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {"calls_per_second": len(latencies) / elapsed, "errors": errors[0],
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    args = parser.parse_args(argv)
    grpc_port, http_port = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mtserve.server.cli", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
         "--http-port", str(http_port), "--metrics-port", "off", "--device", "cpu", "--threads", str(args.threads),
         "--max-texts-per-caller", "1024", "--log-level", "WARNING"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        with TranslationClient(f"127.0.0.1:{grpc_port}") as probe:
            probe.wait_until_serving(300)
        rows, records = [], []
        local = threading.local()

        def grpc_call(i: int) -> None:
            if not hasattr(local, "grpc"):
                local.grpc = TranslationClient(f"127.0.0.1:{grpc_port}", timeout=60, retries=0)
            local.grpc.translate([SENTENCES[i % len(SENTENCES)]])

        def http_call(i: int) -> None:
            if not hasattr(local, "http"):
                local.http = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
            body = json.dumps({"q": SENTENCES[i % len(SENTENCES)], "source": "de", "target": "en"})
            local.http.request("POST", "/translate", body, {"content-type": "application/json"})
            response = local.http.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(payload)

        for clients in args.concurrency:
            measured = {}
            for name, call in (("gRPC", grpc_call), ("HTTP (LibreTranslate API)", http_call)):
                load(call, clients, 2.0)  # warm-up: connections, batch sizes
                measured[name] = load(call, clients, args.seconds)
                records.append({"front_door": name, "clients": clients, **measured[name]})
            grpc_rate = measured["gRPC"]["calls_per_second"]
            for name, m in measured.items():
                rows.append([name, clients, f"{m['calls_per_second']:.1f}", f"{m['calls_per_second'] / grpc_rate:.2f}",
                             f"{m['p50_ms']:.0f}", f"{m['p99_ms']:.0f}", int(m["errors"])])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    table = markdown_table(["front door", "clients", "calls/s", "× gRPC", "p50 ms", "p99 ms", "errors"], rows)
    header = (f"# HTTP next to gRPC\n\n{cpu_model()}, server with {args.threads} torch thread(s), clients on the "
              f"same machine, git {git_revision()}; `python -m benchmarks.http_vs_grpc --seconds {args.seconds:g}`: "
              "the bundled model, one sentence per call.\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"cpu-{args.threads}threads-http-vs-grpc"
    (RESULTS / f"{stem}.md").write_text(header + table + "\n")
    write_json(RESULTS / f"{stem}.json", records)
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
