"""One decoder step at batch 1 against its memory-bandwidth floor (issue 5's GPU target; the CPU too).

    python -m benchmarks.step [--models base default] [--threads N] [--cpu] [--position 16]

At batch 1 a decoder step reads every weight it uses once (self-attention q/k/v/out, cross-attention
q/out, the feed-forward layers, the norms and the output projection over the whole vocabulary) and
few other bytes (this text's cached keys/values). No implementation can take less than
``bytes read / memory bandwidth``. The harness measures the device's bandwidth (a large copy, bytes
read plus written), counts the bytes, and times

- ``decode_step``: the model's cached step alone (what CUDA graphs or torch.compile would capture), and
- ``EngineCore.step``: the whole step a server runs (scheduling, log-softmax, search, bookkeeping),

each the median of ``--steps`` runs at one position after a warm-up. Results go to
benchmarks/results/<device>-step.{md,json}.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    default_threads,
    detect_device,
    git_revision,
    load_sentences,
    markdown_table,
    set_torch_threads,
    write_results,
)
from .models import default_model, random_model, resolve_vocab

log = logging.getLogger("benchmarks.step")


def bandwidth(device: str, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large copy on `device`, counting what is read and what is written."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        times.append(timed(lambda: dst.copy_(src), device))
    return 2 * src.numel() * 4 / statistics.median(times[1:])


def step_bytes(config: Any, element_size: int, source_length: int, position: int) -> int:
    """Bytes one batch-1 decoder step must read: the weights it uses and this text's cached K/V.

    Counted from the architecture, so that packed or quantized layers (whose weights are not module
    parameters) count the same as plain ones.
    """
    d, ffn = config.d_model, config.decoder_ffn_dim
    per_layer = (
        4 * d * d + 4 * d  # self-attention q, k, v, out
        + 2 * d * d + 2 * d  # cross-attention q, out (its k, v are projected once per text, at admission)
        + 2 * d * ffn + ffn + d  # feed-forward
        + 3 * 2 * d  # three layer norms
    )
    output = config.target_vocab_size * (d + 1)  # the output projection and final_logits_bias
    cache = 2 * (position + 1 + source_length) * d  # this text's keys and values, per layer
    return element_size * (config.decoder_layers * (per_layer + cache) + output)


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds `fn` takes, the device's queued work included."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(model_dir: Path, device: str, source_length: int, position: int, steps: int,
            compiled: bool = False) -> dict[str, float]:
    """Median seconds of decode_step and of EngineCore.step for one text at `position` (and with `compiled`,
    of the compiled step: model/compiled_step.py, CUDA graphs on CUDA)."""
    import torch

    from mtserve.engine import Translator
    from mtserve.engine.batch import NewText
    from mtserve.engine.core import EngineCore
    from mtserve.engine.scheduler import Request, Scheduler, Text
    from mtserve.model.options import SearchOptions

    translator = Translator.load(model_dir, device=device, dtype="float16" if device == "cuda" else "float32")
    model = translator.model
    config = model.config
    source = [5 + i % 100 for i in range(source_length - 1)] + [config.eos_token_id]
    core = EngineCore(model, Scheduler(1, source_length, 1), name="step")
    # min_length keeps the text running up to the position measured (the model may want to stop earlier).
    options = SearchOptions(max_length=position + steps + 8, min_length=position + steps + 4)
    core.submit(Request("text", [Text("text", 1, len(source), options.max_length, work=NewText(source, options))],
                        arrival_time=0.0))
    for _ in range(position):
        core.step()
    tokens = torch.tensor([core.batch.slots[0].search.prefixes()[0][-1]], device=device)
    positions = torch.tensor([position], device=device)
    with torch.inference_mode():
        def one_step() -> None:  # rewrites the same cache position each time: the same work every run
            model.decode_step(tokens, positions, core.batch.cache, position + 1, source_length)

        for _ in range(5):
            one_step()
        model_times = [timed(one_step, device) for _ in range(steps)]
    # The whole step moves on one position each time; a few positions apart cost the same.
    full_times = [timed(core.step, device) for _ in range(steps)]
    compiled_seconds = None
    if compiled:
        compiled_model = Translator.load(model_dir, device=device, dtype=translator.dtype, compile="on").model
        step = compiled_model.compiled_step
        cache = core.batch.cache  # the same cache: the same text's keys and values
        with torch.inference_mode():
            def one_compiled() -> None:
                step(tokens, positions, cache, position + 1, source_length, 1, config.pad_token_id)

            for _ in range(5):
                one_compiled()
            compiled_seconds = statistics.median(timed(one_compiled, device) for _ in range(steps))
    return {
        "compiled_step": compiled_seconds,
        "decode_step": statistics.median(model_times),
        "engine_step": statistics.median(full_times),
        "bytes": float(step_bytes(config, model.dtype.itemsize, source_length, position)),
        "parameters": translator.num_parameters,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["base", "default"], choices=["base", "default"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    p.add_argument("--source-length", type=int, default=20, help="source tokens of the text (%(default)s)")
    p.add_argument("--position", type=int, default=16, help="target position measured (%(default)s)")
    p.add_argument("--steps", type=int, default=200, help="timed steps; the median counts (%(default)s)")
    p.add_argument("--compiled", action="store_true", help="also the compiled step (torch.compile; CUDA graphs)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    threads = args.threads or default_threads()
    set_torch_threads(threads)
    device = detect_device(threads, cpu_only=args.cpu)
    rate = bandwidth(device.kind)
    log.info("measured bandwidth: %.1f GB/s", rate / 1e9)
    specs = []
    if "base" in args.models:  # the offline benchmark's random base model (built and calibrated once, cached)
        from mtserve.model.tokenizers import MarianTokenizer

        vocab_dir, _ = resolve_vocab()
        texts, _ = load_sentences(32)
        specs.append(random_model(MarianTokenizer.from_dir(vocab_dir).encode_batch(texts), "base"))
    if "default" in args.models and (spec := default_model()) is not None:
        specs.append(spec)
    rows, results = [], []
    for spec in specs:
        m = measure(spec.path, device.kind, args.source_length, args.position, args.steps, args.compiled)
        floor = m["bytes"] / rate
        results.append({"model": spec.name, **m, "floor": floor})
        compiled = ([f"{m['compiled_step'] * 1e3:.3f}", f"{m['compiled_step'] / floor:.1f}×"]
                    if m["compiled_step"] is not None else ["–", "–"])
        rows.append([spec.name, f"{m['parameters'] / 1e6:.1f}M", f"{m['bytes'] / 2**20:.1f}",
                     f"{floor * 1e3:.3f}", f"{m['decode_step'] * 1e3:.3f}", f"{m['decode_step'] / floor:.1f}×",
                     f"{m['engine_step'] * 1e3:.3f}", f"{m['engine_step'] / floor:.1f}×", *compiled])
    table = markdown_table(["model", "parameters", "MiB read per step", "floor ms", "decode_step ms",
                            "× floor", "whole step ms", "× floor", "compiled step ms", "× floor"], rows)
    report = "\n".join([
        f"# Batch-1 decoder step vs the memory-bandwidth floor ({device.tag})", "",
        f"Device: {device.line()}", "",
        f"Settings: code {git_revision()}, source {args.source_length} tokens, position {args.position}, "
        f"median of {args.steps} steps; measured bandwidth {rate / 1e9:.1f} GB/s (copy, read + write)", "",
        table, "",
        "Issue 13's GPU target: the batch-1 step within 3× of its floor (the compiled step: CUDA graphs).", ""])
    print(report)
    write_results(args.out / f"{device.tag}-step", report,
                  {"device": device.line(), "bandwidth": rate, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
