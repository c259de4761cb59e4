"""Offline throughput: mtserve's Translator, Transformers' generate and CTranslate2 on the same weights.

    python -m benchmarks.offline [--sentences 500] [--repeats 3] [--threads N] [--beams 4 1]

For each model (the random transformer-base model the harness builds, model/default when it
exists, and with ``--models nllb m2m100`` random models of those families' shapes, their texts' target
languages mixed), each decoding (beam 4, greedy) and each engine: a fresh process loads the model, warms up on
a few sentences, and decodes all sentences in batches of 32; the rounds of engines are interleaved
(round 1: A B C, round 2: A B C, ...) so that a machine whose load drifts penalises none of them.
Reported: target tokens per second of the median round, peak RSS (and GPU memory), and how often the
engines' outputs are token-identical. Results go to benchmarks/results/<device>-offline.{md,json,png}
(<device>-offline-early-stopping.* with --early-stopping; -offline-multilingual* for the NLLB/M2M100 runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from .common import (
    REPO,
    RESULTS,
    Device,
    default_threads,
    detect_device,
    git_revision,
    load_sentences,
    markdown_table,
    write_results,
)
from .engines import DEFAULT_ENGINES, ENGINES
from .models import SHAPES, ModelSpec, ct2_model, default_model, random_model, resolve_vocab
from .multilingual_models import FAMILIES, multilingual_model

log = logging.getLogger("benchmarks.offline")


@dataclass
class Measurement:
    """One engine on one model with one decoding, over all rounds."""

    model: str
    beam_size: int
    engine: str
    seconds: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    tokens: int = 0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    outputs: list[list[int]] = field(default_factory=list, repr=False)
    error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.seconds) if self.seconds else 0.0

    def add(self, result: dict[str, Any]) -> None:
        self.seconds += result["seconds"]
        self.load_s.append(result["load_s"])
        self.tokens = result["tokens"]
        self.outputs = result["outputs"]
        self.peak_rss_mib = max(self.peak_rss_mib, result["peak_rss_mib"])
        if result["peak_gpu_mib"] is not None:
            self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, result["peak_gpu_mib"])


def decoding_name(beam_size: int) -> str:
    return "greedy" if beam_size == 1 else f"beam {beam_size}"


def run_worker(job: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """One engine in a subprocess (see benchmarks/worker.py); raises RuntimeError with its stderr tail."""
    with tempfile.TemporaryDirectory(prefix="mtserve-bench-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(job_file), str(result_file)],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"exit {done.returncode}")
        return json.loads(result_file.read_text(encoding="utf-8"))


def measure_model(
    spec: ModelSpec, texts: Sequence[str], args: argparse.Namespace, device: Device
) -> list[Measurement]:
    """Every decoding × engine on one model, rounds interleaved."""
    sources, prefixes = spec.sources_and_prefixes(texts)
    # The forced language token counts as a generated token: one more before </s>, as in all three engines.
    min_length = args.min_length + (1 if prefixes else 0)
    ct2_dir = str(ct2_model(spec)) if any(e.startswith("ctranslate2") for e in args.engines) else None
    measurements: list[Measurement] = []
    for beam_size in args.beams:
        current = {engine: Measurement(spec.name, beam_size, engine) for engine in args.engines}
        for round_ in range(args.repeats):
            for engine, m in current.items():
                if m.error:
                    continue
                job = {"engine": engine, "model_dir": str(spec.path), "ct2_dir": ct2_dir, "device": device.kind,
                       "threads": device.threads, "beam_size": beam_size, "max_length": args.max_length,
                       "min_length": min_length, "batch_size": args.batch_size, "repeats": 1, "prefixes": prefixes,
                       "early_stopping": args.early_stopping,
                       "warmup": args.warmup, "sources": sources}
                started = time.perf_counter()
                try:
                    m.add(run_worker(job, args.timeout))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    m.error = str(exc)[:200]
                    log.error("%s %s %s: %s", spec.name, decoding_name(beam_size), engine, m.error)
                    continue
                log.info("%s %s round %d %s: %.0f tokens/s (%.1fs with load)", spec.name, decoding_name(beam_size),
                         round_ + 1, engine, m.tokens / m.seconds[-1], time.perf_counter() - started)
        measurements += current.values()
    return measurements


def engine_pairs(measurements: Sequence[Measurement]) -> list[tuple[str, str]]:
    """The pairs of engines that were run, in ENGINES order."""
    ran = {m.engine for m in measurements}
    return list(combinations([e for e in ENGINES if e in ran], 2))


def agreement(measurements: Sequence[Measurement]) -> list[list[str]]:
    """Rows ``model, decoding, a = b ...``: sentences whose outputs are token-identical, per engine pair."""
    rows: list[list[str]] = []
    keys = sorted({(m.model, m.beam_size) for m in measurements}, key=lambda k: (k[0], -k[1]))
    for model, beam in keys:
        group = {m.engine: m for m in measurements if (m.model, m.beam_size) == (model, beam) and not m.error}
        row = [model, decoding_name(beam)]
        for a, b in engine_pairs(measurements):
            if a in group and b in group:
                same = sum(x == y for x, y in zip(group[a].outputs, group[b].outputs, strict=True))
                total = len(group[a].outputs)
                row.append(f"{same}/{total} ({100 * same / max(1, total):.1f}%)")
            else:
                row.append("–")
        rows.append(row)
    return rows


def throughput_rows(measurements: Sequence[Measurement], sentences: int, gpu: bool) -> list[list[str]]:
    rows = []
    for m in measurements:
        if m.error:
            rows.append([m.model, decoding_name(m.beam_size), m.engine, f"failed: {m.error}"] + [""] * (7 + gpu))
            continue
        peers = {p.engine: p.tokens_per_s for p in measurements
                 if (p.model, p.beam_size) == (m.model, m.beam_size) and not p.error}
        ratio = [f"{m.tokens_per_s / peers[e]:.2f}×" if peers.get(e) else "–"
                 for e in ("transformers", ct2_peer(m.engine))]
        median = statistics.median(m.seconds)
        rows.append([
            m.model, decoding_name(m.beam_size), m.engine, f"{m.tokens_per_s:.0f}", *ratio,
            f"{sentences / median:.1f}", f"{m.tokens / max(1, sentences):.1f}", f"{m.peak_rss_mib:.0f}",
            *([f"{m.peak_gpu_mib:.0f}" if m.peak_gpu_mib is not None else "–"] if gpu else []),
            " ".join(f"{s:.1f}" for s in m.seconds),
        ])
    return rows


def ct2_peer(engine: str) -> str:
    """The CTranslate2 engine an engine is compared with, like for like: int8 with CTranslate2's int8."""
    return "ctranslate2-int8" if engine.endswith("int8") else "ctranslate2"


