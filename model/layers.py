"""The transformer's building blocks: encoder and decoder layers (post-norm or pre-norm), position tables."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .config import ModelConfig


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
    # On the CPU even when the model is built on the meta device (checkpoint loading): a meta table would
    # need torch's Python meta kernels, whose import costs 75 MB of resident memory.
    positions = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]  # (P, 1)
    # Feature pair j uses frequency 10000^(-2j/dim); the sin half takes even feature indices, cos the odd ones.
    even = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")
    odd = torch.arange(1, dim, 2, dtype=torch.float64, device="cpu")
    table = torch.empty(num_positions, dim, dtype=torch.float64, device="cpu")
    half = (dim + 1) // 2
    table[:, :half] = torch.sin(positions / torch.pow(10000.0, 2 * (even // 2) / dim))
    table[:, half:] = torch.cos(positions / torch.pow(10000.0, 2 * (odd // 2) / dim))
    return table.float()  # (P, dim)


def fairseq_positions(num_positions: int, dim: int, padding_idx: int) -> torch.Tensor:
    """fairseq's static positions (M2M100, NLLB): frequencies exp(-k ln(10000) / (dim/2 - 1)), sines then
    cosines, a zero row at `padding_idx`; position p is row p + padding_idx + 1."""
    half = dim // 2
    # On the CPU even under a meta device, as sinusoidal_positions.
    frequencies = torch.exp(torch.arange(half, dtype=torch.float64, device="cpu") * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None] * frequencies[None, :]  # (P, half)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1, dtype=torch.float64, device="cpu")], dim=1)
    table[padding_idx] = 0
    return table.float()  # (P, dim)


class _Layer(nn.Module):
    """What encoder and decoder layers share: self-attention, the feed-forward block (fc1 → act → fc2),
    and the residual rule: post-norm LN(x + f(x)) (Marian) or pre-norm x + f(LN(x)) (M2M100, MBart).

    The modules sit directly on the layer so that parameter names equal Transformers' state dicts.
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
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.act = activation(act)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout
        self.activation_dropout = act_dropout
        self.pre_norm = pre_norm
        self.self_attn = MultiHeadAttention(d_model, heads, attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)

    def _input(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """What a sublayer reads: the normalised input (pre-norm) or the input itself (post-norm)."""
        return norm(x) if self.pre_norm else x

    def _residual(self, x: torch.Tensor, update: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        update = F.dropout(update, self.dropout, self.training)
        return x + update if self.pre_norm else norm(x + update)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._input(x, self.final_layer_norm)
        hidden = F.dropout(self.act(self.fc1(h)), self.activation_dropout, self.training)
        return self._residual(x, self.fc2(hidden), self.final_layer_norm)

    def _self_attention(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool = False) -> torch.Tensor:
        h = self._input(x, self.self_attn_layer_norm)
        return self._residual(x, self.self_attn(h, h, mask, is_causal=is_causal), self.self_attn_layer_norm)

    @staticmethod
    def _arguments(config: ModelConfig, side: str) -> tuple[Any, ...]:
        return (config.d_model, getattr(config, f"{side}_attention_heads"), getattr(config, f"{side}_ffn_dim"),
                config.activation_function, config.dropout, config.attention_dropout, config.activation_dropout,
                config.family.pre_norm)


class EncoderLayer(_Layer):
    """Self-attention + FFN, each with its residual and LayerNorm."""

    @classmethod
    def from_config(cls, config: ModelConfig) -> EncoderLayer:
        return cls(*cls._arguments(config, "encoder"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, S, d); mask (B, 1, 1, S), True at real (non-pad) source positions."""
        return self._feed_forward(self._self_attention(x, mask))


class DecoderLayer(_Layer):
    """Masked self-attention, cross-attention over the encoder output, FFN; each with its residual and LayerNorm."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        d_model, heads, attn_dropout = args[0], args[1], args[5]
        self.encoder_attn = MultiHeadAttention(d_model, heads, attn_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d_model)

    @classmethod
    def from_config(cls, config: ModelConfig) -> DecoderLayer:
        return cls(*cls._arguments(config, "decoder"))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The whole target at once, no cache: (B, T, d) over memory (B, S, d)."""
        x = self._self_attention(x, None, is_causal=True)
        h = self._input(x, self.encoder_attn_layer_norm)
        x = self._residual(x, self.encoder_attn(h, memory, memory_mask), self.encoder_attn_layer_norm)
        return self._feed_forward(x)

    def prefill(
        self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` over a target prefix (B, T, d), also returning its self-attention keys and values
        (B, H, T, D) for the cache: the steps that follow continue from them."""
        h = self._input(x, self.self_attn_layer_norm)
        q, key, value = self.self_attn.project_qkv(h)
        x = self._residual(x, self.self_attn.attend(q, key, value, None, is_causal=True), self.self_attn_layer_norm)
        h = self._input(x, self.encoder_attn_layer_norm)
        x = self._residual(x, self.encoder_attn(h, memory, memory_mask), self.encoder_attn_layer_norm)
        return self._feed_forward(x), key, value


def embedding_scale(d_model: int, scale_embedding: bool) -> float:
    return math.sqrt(d_model) if scale_embedding else 1.0
