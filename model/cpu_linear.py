"""Pre-packed linear layers for float32 inference on the CPU: MKL's or oneDNN's kernel, by the CPU.

Two kernels keep a weight reordered once at load for the way they read it:

- ``mkl``: MKL's packed SGEMM (mkl_gemm.py), what CTranslate2 runs on Intel CPUs;
- ``onednn``: oneDNN's blocked layout (``torch.ops.mkldnn``). On this project's first machine, an AMD
  EPYC, it ran the decoder's shapes (32-128 rows by 512 -> 2048) 2.3x faster than torch's default matmul.

Which is faster depends on the CPU (:func:`default_kernel` says what was measured). Either computes the
same function as ``nn.Linear`` up to float rounding (~1e-6 relative). Inference only: packed weights take
no gradients and are not part of the state dict, so training and checkpoints use the plain model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import mkl_gemm
from .transformer import Transformer

log = logging.getLogger(__name__)

KERNELS = ("mkl", "onednn")
# oneDNN picks its blocking for this many rows; any other row count works, this one is the decoder's
# usual batch size.
_ROWS_HINT = 64
# Row counts up to this run as they are; above it they are padded up to one of 8 sizes per octave (at most
# 12.5% more rows).
_EXACT_ROWS = 16


def bucket_rows(rows: int) -> int:
    """The row count a oneDNN layer runs at for `rows` input rows.

    oneDNN keeps a primitive, with its buffers, for every input shape it has seen (about 0.3 MB each for a
    512 x 2048 layer, and the allocator keeps as much again). A server's steps run at ever new row counts
    (an encoder pass over P texts of S tokens is P*S rows), so resident memory grew without bound: 371 to
    1,458 MB over four rounds of varied shapes on the bundled model. Bucketed, the shapes are a fixed set
    (104 up to 32k rows) and memory stays flat (560 MB after the first round, then no growth).
    """
    if rows <= _EXACT_ROWS:
        return rows
    step = 1 << max(0, (rows - 1).bit_length() - 4)
    return -(-rows // step) * step


class CpuLinear(nn.Module):
    """What the packed kernels share: the shape, the bias (which the output layer may receive later, see
    :func:`fold_logits_bias`), and the (..., in) → (..., out) reshaping."""

    kernel = ""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K)
        return self.matmul(flat).view(*x.shape[:-1], self.out_features)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for {self.kernel}"


class MklLinear(CpuLinear):
    """``nn.Linear`` with its weight packed once for MKL's SGEMM."""

    kernel = "mkl"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        self.packed_weight = mkl_gemm.pack(linear.weight)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return mkl_gemm.linear(flat, self.packed_weight, self.bias, self.out_features)


class OneDnnLinear(CpuLinear):
    """``nn.Linear`` with its weight reordered once for oneDNN; row counts bucketed (:func:`bucket_rows`)."""

    kernel = "onednn"

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _ROWS_HINT)

    def matmul(self, flat: torch.Tensor) -> torch.Tensor:
        rows = flat.shape[0]
        padded = bucket_rows(rows)
        if padded != rows:
            flat = torch.cat([flat, flat.new_zeros(padded - rows, self.in_features)])
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")[:rows]


_CLASSES: dict[str, type[CpuLinear]] = {"mkl": MklLinear, "onednn": OneDnnLinear}