def target_lines(measurements: Sequence[Measurement]) -> list[str]:
    """Issue 13's offline targets, met or missed: mtserve ≥ 1.0× CTranslate2 at the same precision, every
    model and decoding."""
    lines = []
    for m in measurements:
        peer = next((p for p in measurements if (p.model, p.beam_size, p.engine) == (m.model, m.beam_size,
                                                                                     ct2_peer(m.engine))), None)
        if not m.engine.startswith("mtserve") or peer is None or m.error or peer.error or not peer.tokens_per_s:
            continue
        ratio = m.tokens_per_s / peer.tokens_per_s
        verdict = "met" if ratio >= 1.0 else f"missed by {100 * (1 - ratio):.0f}%"
        lines.append(f"- {m.engine} vs {peer.engine}, {m.model} {decoding_name(m.beam_size)}: {ratio:.2f}× "
                     f"(target ≥ 1.0×: {verdict})")
    return lines


def render(
    measurements: Sequence[Measurement], device: Device, settings: dict[str, Any], notes: Sequence[str]
) -> str:
    gpu = device.kind == "cuda"
    headers = ["model", "decoding", "engine", "tokens/s", "× Transformers", "× CTranslate2 (same precision)",
               "sentences/s", "tokens/sentence", "peak RSS MiB", *(["peak GPU MiB"] if gpu else []), "rounds (s)"]
    parts = [
        f"# Offline throughput ({device.tag})",
        "",
        f"Device: {device.line()}",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "",
        *[f"- {note}" for note in notes],
        "",
        markdown_table(headers, throughput_rows(measurements, settings["sentences"], gpu)),
        "",
        "Token-identical outputs per engine pair:",
        "",
        markdown_table(["model", "decoding", *(f"{a} = {b}" for a, b in engine_pairs(measurements))],
                       agreement(measurements)),
    ]
    targets = target_lines(measurements)
    if targets:
        parts += ["", "Issue 13 targets:", "", *targets]
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.offline", description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=500, help="source sentences (%(default)s)")
    p.add_argument("--repeats", "-R", type=int, default=3, help="timed rounds per engine; the median counts")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of every engine (default: all cores)")
    p.add_argument("--beams", type=int, nargs="+", default=[4, 1], help="beam sizes, 1 = greedy (%(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(%(default)s)")
    p.add_argument("--max-length", type=int, default=128, help="generated tokens, </s> included (%(default)s)")
    p.add_argument("--min-length", type=int, default=1,
                   help="tokens before </s> at least (%(default)s: no empty outputs, as the random model could give)")
    p.add_argument("--warmup", type=int, default=8, help="sentences decoded before timing (%(default)s)")
    p.add_argument("--models", nargs="+", default=["base", "default"], choices=["base", "default", *FAMILIES],
                   help="the random base-size Marian model, the bundled model, random NLLB-/M2M100-shaped models "
                        "(%(default)s)")
    p.add_argument("--shape", default="base", choices=sorted(SHAPES),
                   help="size of the random model (tiny: a smoke run)")
    p.add_argument("--early-stopping", action="store_true",
                   help="beam search stops once beam-size hypotheses finished (CTranslate2 always does)")
    p.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES), choices=ENGINES,
                   help="(default: %(default)s; mtserve-int8 = mtserve with --quantize int8, CPU only)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one engine process may take")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .common import set_torch_threads

    threads = args.threads or default_threads()
    set_torch_threads(threads)  # for building the random model
    device = detect_device(threads, cpu_only=args.cpu)
    texts, origin = load_sentences(args.sentences)
    notes = [f"inputs: {len(texts)} texts from {origin}",
             "tokens: generated target tokens without </s>; tokens/s of the median round, after a warm-up"]
    specs: list[ModelSpec] = []
    if "base" in args.models:
        from mtserve.model.tokenizers import MarianTokenizer

        vocab_dir, _ = resolve_vocab()
        calibration = MarianTokenizer.from_dir(vocab_dir).encode_batch(texts[:32])
        specs.append(random_model(calibration, args.shape))
    for family in FAMILIES:
        if family in args.models:
            specs.append(multilingual_model(family, texts, args.shape))
    if "default" in args.models:
        spec = default_model()
        if spec is None:
            notes.append("model/default is absent (not trained yet): skipped")
        else:
            specs.append(spec)
    notes += [f"{s.name}: {s.note}" for s in specs]
    for note in notes:
        log.info("%s", note)
    measurements: list[Measurement] = []
    for spec in specs:
        measurements += measure_model(spec, texts, args, device)
    settings = {"code": git_revision(), "sentences": len(texts), "batch": args.batch_size,
                "max length": args.max_length, "min length": args.min_length,
                "early stopping": args.early_stopping, "rounds": args.repeats,
                "warm-up sentences": args.warmup, "threads": threads}
    report = render(measurements, device, settings, notes)
    print(report)
    # The like-for-like run (CTranslate2's stopping rule for everyone) is kept beside the default one.
    multilingual = "-multilingual" if set(args.models) <= set(FAMILIES) else ""
    stem = args.out / (f"{device.tag}-offline{multilingual}" + ("-early-stopping" if args.early_stopping else ""))
    write_results(stem, report, {
        "device": device.record(), "settings": settings, "notes": notes,
        "measurements": [{k: v for k, v in m.__dict__.items() if k != "outputs"} | {"tokens_per_s": m.tokens_per_s}
                         for m in measurements],
        "agreement": agreement(measurements),
    })
    from .plots import offline_bars

    groups: dict[str, dict[str, float]] = {}
    for m in measurements:
        if not m.error:
            groups.setdefault(f"{m.model}\n{decoding_name(m.beam_size)}", {})[m.engine] = m.tokens_per_s
    title = f"Offline target tokens/s, batch {args.batch_size}: {device.tag} ({device.gpu or device.cpu})"
    offline_bars(stem.with_suffix(".png"), title, groups)
    log.info("wrote %s.{md,json,png}", stem)
    return 0 if not any(m.error for m in measurements) else 1


if __name__ == "__main__":
    sys.exit(main())
