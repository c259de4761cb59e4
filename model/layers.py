"""The transformer's building blocks in Marian's layout: post-norm encoder and decoder layers, positions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .config import ModelConfig
from .kv_cache import KVCache


def activation(name: str) -> nn.Module:
    """The modules behind Transformers' ACT2FN names that Marian configs use."""
    if name in ("swish", "silu"):
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    raise ValueError(f"activation_function {name!r} is not supported")


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """Marian's static positions: sines in the first half of the features, cosines in the second (not interleaved)."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (P, 1)
    # Feature pair j uses frequency 10000^(-2j/dim); the sin half takes even feature indices, cos the odd ones.
    even = torch.arange(0, dim, 2, dtype=torch.float64)
    odd = torch.arange(1, dim, 2, dtype=torch.float64)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    half = (dim + 1) // 2
    table[:, :half] = torch.sin(positions / torch.pow(10000.0, 2 * (even // 2) / dim))
    table[:, half:] = torch.cos(positions / torch.pow(10000.0, 2 * (odd // 2) / dim))
    return table.float()  # (P, dim)


class _PostNormLayer(nn.Module):
    """What encoder and decoder layers share: self-attention, the feed-forward block (fc1 → act → fc2)
    and post-norm residuals.

    The modules sit directly on the layer so that parameter names equal Transformers' Marian state dict.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        act: str,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.act = activation(act)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout
        self.activation_dropout = act_dropout
        self.self_attn = MultiHeadAttention(d_model, heads, attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)

    def _residual(self, x: torch.Tensor, update: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        return norm(x + F.dropout(update, self.dropout, self.training))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(self.act(self.fc1(x)), self.activation_dropout, self.training)
        return self._residual(x, self.fc2(hidden), self.final_layer_norm)


class EncoderLayer(_PostNormLayer):
    """Self-attention + FFN, each followed by residual and LayerNorm (post-norm)."""

    @classmethod
    def from_config(cls, config: ModelConfig) -> EncoderLayer:
        return cls(config.d_model, config.encoder_attention_heads, config.encoder_ffn_dim,
                   config.activation_function, config.dropout, config.attention_dropout, config.activation_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, S, d); mask (B, 1, 1, S), True at real (non-pad) source positions."""
        x = self._residual(x, self.self_attn(x, x, mask), self.self_attn_layer_norm)
        return self._feed_forward(x)


class DecoderLayer(_PostNormLayer):
    """Masked self-attention, cross-attention over the encoder output, FFN; each post-norm."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        act: str,
        dropout: float,
        attn_dropout: float,
        act_dropout: float,
    ) -> None:
        super().__init__(d_model, heads, ffn_dim, act, dropout, attn_dropout, act_dropout)
        self.encoder_attn = MultiHeadAttention(d_model, heads, attn_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)

    @classmethod
    def from_config(cls, config: ModelConfig) -> DecoderLayer:
        return cls(config.d_model, config.decoder_attention_heads, config.decoder_ffn_dim,
                   config.activation_function, config.dropout, config.attention_dropout, config.activation_dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The whole target at once, no cache: (B, T, d) over memory (B, S, d)."""
        x = self._residual(x, self.self_attn(x, x, is_causal=True), self.self_attn_layer_norm)
        x = self._residual(x, self.encoder_attn(x, memory, memory_mask), self.encoder_attn_layer_norm)
        return self._feed_forward(x)

    def step(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        positions: torch.Tensor,
        self_mask: torch.Tensor,
        cross_mask: torch.Tensor,
        target_length: int,
        group_size: int = 1,
        first_row: int = 0,
    ) -> torch.Tensor:
        """One new token per row: x (N, 1, d) for cache rows ``first_row ..``; keys/values come from and go
        to `cache`. With `group_size` k > 1, every k consecutive rows are one text's beams and share its
        cross-attention K/V."""
        key, value = self.self_attn.project_kv(x)  # (N, H, 1, D)
        key, value = cache.append(layer, positions, key, value, target_length, first_row)
        x = self._residual(x, self.self_attn.attend(x, key, value, self_mask), self.self_attn_layer_norm)
        cross_key, cross_value = cache.cross(layer, x.shape[0], cross_mask.shape[-1], group_size, first_row)
        if group_size > 1:  # (N, 1, d) as (N/k, k, d): the k beams are k queries against one text
            rows, _, width = x.shape
            grouped = x.view(rows // group_size, group_size, width)
            attended = self.encoder_attn.attend(grouped, cross_key, cross_value, cross_mask).view(rows, 1, width)
        else:
            attended = self.encoder_attn.attend(x, cross_key, cross_value, cross_mask)
        x = self._residual(x, attended, self.encoder_attn_layer_norm)
        return self._feed_forward(x)


def embedding_scale(d_model: int, scale_embedding: bool) -> float:
    return math.sqrt(d_model) if scale_embedding else 1.0
