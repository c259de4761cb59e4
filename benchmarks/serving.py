"""Serving under load: ``mtserve bench`` against ``mtserve serve``, continuous batching vs one text at a time.

    python -m benchmarks.serving [--model DIR] [--concurrency 1 4 16 64 256] [--requests 256]
    python -m benchmarks.serving --quick      # issue 3's check: concurrency 32 only

For each server configuration (the normal batch limits, then ``--max-batch-rows 1``: one text in the
decoder at a time, i.e. no batching at all) a fresh server is started, warmed up with a few requests,
and ``mtserve bench --json`` runs closed-loop at each concurrency with single-sentence requests.
Reported per point: requests/s, generated tokens/s, p50 and p99 latency. The summary gives, per
concurrency, the batched/unbatched throughput ratio and both p99s. Results go to
benchmarks/results/<device>-serving[-quick].{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    Device,
    default_threads,
    detect_device,
    git_revision,
    load_sentences,
    markdown_table,
    write_results,
)
from .server_process import ServerProcess, mtserve_command

log = logging.getLogger("benchmarks.serving")


@dataclass
class Config:
    """A server configuration under test."""

    name: str
    server_args: list[str]
    command: list[str] | None = None  # a peer server's whole command line instead of mtserve serve


@dataclass
class Point:
    config: str
    concurrency: int
    report: dict[str, Any]  # mtserve bench --json

    @property
    def ok(self) -> bool:
        return self.report.get("ok", 0) > 0

    def latency(self, key: str) -> float:
        value = self.report.get("latency_ms", {}).get(key)
        return float("nan") if value is None else float(value)


def run_bench(target: str, inputs: Path, concurrency: int, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``mtserve bench --json`` run; its report (with the exit code)."""
    command = [*mtserve_command(), "bench", "--server", target, "--json", "-c", str(concurrency), "-n", str(requests),
               "-i", str(inputs), "--beam-size", str(args.beam_size), "--max-length", str(args.max_length),
               "--timeout", str(args.request_timeout)]
    from .multilingual_models import FAMILIES

    family = FAMILIES.get(str(args.model))
    if family is not None:  # a multilingual model: every batch mixes its target languages
        command += ["--source-language", family.source_language,
                    "--target-languages", ",".join(family.target_languages)]
    done = subprocess.run(command, capture_output=True, text=True)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"mtserve bench failed (exit {done.returncode}): {done.stderr.strip()[-300:]}") from None
    report["exit_code"] = done.returncode
    return report


def measure(model: Path, configs: Sequence[Config], concurrencies: Sequence[int], inputs: Path,
            args: argparse.Namespace) -> list[Point]:
    points: list[Point] = []
    for config in configs:
        log.info("starting the server: %s", config.name)
        with ServerProcess(model, config.server_args, threads=args.threads, command=config.command) as server:
            run_bench(server.target, inputs, 4, max(8, args.warmup), args)  # warm-up, not recorded
            for concurrency in concurrencies:
                requests = max(args.requests, concurrency)
                report = run_bench(server.target, inputs, concurrency, requests, args)
                point = Point(config.name, concurrency, report)
                points.append(point)
                log.info("%s c=%d: %.1f req/s, %.0f tokens/s, p50 %.0f ms, p99 %.0f ms, codes %s", config.name,
                         concurrency, report["requests_per_s"], report["generated_tokens_per_s"],
                         point.latency("p50"), point.latency("p99"), report["codes"])
    return points


def point_rows(points: Sequence[Point]) -> list[list[str]]:
    rows = []
    for p in points:
        r = p.report
        errors = sum(v for k, v in r["codes"].items() if k != "OK")
        rows.append([p.config, str(p.concurrency), str(r["requests"]), f"{r['requests_per_s']:.1f}",
                     f"{r['generated_tokens_per_s']:.0f}", f"{p.latency('p50'):.0f}", f"{p.latency('p99'):.0f}",
                     str(errors)])
    return rows


