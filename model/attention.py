"""Multi-head attention: one module for encoder self-attention, decoder masked self-attention and cross-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v/out projections (Transformers' parameter names).

    The three uses differ only in where keys and values come from and in the mask:
    encoder self-attention masks padded source positions, decoder self-attention is causal
    (or reads the KV cache), and cross-attention reads keys/values projected once from the encoder output.

    For inference, :meth:`fuse` merges the projections that always run on the same input into one layer:
    q, k and v of self-attention, k and v of cross-attention. One matmul with 3d outputs instead of three
    with d is the same arithmetic in fewer calls over one weight read (the decoder step of a small model
    is made of such calls: see model/decoder_step.py's measurements).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.d_model = d_model
        self.dropout = dropout
        #: Scores are q·k times this; fusing folds it into the query projection's weights (then 1.0).
        self.query_scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    # -- projections ---------------------------------------------------------------------------------

    def fuse(self, *, with_query: bool) -> None:
        """Replace q/k/v (`with_query`: self-attention) or k/v (cross-attention) by one concatenated layer;
        the separate ones are dropped, so no weight is held twice. The score scale 1/sqrt(head_dim) moves
        into the query projection's weights, one multiplication less per attention. Inference only: the
        fused layer is not in Transformers' parameter names."""
        if hasattr(self, "qkv_proj") or hasattr(self, "kv_proj"):
            return
        with torch.no_grad():
            self.q_proj.weight.mul_(self.query_scale)
            self.q_proj.bias.mul_(self.query_scale)
        self.query_scale = 1.0
        parts = [self.q_proj, self.k_proj, self.v_proj] if with_query else [self.k_proj, self.v_proj]
        fused = _concatenate(parts)
        if with_query:
            self.qkv_proj = fused
            del self.q_proj
        else:
            self.kv_proj = fused
        del self.k_proj, self.v_proj

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def _split(self, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
        """(B, T, parts * d) → `parts` views (B, H, T, D)."""
        batch, length, _ = x.shape
        x = x.view(batch, length, parts, self.num_heads, self.head_dim)
        return [x[:, :, index].transpose(1, 2) for index in range(parts)]

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """Queries of `x` (B, T, d_model): (B, H, T, D). Not after fusing self-attention (use project_qkv)."""
        return self.split_heads(self.q_proj(x))

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `memory` (B, S, d_model), each (B, H, S, D)."""
        if hasattr(self, "kv_proj"):
            key, value = self._split(self.kv_proj(memory), 2)
            return key, value
        if hasattr(self, "qkv_proj"):
            _, key, value = self.project_qkv(memory)
            return key, value
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of `x` (B, T, d_model) for self-attention, each (B, H, T, D)."""
        if hasattr(self, "qkv_proj"):
            q, key, value = self._split(self.qkv_proj(x), 3)
            return q, key, value
        return (self.project_q(x), *self.project_kv(x))

    # -- attention -----------------------------------------------------------------------------------

    def attend(
        self,
        q: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Projected queries q (B, H, T, D) over key/value (B, H, S, D) → (B, T, d_model), output projection
        included. mask broadcastable to (B, H, T, S): True = attend, or additive (0 = attend, -inf = not)."""
        if q.shape[2] <= 8 and q.device.type == "cpu" and not self.training and mask is not None:
            out = attend_few_queries(q, key, value, mask, self.query_scale)
        else:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                 scale=self.query_scale)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))  # (B, T, d_model)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attention of `query` over `memory` with no cache (self-attention when memory is query)."""
        if memory is query:
            q, key, value = self.project_qkv(query)
        else:
            q, (key, value) = self.project_q(query), self.project_kv(memory)
        return self.attend(q, key, value, mask, is_causal)


def _concatenate(layers: list[nn.Linear]) -> nn.Linear:
    """One linear layer computing what `layers` (same input size) compute, outputs side by side."""
    first = layers[0]
    fused = nn.Linear(first.in_features, sum(layer.out_features for layer in layers), bias=first.bias is not None,
                      device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return fused.requires_grad_(first.weight.requires_grad)


def attend_few_queries(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """Attention of one query per row, or a text's few beams, in the cached decoder step: two batched
    matmuls. `mask` is boolean (True = attend) or additive (0 or -inf); `scale` multiplies the scores.

    The same function as scaled_dot_product_attention; on the CPU its flash kernel is tuned for long
    queries, and with one query it took 1.6x the time of this (128 rows, 8 heads, 30 keys read from the
    KV cache: 1.05 ms against 0.66 ms). An elementwise product and sum instead of the matmuls measured
    1.2-3x slower (32-128 rows, 4-8 heads, 12-30 keys).
    """
    scores = torch.matmul(q, key.transpose(-1, -2))  # (B, H, Tq, S)
    if scale != 1.0:
        scores.mul_(scale)
    if mask.dtype == torch.bool:
        scores.masked_fill_(~mask, -math.inf)
    else:
        scores.add_(mask)
    return torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, H, Tq, D)
