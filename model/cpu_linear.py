"""Pre-packed oneDNN linear layers for float32 inference on the CPU.

torch's default CPU matmul reaches about a third of what oneDNN does once a weight is reordered into
oneDNN's blocked layout (measured on this project's AVX-512 EPYC at the decoder's shapes, 32-128 rows
by 512 -> 2048: 2.3x faster). The reorder happens once at load time; the layer computes the same
function up to float rounding (~1e-6 relative). Inference only: packed weights take no gradients and
are not part of the state dict, so training and checkpoints use the plain model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .transformer import Transformer

log = logging.getLogger(__name__)

# oneDNN picks its blocking for this many rows; any other row count works, this one is the decoder's
# usual batch size.
_ROWS_HINT = 64
# Row counts up to this run as they are; above it they are padded up to one of 8 sizes per octave (at most
# 12.5% more rows).
_EXACT_ROWS = 16


def bucket_rows(rows: int) -> int:
    """The row count a packed linear layer runs at for `rows` input rows.

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


class PackedLinear(nn.Module):
    """``nn.Linear`` with its weight reordered once for oneDNN."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), _ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K)
        rows = flat.shape[0]
        padded = bucket_rows(rows)
        if padded != rows:
            flat = torch.cat([flat, flat.new_zeros(padded - rows, self.in_features)])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
        return out[:rows].view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def can_pack(model: nn.Module) -> bool:
    """float32 on the CPU, with oneDNN built in and its (private) linear ops present."""
    weight = next(model.parameters(), None)
    return (
        weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def pack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of `model` in place by a PackedLinear; returns how many were packed.

    Leaves the model as it is (and returns 0) where packing is unavailable or fails: it is an
    optimisation, never a requirement.
    """
    if not can_pack(model):
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    try:
        packed = {id(child): PackedLinear(child) for _, _, child in targets}
    except RuntimeError as exc:  # an unusual build: keep torch's own path
        log.warning("oneDNN weight packing unavailable (%s); using torch's default linear layers", exc)
        return 0
    for parent, name, child in targets:
        setattr(parent, name, packed[id(child)])
    return len(targets)


def warm_up(model: Transformer, step_rows: int, pass_rows: int = 1024) -> int:
    """Run one packed layer of every weight shape at every row bucket it will meet, so that oneDNN keeps
    these shapes' state from the start: resident memory is reached at once instead of crept up to over
    hours of traffic (as new shapes turn up), and early requests pay no primitive creation. The output
    layer runs only in decoder steps (up to `step_rows` rows, the batch); the others also in encoder
    passes (warmed up to `pass_rows`, rarer larger passes are met as they come). Returns the shapes warmed.

    oneDNN's state is per shape, not per layer, so one layer per (in, out) shape is enough: the bundled
    model's 4 shapes up to 1,024 rows take half a second.
    """
    head = model.lm_head
    layers = {(m.in_features, m.out_features): m for m in model.modules()
              if isinstance(m, PackedLinear) and m is not head}
    plan = [(layer, pass_rows) for layer in layers.values()]
    if isinstance(head, PackedLinear):
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
    if not isinstance(head, PackedLinear) or head.bias is not None:
        return False
    head.bias = model.final_logits_bias[0].clone()
    model.logits_bias_in_head = True
    return True
