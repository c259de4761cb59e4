"""The output layer's share of a decoder step, at the published shapes of the multilingual models.

    python -m benchmarks.output_layer [--models nllb-600M m2m100-418M] [--rows 1 32 128] [--threads N]

NLLB-200 (256,206 pieces) and M2M100 (128,112) have vocabularies 4-8x OPUS-MT's, so the output
projection (d_model × vocabulary) dominates a decoder step. For each shape a model with random
weights (the cost of a step does not depend on the values) is built the way the server builds one
(packed CPU layers, folded logits bias) and two things are timed at each batch size, median of
``--steps`` runs after a warm-up: ``decode_step`` (the whole model step) and the output projection
alone on the same hidden states; their ratio is the share. ``--subset`` fractions also time the
projection over that fraction of the vocabulary's rows (gathered once beforehand), which is what
restricting the output layer to a target language's pieces would cost, and ``--shortlist`` sizes the whole
step with a vocabulary shortlist of that many pieces (model/shortlist.py: the projection over those rows,
scattered into the full logits). ``--models opus-mt`` is an OPUS-MT model's shape (58,101 pieces). Results go to
benchmarks/results/<device>-output-layer.{md,json}.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (
    RESULTS,
    default_threads,
    detect_device,
    git_revision,
    markdown_table,
    set_torch_threads,
    write_results,
)
from .step import timed

log = logging.getLogger("benchmarks.output_layer")

# The published configs (model-families.md, section 6): layers, d_model, heads, ffn, vocabulary.
SHAPES: dict[str, dict[str, Any]] = {
    "nllb-600M": {"model_type": "m2m_100", "layers": 12, "d_model": 1024, "heads": 16, "ffn": 4096, "vocab": 256206},
    "m2m100-418M": {"model_type": "m2m_100", "layers": 12, "d_model": 1024, "heads": 16, "ffn": 4096,
                    "vocab": 128112},
    "nllb-1.3B": {"model_type": "m2m_100", "layers": 24, "d_model": 1024, "heads": 16, "ffn": 8192, "vocab": 256206},
    "mbart50": {"model_type": "mbart", "layers": 12, "d_model": 1024, "heads": 16, "ffn": 4096, "vocab": 250054},
    # Helsinki-NLP/opus-mt-de-en: transformer-base, a 58,101-piece shared vocabulary.
    "opus-mt": {"model_type": "marian", "layers": 6, "d_model": 512, "heads": 8, "ffn": 2048, "vocab": 58101},
}


def build(shape: dict[str, Any], device: str, dtype: str) -> Any:
    import torch

    from mtserve.model.checkpoint import resolve_dtype
    from mtserve.model.config import ModelConfig
    from mtserve.model.cpu_linear import fold_logits_bias, pack_linears
    from mtserve.model.transformer import Transformer

    config = ModelConfig.from_dict({
        "model_type": shape["model_type"], "vocab_size": shape["vocab"], "d_model": shape["d_model"],
        "encoder_layers": shape["layers"], "decoder_layers": shape["layers"],
        "encoder_attention_heads": shape["heads"], "decoder_attention_heads": shape["heads"],
        "encoder_ffn_dim": shape["ffn"], "decoder_ffn_dim": shape["ffn"], "dropout": 0.0,
    })  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(config).eval().to(resolve_dtype(dtype, torch.device(device)))
    model.fuse_projections()
    model.keep_output_weight()  # a shortlist reads its rows (as Translator.load(shortlist=True) keeps them)
    if model.device.type == "cpu" and model.dtype == torch.float32 and pack_linears(model):
        fold_logits_bias(model)
    return model


def _median(fn: Callable[[], Any], device: str, steps: int) -> float:
    for _ in range(3):
        timed(fn, device)
    return statistics.median(timed(fn, device) for _ in range(steps))


def measure(model: Any, rows: int, subsets: Sequence[float], steps: int, position: int = 16,
            source_length: int = 24, shortlists: Sequence[int] = ()) -> dict[str, float]:
    import torch

    device = model.device
    config = model.config
    cache = model.new_cache(rows, initial_length=max(position + 2, source_length))
    with torch.inference_mode():
        memory = torch.randn(rows, source_length, config.d_model, device=device, dtype=model.dtype)
        model.fill_cross_attention(cache, torch.arange(rows, device=device), memory,
                                   torch.full((rows,), source_length, device=device))
        tokens = torch.randint(4, 1000, (rows,), device=device)
        positions = torch.full((rows,), position, device=device)
        hidden = torch.randn(rows, config.d_model, device=device, dtype=model.dtype)
        step = _median(lambda: model.decode_step(tokens, positions, cache, position + 1, source_length),
                       device.type, steps)
        output = _median(lambda: model._logits(hidden), device.type, steps)
        result = {"rows": rows, "step_s": step, "output_s": output, "share": output / step}
        for fraction in subsets:
            # The projection onto that many rows, built (and packed) as the full one is.
            head = _like(model.lm_head, int(config.target_vocab_size * fraction), config.d_model, model)
            result[f"subset_{fraction:g}_s"] = _median(lambda h=head: h(hidden).float(), device.type, steps)
        for size in shortlists:
            # The whole step with a vocabulary shortlist of that many pieces (model/shortlist.py): the output
            # layer over those rows, then scattered into the full vocabulary's logits.
            vocabulary = torch.randperm(config.target_vocab_size, generator=torch.Generator().manual_seed(size))
            vocabulary = vocabulary[:size].sort().values.to(device)
            result[f"shortlist_{size}_s"] = _median(
                lambda v=vocabulary: model.decode_step(tokens, positions, cache, position + 1, source_length,
                                                       vocabulary=v), device.type, steps)
        return result


def _like(head: Any, rows: int, d_model: int, model: Any) -> Any:
    import torch

    from mtserve.model.cpu_linear import CpuLinear

    linear = torch.nn.Linear(d_model, rows, device=model.device, dtype=model.dtype)
    return type(head)(linear) if isinstance(head, CpuLinear) else linear


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.output_layer", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["nllb-600M", "m2m100-418M"], choices=sorted(SHAPES))
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32, 128],
                   help="batch rows: 1 text, 32 greedy texts, 32 texts at beam 4 (%(default)s)")
    p.add_argument("--subset", type=float, nargs="*", default=[0.5, 0.25],
                   help="vocabulary fractions to time the output layer over (%(default)s)")
    p.add_argument("--shortlist", type=int, nargs="*", default=[2000, 4000],
                   help="shortlist sizes to time the whole step with (%(default)s pieces)")
    p.add_argument("--steps", type=int, default=20, help="timed runs; the median counts (%(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, float16 on CUDA), or a dtype")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threads = args.threads or default_threads()
    set_torch_threads(threads)
    device = detect_device(threads, cpu_only=args.cpu)
    rows_out: list[list[str]] = []
    measurements: list[dict[str, Any]] = []
    for name in args.models:
        model = build(SHAPES[name], device.kind, args.dtype)
        for rows in args.rows:
            m = measure(model, rows, args.subset, args.steps, shortlists=args.shortlist)
            m["model"] = name
            measurements.append(m)
            subsets = [f"{m[f'subset_{f:g}_s'] * 1e3:.1f} ({m['output_s'] / m[f'subset_{f:g}_s']:.1f}×)"
                       for f in args.subset if f"subset_{f:g}_s" in m]
            subsets += [f"{m[f'shortlist_{k}_s'] * 1e3:.1f} ({m['step_s'] / m[f'shortlist_{k}_s']:.2f}×)"
                        for k in args.shortlist]
            rows_out.append([name, str(rows), f"{m['step_s'] * 1e3:.1f}", f"{m['output_s'] * 1e3:.1f}",
                             f"{100 * m['share']:.0f}%", *subsets])
            log.info("%s rows %d: step %.1f ms, output layer %.1f ms (%.0f%%)", name, rows, m["step_s"] * 1e3,
                     m["output_s"] * 1e3, 100 * m["share"])
        del model
    headers = ["model", "rows", "decoder step ms", "output layer ms", "share",
               *(f"output layer over {100 * f:g}% of the vocabulary, ms" for f in args.subset),
               *(f"step with a shortlist of {k} pieces, ms" for k in args.shortlist)]
    report = "\n".join([
        f"# The output layer's share of a decoder step ({device.tag})", "",
        f"Device: {device.line()}", "",
        f"Settings: code {git_revision()}, dtype {args.dtype}, threads {threads}, position 16, source 24 tokens, "
        f"median of {args.steps} runs; random weights at the published shapes", "",
        markdown_table(headers, rows_out), "",
    ])
    print(report)
    write_results(args.out / f"{device.tag}-output-layer", report,
                  {"device": device.record(), "measurements": measurements})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