def comparison_rows(points: Sequence[Point], batched: str, unbatched: str) -> list[list[str]]:
    """Per concurrency: batched/unbatched throughput and the two p99s (issue 3/5: ≥ 4× at a lower p99)."""
    by_key = {(p.config, p.concurrency): p for p in points}
    rows = []
    for concurrency in sorted({p.concurrency for p in points}):
        a, b = by_key.get((batched, concurrency)), by_key.get((unbatched, concurrency))
        if a is None or b is None or not a.ok or not b.ok:
            continue
        ratio = a.report["requests_per_s"] / b.report["requests_per_s"]
        p99a, p99b = a.latency("p99"), b.latency("p99")
        verdict = "yes" if ratio >= 4 and p99a < p99b else "no"
        rows.append([str(concurrency), f"{ratio:.2f}×", f"{p99a:.0f}", f"{p99b:.0f}", verdict])
    return rows


def render(points: Sequence[Point], device: Device, settings: dict[str, Any], notes: Sequence[str],
           configs: Sequence[Config], title: str) -> str:
    batched, unbatched = configs[0].name, configs[1].name
    return "\n".join([
        f"# {title} ({device.tag})",
        "",
        f"Device: {device.line()}",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "",
        *[f"- {note}" for note in notes],
        "",
        markdown_table(["server", "concurrency", "requests", "requests/s", "tokens/s", "p50 ms", "p99 ms", "errors"],
                       point_rows(points)),
        "",
        "Continuous batching vs one text at a time (target: ≥ 4× the throughput at a lower p99):",
        "",
        markdown_table(["concurrency", f"throughput {batched} / {unbatched}", f"p99 ms {batched}",
                        f"p99 ms {unbatched}", "target met"], comparison_rows(points, batched, unbatched)),
        *_peer_section(points, batched, configs),
    ]) + "\n"


def _peer_section(points: Sequence[Point], batched: str, configs: Sequence[Config]) -> list[str]:
    """mtserve against the CTranslate2 peer (issue 13: p99 lower at every concurrency, throughput ≥ 1.5× from
    16 up)."""
    peers = [c.name for c in configs if c.command is not None]
    if not peers:
        return []
    by_key = {(p.config, p.concurrency): p for p in points}
    rows = []
    for concurrency in sorted({p.concurrency for p in points}):
        ours, peer = by_key.get((batched, concurrency)), by_key.get((peers[0], concurrency))
        if ours is None or peer is None or not ours.ok or not peer.ok:
            continue
        ratio = ours.report["requests_per_s"] / peer.report["requests_per_s"]
        p99_ours, p99_peer = ours.latency("p99"), peer.latency("p99")
        met = p99_ours < p99_peer and (ratio >= 1.5 or concurrency < 16)
        rows.append([str(concurrency), f"{ratio:.2f}×", f"{p99_ours:.0f}", f"{p99_peer:.0f}", "yes" if met else "no"])
    return ["", f"mtserve ({batched}) against {peers[0]} (target: lower p99 everywhere, ≥ 1.5× throughput from 16 "
            "concurrent requests up):", "",
            markdown_table(["concurrency", "throughput mtserve / peer", "p99 ms mtserve", "p99 ms peer", "target met"],
                           rows)]


