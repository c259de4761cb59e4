"""A tiny random Marian model in memory (see conftest.py); a plain module so tests can import its constants."""

from __future__ import annotations

import torch

from mtserve.model.config import ModelConfig
from mtserve.model.transformer import Transformer

VOCAB = 40
EOS, PAD = 0, VOCAB - 1


def tiny_model(*, endless: bool, seed: int = 0) -> Transformer:
    config = ModelConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS, forced_eos_token_id=EOS, dropout=0.0,
    )
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        bias = torch.randn(model.final_logits_bias.shape, generator=generator)
        bias[0, EOS] = -1e4 if endless else bias[0].max() + 0.5
        model.final_logits_bias.copy_(bias)
    return model.eval()
