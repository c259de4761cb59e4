"""Optional int8 weights for CPU inference: dynamic quantization of the linear layers.

Each ``nn.Linear`` becomes a layer with int8 weights (per output channel) whose input is quantized to
int8 per batch on the fly, so the matmul runs on int8 units (AVX-512 VNNI on this project's EPYC).
Measured there, one thread, base-size model: a 128 x 512 -> 2048 layer 1.13 ms packed float32 against
0.41 ms int8; beam-4 decoding 1.38x faster end to end. The price is accuracy (about 2% relative error
per layer's output); benchmarks/README.md and the default model's card report the BLEU change.

It uses ``torch.ao.quantization.quantize_dynamic``, which torch marks as deprecated in favour of the
separate ``torchao`` package; it is still there in torch 2.13. Where it is gone, asking for int8 fails at
load time with a message that says so, and the default (float32, packed for oneDNN) is unaffected.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_MODES = ("none", "int8")


def quantize_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of `model` (float32, on the CPU) by a dynamically quantized int8 layer,
    in place; returns how many were replaced. Raises ValueError naming what stands in the way."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        raise ValueError(f"quantize int8 runs on the CPU only; the model is on {weight.device}")
    if weight.dtype != torch.float32:
        raise ValueError(f"quantize int8 needs a float32 model (dtype float32 or auto), got {weight.dtype}")
    quantize_dynamic = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize_dynamic = getattr(quantize_dynamic, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise ValueError(f"quantize int8: torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic")
    count = sum(isinstance(m, nn.Linear) for m in model.modules())
    with warnings.catch_warnings():
        # The deprecation notice (see the module docstring) would be printed at every model load.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return count