def kernels_available() -> list[str]:
    """The packed kernels this torch build has."""
    found = []
    if mkl_gemm.available():
        found.append("mkl")
    if (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        found.append("onednn")
    return found


def can_pack(model: nn.Module) -> bool:
    """float32 on the CPU, with at least one packed kernel in this build."""
    weight = next(model.parameters(), None)
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and bool(kernels_available()))


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD`` ...), or "" where /proc/cpuinfo has none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def default_kernel(available: list[str]) -> str:
    """MKL on Intel CPUs, oneDNN elsewhere, of the kernels available.

    Measured: on an Intel Xeon a whole batch-1 decoder step of the bundled model took 1.8 ms with MKL
    against 3.6-4.0 ms with oneDNN (oneDNN's per-call cost at small row counts), and batches of 8-128 rows
    ran as fast or faster. On an AMD EPYC, MKL keeps to its generic code paths, and oneDNN ran the
    decoder's shapes 2.3x faster than torch's default (MKL) matmul. Timing both at load was tried: timed
    with the weights in cache, the choice did not predict a decoder step, whose weights are not.
    """
    preferred = ["mkl", "onednn"] if cpu_vendor() == "GenuineIntel" else ["onednn", "mkl"]
    return next(kernel for kernel in preferred if kernel in available)


def pack_linears(model: nn.Module, kernel: str = "auto") -> int:
    """Replace every ``nn.Linear`` of `model` in place by a packed layer; returns how many were packed.
    `kernel`: "auto" (:func:`default_kernel`), or one of KERNELS.

    Leaves the model as it is (and returns 0) where packing is unavailable, and the rest of the layers
    unpacked where it fails: it is an optimisation, never a requirement (a packed layer computes what the
    plain one does).
    """
    if kernel not in ("auto", *KERNELS):
        raise ValueError(f"kernel must be auto or one of {', '.join(KERNELS)}, got {kernel!r}")
    available = kernels_available()
    if not can_pack(model) or (kernel != "auto" and kernel not in available):
        return 0
    chosen = _CLASSES[default_kernel(available) if kernel == "auto" else kernel]
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    packed = 0
    # One layer at a time, each float weight freed as its packed copy takes its place: holding every layer
    # twice at once raised the bundled model's load peak by the size of its weights.
    for parent, name in targets:
        try:
            setattr(parent, name, chosen(getattr(parent, name)))
        except RuntimeError as exc:  # an unusual build: the layers not packed yet keep torch's own path
            log.warning("weight packing unavailable (%s); using torch's default linear layers", exc)
            break
        packed += 1
    return packed


def kernels_in_use(model: nn.Module) -> dict[str, int]:
    """How many linear layers of `model` run on each packed kernel."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, CpuLinear):
            counts[module.kernel] = counts.get(module.kernel, 0) + 1
    return counts


def warm_up(model: Transformer, step_rows: int, pass_rows: int = 1024) -> int:
    """Run one oneDNN layer of every weight shape at every row bucket it will meet, so that oneDNN keeps
    these shapes' state from the start: resident memory is reached at once instead of crept up to over
    hours of traffic (as new shapes turn up), and early requests pay no primitive creation. The output
    layer runs only in decoder steps (up to `step_rows` rows, the batch); the others also in encoder
    passes (warmed up to `pass_rows`, rarer larger passes are met as they come). Returns the shapes warmed.

    oneDNN's state is per shape, not per layer, so one layer per (in, out) shape is enough: the bundled
    model's 4 shapes up to 1,024 rows take half a second. MKL's packed layers keep no per-shape state.
    """
    head = model.lm_head
    layers = {(m.in_features, m.out_features): m for m in model.modules()
              if isinstance(m, OneDnnLinear) and m is not head}
    plan = [(layer, pass_rows) for layer in layers.values()]
    if isinstance(head, OneDnnLinear):
        plan.append((head, step_rows))
    shapes = 0
    with torch.inference_mode():
        for layer, up_to in plan:
            for count in sorted({bucket_rows(r) for r in range(1, up_to + 1)}):
                layer(torch.zeros(count, layer.in_features))
                shapes += 1
    return shapes


def fold_logits_bias(model: Transformer) -> bool:
    """Make a packed output layer add ``final_logits_bias`` itself, inside its matmul: one pass over the
    (rows x vocabulary) logits less per decoder step. True when folded."""
    head = model.lm_head
    if not isinstance(head, CpuLinear) or head.bias is not None:
        return False
    head.bias = model.final_logits_bias[0].clone()
    model.logits_bias_in_head = True
    return True