def resolve_model(path: Path | None, threads: int) -> tuple[Path, str]:
    """--model, else model/default, else the offline benchmark's random base model (built if needed).
    --model nllb / m2m100: the offline benchmark's random model of that family."""
    from .models import default_model, random_model, resolve_vocab
    from .multilingual_models import FAMILIES, multilingual_model

    if path is not None and str(path) in FAMILIES:
        from .common import set_torch_threads

        set_torch_threads(threads)
        texts, _ = load_sentences(32)
        spec = multilingual_model(str(path), texts)
        return spec.path, f"{spec.name} ({spec.note})"
    if path is not None:
        return path, str(path)
    spec = default_model()
    if spec is None:
        from mtserve.model.tokenizers import MarianTokenizer

        from .common import set_torch_threads

        set_torch_threads(threads)
        vocab_dir, _ = resolve_vocab()
        texts, _ = load_sentences(32)
        spec = random_model(MarianTokenizer.from_dir(vocab_dir).encode_batch(texts))
        return spec.path, f"{spec.name} ({spec.note}; model/default is absent)"
    return spec.path, spec.note


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="model directory (default: model/default, else the random base model); "
                                              "nllb or m2m100: the random model of that family, its target "
                                              "languages mixed in every batch")
    p.add_argument("--quick", action="store_true", help="concurrency 32 only, both configs (issue 3's check)")
    p.add_argument("--ct2-peer", action="store_true",
                   help="also the CTranslate2 peer (benchmarks/ct2_server.py) on the same proto and model")
    p.add_argument("--peer-window-ms", type=float, default=5.0, help="the peer's batching window (%(default)s)")
    p.add_argument("--peer-max-batch", type=int, default=32, help="the peer's batch size (%(default)s)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64, 256], help="(%(default)s)")
    p.add_argument("--requests", "-n", type=int, default=256,
                   help="requests per point, at least the concurrency (%(default)s)")
    p.add_argument("--sentences", type=int, default=500, help="distinct input sentences, cycled (%(default)s)")
    p.add_argument("--beam-size", type=int, default=1,
                   help="beam of every request (%(default)s); the unbatched server gets --max-batch-rows = beam")
    p.add_argument("--max-length", type=int, default=128, help="(%(default)s)")
    p.add_argument("--max-batch-rows", type=int, default=None,
                   help="the batched server's --max-batch-rows (default: the server's own default)")
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: all cores)")
    p.add_argument("--device", default="auto", help="the server's --device (%(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="the batched server runs with --compile on (its graphs compile before it serves)")
    p.add_argument("--warmup", type=int, default=16, help="requests sent before measuring (%(default)s)")
    p.add_argument("--request-timeout", type=float, default=900.0, help="deadline of each request, s (%(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threads = args.threads or default_threads()
    device = detect_device(threads, cpu_only=args.device == "cpu")
    model, model_note = resolve_model(args.model, threads)
    concurrencies = [32] if args.quick else args.concurrency
    common = ["--device", args.device]
    batched_args = [*common, *(["--max-batch-rows", str(args.max_batch_rows)] if args.max_batch_rows else []),
                    *(["--compile", "on"] if args.compile else [])]
    configs = [Config("batched" + (f" (max-batch-rows {args.max_batch_rows})" if args.max_batch_rows else "")
                      + (", compiled" if args.compile else ""), batched_args),
               Config(f"max-batch-rows {args.beam_size}", [*common, "--max-batch-rows", str(args.beam_size)])]
    if args.ct2_peer:
        configs.append(Config(
            f"ctranslate2 peer (window {args.peer_window_ms:g} ms, batch {args.peer_max_batch})", [],
            [sys.executable, "-m", "benchmarks.ct2_server", "--model", str(model), "--threads", str(threads),
             "--window-ms", str(args.peer_window_ms), "--max-batch", str(args.peer_max_batch)]))
    texts, origin = load_sentences(args.sentences)
    notes = [f"model: {model_note}", f"inputs: {len(texts)} single-sentence requests from {origin}, cycled",
             "client: mtserve bench (closed loop) on the same machine; latency of OK requests",
             "tokens: generated tokens (server's count)"]
    settings = {"code": git_revision(), "beam": args.beam_size, "max length": args.max_length,
                "requests per point": args.requests, "server threads": threads}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write("\n".join(texts) + "\n")
        inputs = Path(f.name)
    try:
        points = measure(model, configs, concurrencies, inputs, args)
    finally:
        inputs.unlink(missing_ok=True)
    title = "Serving, quick check at concurrency 32" if args.quick else "Serving throughput and latency"
    report = render(points, device, settings, notes, configs, title)
    print(report)
    from .multilingual_models import FAMILIES

    family = f"-{args.model}" if str(args.model) in FAMILIES else ""
    peer = f"-ct2-peer-{'greedy' if args.beam_size == 1 else f'beam{args.beam_size}'}" if args.ct2_peer else ""
    stem = args.out / f"{device.tag}-serving{family}{peer}{'-quick' if args.quick else ''}"
    write_results(stem, report, {
        "device": device.record(), "settings": settings, "notes": notes,
        "configs": [c.__dict__ for c in configs],
        "points": [{"config": p.config, "concurrency": p.concurrency, **p.report} for p in points],
    })
    from .plots import throughput_latency

    series: dict[str, list[tuple[float, float, int]]] = {}
    for p in points:
        if p.ok:
            series.setdefault(p.config, []).append((p.latency("p99"), p.report["requests_per_s"], p.concurrency))
    throughput_latency(stem.with_suffix(".png"), f"mtserve serving, {device.tag}: throughput vs p99", series)
    log.info("wrote %s.{md,json,png}", stem)
    return 0 if all(p.report["exit_code"] == 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
