"""``mtserve bench``: a closed-loop load generator in the spirit of ghz.

C workers each send a request, wait for its answer and send the next, until N
requests are done or the duration is over. Prints throughput (requests/s,
texts/s, generated tokens/s), latency percentiles of the successful requests,
and the count of every status code. Calls are not retried, so errors show.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .aio import AsyncTranslationClient
from .argparsing import ArgumentParser
from .cli import add_connection_arguments, add_decoding_arguments, connection_kwargs, decoding_kwargs
from .types import TranslationError

# Varied lengths, so that batches mix short and long texts as real traffic does. German, because the
# bundled default model translates German to English.
SENTENCES = (
    "Hallo, wie geht es dir?",
    "Das Wetter ist heute schön.",
    "Wo ist der Bahnhof?",
    "Ich hätte gern eine Tasse Kaffee, bitte.",
    "Vielen Dank für Ihre Hilfe.",
    "Die Besprechung wurde auf Donnerstagnachmittag verschoben.",
    "Bitte schicken Sie mir den Bericht bis Ende der Woche.",
    "Sie wohnt seit mehr als zehn Jahren in dieser Stadt.",
    "Können Sie mir sagen, wie ich von hier zum Museum komme?",
    "Die neue Bibliothek wird im nächsten Frühling für die Öffentlichkeit geöffnet.",
    "Wir müssen auf dem Heimweg Brot, Milch und Eier kaufen.",
    "Er hat seinen Regenschirm vergessen und wurde auf dem Weg zur Arbeit nass.",
    "Der Ausschuss hat den Haushalt nach einer langen Diskussion genehmigt.",
    "Kinder lernen Sprachen viel schneller als die meisten Erwachsenen.",
    "Unser Flug hatte wegen des Sturms zwei Stunden Verspätung.",
    "Das Restaurant an der Ecke serviert die beste Suppe der Stadt.",
    "Wissenschaftler haben im Regenwald eine neue Froschart entdeckt.",
    "Wenn Sie Fragen haben, wenden Sie sich bitte an unser Support-Team.",
    "Das Unternehmen hat angekündigt, in diesem Jahr zweihundert neue Mitarbeiter einzustellen.",
)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


@dataclass
class BenchReport:
    concurrency: int
    requests: int  # completed, successfully or not
    ok: int
    texts: int  # translated (successful requests only, as the token counts)
    input_tokens: int
    generated_tokens: int
    duration_s: float
    requests_per_s: float
    texts_per_s: float
    generated_tokens_per_s: float
    latency_ms: dict[str, float]  # of successful requests: min, mean, p50, p90, p99, max
    codes: dict[str, int] = field(default_factory=dict)


async def run_bench(
    target: str | Sequence[str],
    *,
    concurrency: int = 8,
    requests: int | None = None,
    duration: float | None = None,
    texts_per_request: int = 1,
    texts: Sequence[str] = SENTENCES,
    connections: int = 1,
    timeout: float | None = 60.0,
    connection: dict[str, Any] | None = None,
    target_languages: Sequence[str] = (),
    **translate_kwargs: Any,
) -> BenchReport:
    """Run the load and return the report. Stops after ``requests`` requests or ``duration`` seconds.
    ``connection``: more client keywords (TLS, token), as cli.connection_kwargs gives them.
    ``target_languages``: cycled over the texts sent, one per text (a multilingual model's mixed load)."""
    if requests is None and duration is None:
        raise ValueError("give requests or duration")
    if not texts:
        raise ValueError("no input texts")
    # Separate subchannel pools give separate TCP connections, as ghz --connections does.
    extra = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else []
    clients = [AsyncTranslationClient(target, timeout=timeout, retries=0, options=extra, **(connection or {}))
               for _ in range(connections)]
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    totals = Counter[str]()
    next_request = 0
    start = time.perf_counter()
    stop_at = None if duration is None else start + duration

    async def worker(client: AsyncTranslationClient) -> None:
        nonlocal next_request
        while True:
            if requests is not None and next_request >= requests:
                return
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            n = next_request
            next_request += 1
            batch = [texts[(n * texts_per_request + j) % len(texts)] for j in range(texts_per_request)]
            per_text = {}
            if target_languages:
                per_text["target_language"] = [target_languages[(n * texts_per_request + j) % len(target_languages)]
                                               for j in range(texts_per_request)]
            t0 = time.perf_counter()
            try:
                results = await client.translate(batch, **translate_kwargs, **per_text)
            except TranslationError as e:
                codes[e.code.name] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            codes["OK"] += 1
            totals["texts"] += len(results)
            totals["input_tokens"] += sum(r.input_tokens for r in results)
            totals["generated_tokens"] += sum(r.output_tokens for r in results)

    try:
        await asyncio.gather(*(worker(clients[i % connections]) for i in range(concurrency)))
    finally:
        for client in clients:
            await client.close()
    elapsed = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    completed = sum(codes.values())
    return BenchReport(
        concurrency=concurrency,
        requests=completed,
        ok=codes["OK"],
        texts=totals["texts"],
        input_tokens=totals["input_tokens"],
        generated_tokens=totals["generated_tokens"],
        duration_s=elapsed,
        requests_per_s=completed / elapsed,
        texts_per_s=totals["texts"] / elapsed,
        generated_tokens_per_s=totals["generated_tokens"] / elapsed,
        latency_ms={
            "min": ms[0] if ms else math.nan,
            "mean": sum(ms) / len(ms) if ms else math.nan,
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": ms[-1] if ms else math.nan,
        },
        codes=dict(codes.most_common()),
    )


def format_report(report: BenchReport) -> str:
    lat = report.latency_ms
    lines = [
        "Summary:",
        f"  concurrency:   {report.concurrency}",
        f"  requests:      {report.requests} ({report.ok} OK)",
        f"  texts:         {report.texts}",
        f"  duration:      {report.duration_s:.2f} s",
        f"  throughput:    {report.requests_per_s:.2f} requests/s, {report.texts_per_s:.2f} texts/s, "
        f"{report.generated_tokens_per_s:.1f} generated tokens/s",
        "",
        "Latency of OK requests (ms):",
        "  " + "  ".join(f"{k} {lat[k]:.1f}" for k in ("min", "mean", "p50", "p90", "p99", "max")),
        "",
        "Status codes:",
        *(f"  {code}: {count}" for code, count in report.codes.items()),
    ]
    return "\n".join(lines)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="mtserve bench",
        description="A closed-loop load generator in the spirit of ghz: C workers each send a request, wait for "
                    "its answer and send the next, until N requests are done or the duration is over. Prints "
                    "throughput, latency percentiles of the successful requests and the count of every status "
                    "code. Calls are not retried, so errors show.")
    parser.add_argument("-c", "--concurrency", type=int, default=8, metavar="C",
                        help="workers, each with one request in flight (%(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-n", "--requests", type=int, metavar="N", help="total requests (default 200)")
    group.add_argument("--duration", type=float, metavar="S", help="run for S seconds instead")
    parser.add_argument("--texts-per-request", type=int, default=1, metavar="K", help="(%(default)s)")
    parser.add_argument("-i", "--input", metavar="FILE",
                        help="texts, one per line (default: built-in German sentences)")
    parser.add_argument("--connections", type=int, default=1, metavar="N",
                        help="gRPC connections shared by the workers (%(default)s)")
    parser.add_argument("--target-languages", metavar="L1,L2,...",
                        help="target languages cycled over the texts sent (a multilingual model's mixed load; "
                             "overrides --target-language)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_connection_arguments(parser)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("concurrency", "texts_per_request", "connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.requests is None and args.duration is None:
        args.requests = 200
    texts = _read_lines(args.input) if args.input else SENTENCES
    if not texts:
        parser.error(f"{args.input}: no non-empty lines")
    decoding = decoding_kwargs(args)
    languages = [code.strip() for code in (args.target_languages or "").split(",") if code.strip()]
    if languages:
        decoding.pop("target_language")
    report = asyncio.run(run_bench(
        args.server, concurrency=args.concurrency, requests=args.requests, duration=args.duration,
        texts_per_request=args.texts_per_request, texts=texts, connections=args.connections,
        timeout=args.timeout, connection={k: v for k, v in connection_kwargs(args).items() if k != "timeout"},
        target_languages=languages, **decoding,
    ))
    if args.json:
        data = asdict(report)
        data["latency_ms"] = {k: None if math.isnan(v) else v for k, v in report.latency_ms.items()}
        print(json.dumps(data, indent=2))
    else:
        print(format_report(report))
    # Like a test: 0 only when every request succeeded, so scripts notice errors.
    return 0 if report.ok == report.requests > 0 else 1
