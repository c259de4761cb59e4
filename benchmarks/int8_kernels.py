"""The int8 matmul kernels torch ships, on the linear layers of the bundled and the base-sized model.

    python -m benchmarks.int8_kernels [--rows 1 32 128] [--threads N]

Issue 13 asks int8 to match CTranslate2's int8 "with the kernels torch ships, whichever measures best
here". Each kernel runs one linear layer y = x Wᵀ + b at the decoder's shapes (rows: one text, 32 greedy
texts, 32 texts at beam 4), median of ``--steps`` runs, against float32 as mtserve serves it (the packed
layer of model/cpu_linear.py):

- ``dynamic``: torch.ao's dynamically quantized linear (FBGEMM; int8 weights per output channel, the
  activations quantized per call): what ``--quantize int8`` uses.
- ``int_mm``: ``torch._int_mm`` (int8 × int8 → int32) with the activations quantized per row in torch ops
  and the product rescaled; int8 weights per output channel.
- ``weight_int8``: ``torch._weight_int8pack_mm``: int8 weights, float32 activations (CTranslate2's
  "int8_float32" is the quantized-activation kind; this is the weight-only one).
- ``onednn``: oneDNN's ``qlinear_pointwise`` (AMX/VNNI int8 where the CPU has them) on a prepacked int8
  weight, the activations quantized per tensor.

The error column is the largest absolute difference from float32 over the output, relative to the
output's largest magnitude. Results go to benchmarks/results/<device>-int8-kernels.{md,json}.

What it found (2-core Intel Xeon with AMX, one thread, `cpu-1threads-int8-kernels.md`): FBGEMM's dynamic
linear, which ``--quantize int8`` already uses, is the fastest below ~32 rows (1.3-5× float32);
``int_mm`` is slower than it everywhere; ``weight_int8`` is 4-50× slower than float32 (a kernel for
one-row GPU-style use); oneDNN is 1.6-10× float32 from 32 rows up (the output layer at 128 rows: 0.52
ms against FBGEMM's 1.37) but 5-7 ms at one row on some shapes. A layer that took oneDNN from 32 rows up
and FBGEMM below did *not* pay end to end (500 sentences, 1 thread, the same run, tokens/s): bundled
model beam 4 1,275 against FBGEMM alone 1,301, greedy 3,844 against 4,028; base-sized model 259 against
277 beam 4, 1,013 against 908 greedy. Measured alone the weights sit in cache; in a decoder step they do
not, and the per-call activation quantization adds operations to a step that is already short of them.
So ``--quantize int8`` stays on FBGEMM.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import warnings
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

log = logging.getLogger("benchmarks.int8_kernels")

#: (model, layer, in_features, out_features) of the decoder step's linear layers.
LAYERS: list[tuple[str, str, int, int]] = [
    ("bundled", "q/k/v (fused)", 256, 768),
    ("bundled", "ffn in", 256, 1024),
    ("bundled", "ffn out", 1024, 256),
    ("bundled", "output layer", 256, 8000),
    ("base", "q/k/v (fused)", 512, 1536),
    ("base", "ffn in", 512, 2048),
    ("base", "ffn out", 2048, 512),
    ("base", "output layer", 512, 8000),
]
KERNELS = ("dynamic", "int_mm", "weight_int8", "onednn")


def kernels(in_features: int, out_features: int) -> dict[str, Callable[[Any], Any]]:
    """Each kernel as a function of the input, for one random layer; a kernel this build lacks is left out."""
    import torch
    from torch import nn

    from mtserve.model.cpu_linear import pack_linears

    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    served = nn.Sequential(nn.Linear(in_features, out_features))
    served.load_state_dict({"0.weight": weight, "0.bias": bias})
    pack_linears(served)
    found: dict[str, Callable[[Any], Any]] = {"float32": served}

    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127  # per output channel
    quantized = torch.round(weight / scale).to(torch.int8)  # (out, in)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(in_features, out_features)), {nn.Linear}, dtype=torch.qint8)
        dynamic[0].set_weight_bias(torch.quantize_per_channel(weight, scale.view(-1).double(),
                                                              torch.zeros(out_features, dtype=torch.long), 0,
                                                              torch.qint8), bias)
    found["dynamic"] = dynamic

    transposed, row_scale = quantized.t().contiguous(), scale.view(1, -1)

    def int_mm(x: Any) -> Any:
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        x_q = torch.round(x / x_scale).to(torch.int8)
        return torch._int_mm(x_q, transposed).float() * (x_scale * row_scale) + bias

    found["int_mm"] = int_mm
    if hasattr(torch, "_weight_int8pack_mm"):
        scales = scale.view(-1).contiguous()
        found["weight_int8"] = lambda x: torch._weight_int8pack_mm(x, quantized, scales) + bias
    onednn = getattr(torch.ops, "onednn", None)
    if onednn is not None and hasattr(onednn, "qlinear_prepack") and hasattr(onednn, "qlinear_pointwise"):
        packed = onednn.qlinear_prepack(quantized, None)
        w_scales, w_zeros = scale.view(-1).float(), torch.zeros(out_features, dtype=torch.long)
        zero = torch.zeros((), dtype=torch.long)

        def onednn_linear(x: Any) -> Any:
            x_scale = (x.abs().amax() / 127).clamp_min(1e-12)
            x_q = torch.clamp(torch.round(x / x_scale), -128, 127).to(torch.int8)
            return onednn.qlinear_pointwise.tensor(x_q, x_scale, zero, packed, w_scales, w_zeros, bias, 1.0, 0,
                                                   torch.float32, "none", [], "")

        found["onednn"] = onednn_linear
    return found


def measure(in_features: int, out_features: int, rows: int, steps: int) -> dict[str, float]:
    """Median seconds of each kernel, and its relative error against float32."""
    import torch

    torch.manual_seed(1)
    x = torch.randn(rows, in_features)
    out: dict[str, float] = {}
    with torch.inference_mode():
        found = kernels(in_features, out_features)
        reference = found["float32"](x)
        magnitude = reference.abs().max().item()
        for name, fn in found.items():
            try:
                error = (fn(x) - reference).abs().max().item() / magnitude
                for _ in range(5):
                    fn(x)
                out[f"{name}_s"] = statistics.median(timed(lambda fn=fn: fn(x), "cpu") for _ in range(steps))
                out[f"{name}_error"] = error
            except RuntimeError as exc:  # a kernel this CPU or build cannot run
                log.warning("%s at %d rows, %d -> %d: %s", name, rows, in_features, out_features, exc)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32, 128],
                   help="batch rows: 1 text, 32 greedy texts, 32 texts at beam 4 (%(default)s)")
    p.add_argument("--steps", type=int, default=50, help="timed runs; the median counts (%(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threads = args.threads or default_threads()
    set_torch_threads(threads)
    device = detect_device(threads, cpu_only=True)
    table: list[list[str]] = []
    measurements: list[dict[str, Any]] = []
    for model, name, in_features, out_features in LAYERS:
        for rows in args.rows:
            m = measure(in_features, out_features, rows, args.steps)
            measurements.append({"model": model, "layer": name, "in": in_features, "out": out_features,
                                 "rows": rows, **m})
            cells = [f"{m[f'{k}_s'] * 1e3:.3f} ({m['float32_s'] / m[f'{k}_s']:.2f}×, {m[f'{k}_error']:.1%})"
                     if f"{k}_s" in m else "–" for k in KERNELS]
            table.append([model, name, f"{in_features} → {out_features}", str(rows),
                          f"{m['float32_s'] * 1e3:.3f}", *cells])
    headers = ["model", "layer", "shape", "rows", "float32 (packed) ms",
               *(f"{k} ms (× float32, error)" for k in KERNELS)]
    report = "\n".join([
        f"# int8 matmul kernels on the decoder's linear layers ({device.tag})", "",
        f"Device: {device.line()}", "",
        f"Settings: code {git_revision()}, threads {threads}, median of {args.steps} runs, random weights", "",
        markdown_table(headers, table), "",
    ])
    print(report)
    write_results(args.out / f"{device.tag}-int8-kernels", report,
                  {"device": device.record(), "measurements": measurements})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
