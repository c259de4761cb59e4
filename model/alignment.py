"""Source ↔ target token alignments from cross-attention.

A target token is aligned to the source token that the cross-attention of one decoder layer, its heads
averaged, weighs most in the step that produced it (fairseq's ``print_alignment``, CTranslate2's
``return_attention``). The layer is the last one, as CTranslate2's default (alignment_layer -1). Garg
et al. (2019) found the penultimate layer best for a 6-layer decoder; on the bundled model (3 layers)
the last one is: over "Das Haus ist klein.", "Der Hund schläft im Garten." and "Ich trinke gern Kaffee
mit Milch." it aligns 13 of 14 content words to their German counterparts, the middle one 6 and the
first 1 (tests/model/test_alignment.py keeps the first sentence).

The weights are computed by one teacher-forced pass over the finished hypotheses rather than kept
through the search: a cached step and a full pass attend exactly alike, so the alignment is the
search's own, and the hot decoder step carries nothing extra (no per-row attention history to
reorder with the beams). It costs one encoder and one decoder pass per text whose alignments are asked
for, when it finishes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .transformer import Transformer


def alignment_layer(model: Transformer) -> int:
    return len(model.decoder.layers) - 1


@torch.inference_mode()
def cross_attention(model: Transformer, source_ids: Sequence[int], outputs: Sequence[Sequence[int]],
                    layer: int | None = None) -> list[torch.Tensor]:
    """For each output (its tokens, forced prefix included, without the start token), the chosen layer's
    head-averaged cross-attention weights (len(output), len(source_ids)) of the steps that produced them."""
    if not outputs:
        return []
    layer = alignment_layer(model) if layer is None else layer
    device = model.device
    config = model.config
    source = torch.tensor([list(source_ids)], device=device)
    memory = model.encode(source, torch.ones_like(source, dtype=torch.bool))  # (1, S, d)
    longest = max(1, max(len(o) for o in outputs))
    inputs = torch.full((len(outputs), longest), config.pad_token_id, device=device)
    for row, output in enumerate(outputs):
        steps = [config.decoder_start_token_id, *output][:longest]  # what each producing step read
        inputs[row, : len(steps)] = torch.tensor(steps, device=device)
    memory = memory.expand(len(outputs), -1, -1)
    mask = torch.ones(len(outputs), 1, 1, memory.shape[1], dtype=torch.bool, device=device)
    x = model._embed(model.decoder, inputs, torch.arange(longest, device=device))
    for index, decoder_layer in enumerate(model.decoder.layers):
        if index < layer:
            x = decoder_layer(x, memory, mask)
            continue
        x = decoder_layer._self_attention(x, None, is_causal=True)
        h = decoder_layer._input(x, decoder_layer.encoder_attn_layer_norm)
        attention = decoder_layer.encoder_attn
        q = attention.project_q(h)  # (B, H, T, D)
        key, _ = attention.project_kv(memory)
        scores = torch.matmul(q, key.transpose(-1, -2)) * attention.query_scale
        weights = torch.softmax(scores.float(), dim=-1).mean(dim=1)  # (B, T, S)
        return [weights[row, : len(output)] for row, output in enumerate(outputs)]
    raise ValueError(f"layer {layer} is not one of the decoder's {len(model.decoder.layers)} layers")


def align(model: Transformer, source_ids: Sequence[int], outputs: Sequence[Sequence[int]],
          layer: int | None = None) -> list[list[int]]:
    """For each output token, the index (into source_ids) of the source token it is aligned to."""
    return [w.argmax(dim=-1).tolist() for w in cross_attention(model, source_ids, outputs, layer)]
