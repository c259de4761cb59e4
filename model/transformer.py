"""The encoder-decoder transformer of all served families: a full no-cache pass (training, test oracle) and
cached decoding. What differs between Marian, M2M100/NLLB and MBart is data (config.Family): the residual
rule, final layer norms, an embedding layer norm, the position table and its offset.

Parameter names equal the keys of Transformers' state dicts without the leading ``model.``, so checkpoints
load without a mapping table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import decoder_step
from .config import ModelConfig
from .kv_cache import INITIAL_LENGTH, KVCache
from .layers import DecoderLayer, EncoderLayer, embedding_scale, fairseq_positions, sinusoidal_positions


def embedding(rows: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """``nn.Embedding``; built on the meta device (checkpoint loading), without its random initialisation,
    whose meta kernel is Python that imports sympy: 75 MB of resident memory for nothing, since the
    checkpoint's weights replace it."""
    if torch.empty(0).device.type == "meta":
        return nn.Embedding(rows, dim, padding_idx=padding_idx, _weight=torch.empty(rows, dim))
    return nn.Embedding(rows, dim, padding_idx=padding_idx)


class _Stack(nn.Module):
    """What the encoder and the decoder share: token embeddings, the family's extras around the layers."""

    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        family, d_model = config.family, config.d_model
        self.embed_tokens = embed_tokens
        if family.positions == "learned":  # MBart: its own table per stack, in the checkpoint
            self.embed_positions = embedding(config.max_position_embeddings + family.position_offset, d_model)
        if family.layernorm_embedding:
            self.layernorm_embedding = nn.LayerNorm(d_model)
        if family.final_layer_norm:
            self.layer_norm = nn.LayerNorm(d_model)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """After the last layer: the final layer norm of pre-norm families."""
        return self.layer_norm(x) if hasattr(self, "layer_norm") else x


class Encoder(_Stack):
    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(EncoderLayer.from_config(config) for _ in range(config.encoder_layers))


class Decoder(_Stack):
    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens)
        self.layers = nn.ModuleList(DecoderLayer.from_config(config) for _ in range(config.decoder_layers))


def position_table(config: ModelConfig) -> torch.Tensor:
    """The static position table of a family that has one (Marian's, or fairseq's with its offset)."""
    family = config.family
    if family.positions == "fairseq":
        return fairseq_positions(config.max_position_embeddings + family.position_offset, config.d_model,
                                 padding_idx=config.pad_token_id)
    return sinusoidal_positions(config.max_position_embeddings, config.d_model)


class Transformer(nn.Module):
    """Token embeddings + positions, encoder and decoder layers, output projection + bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d_model, pad = config.d_model, config.pad_token_id
        if config.share_encoder_decoder_embeddings:
            self.shared = embedding(config.vocab_size, d_model, pad)
            encoder_embed = decoder_embed = self.shared
        else:
            encoder_embed = embedding(config.vocab_size, d_model, pad)
            decoder_embed = embedding(config.target_vocab_size, d_model, pad)
        self.encoder = Encoder(config, encoder_embed)
        self.decoder = Decoder(config, decoder_embed)
        self.lm_head = nn.Linear(d_model, config.target_vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = decoder_embed.weight
        self.register_buffer("final_logits_bias", torch.zeros(1, config.target_vocab_size))
        # Static, so not part of the checkpoint (Transformers does not save them either); MBart learns its own.
        self.register_buffer("positions", position_table(config), persistent=False)
        self.position_offset = config.family.position_offset
        self.embed_scale = embedding_scale(d_model, config.scale_embedding)
        #: Inference packing can move final_logits_bias into lm_head's own bias (cpu_linear.fold_logits_bias).
        self.logits_bias_in_head = False
        self._output_weight: torch.Tensor | None = None  # see keep_output_weight
        self._shortlist_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- pieces shared by both paths --------------------------------------------------------------

    def _embed(self, stack: _Stack, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings * scale + positions (and the embedding layer norm of MBart), then dropout."""
        weight = stack.embed_tokens.weight
        table = stack.embed_positions.weight if hasattr(stack, "embed_positions") else self.positions
        x = stack.embed_tokens(ids) * self.embed_scale + table[positions + self.position_offset].to(weight.dtype)
        if hasattr(stack, "layernorm_embedding"):
            x = stack.layernorm_embedding(x)
        return F.dropout(x, self.config.dropout, self.training)

    def _logits(self, hidden: torch.Tensor, vocabulary: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, V) float32 of hidden states (N, d). With `vocabulary` (sorted target ids: a shortlist,
        model/shortlist.py), only those are computed; every other id gets -inf."""
        if vocabulary is not None:
            return self._shortlist_logits(hidden, vocabulary)
        logits = self.lm_head(hidden)
        if not self.logits_bias_in_head:
            logits = logits + self.final_logits_bias
        return logits.float()

    def _shortlist_logits(self, hidden: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
        # The shortlist's rows of the output layer are gathered when the shortlist changes (a batch changes
        # it when texts join or leave), not at every step.
        if self._shortlist_rows is None or self._shortlist_rows[0] is not vocabulary:
            weight = self.output_weight().index_select(0, vocabulary).T.contiguous()  # (d, |v|)
            self._shortlist_rows = (vocabulary, weight, self.final_logits_bias[0].index_select(0, vocabulary))
        _, weight, bias = self._shortlist_rows
        part = torch.addmm(bias, hidden, weight)  # (N, |v|)
        logits = torch.full((hidden.shape[0], self.config.target_vocab_size), float("-inf"), dtype=torch.float32,
                            device=hidden.device)
        return logits.index_copy_(1, vocabulary, part.float())

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight (V, d) as floats: lm_head's own, or the copy kept when lm_head was
        packed for inference (keep_output_weight)."""
        if self._output_weight is not None:
            return self._output_weight
        return self.lm_head.weight

    def keep_output_weight(self) -> None:
        """Keep the output layer's float weight aside (before packing replaces lm_head): a shortlist reads
        its rows."""
        self._output_weight = self.lm_head.weight.detach()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S), attention_mask (B, S) True at real tokens → encoder output (B, S, d)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self._embed(self.encoder, input_ids, positions)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.encoder.finish(x)

    # -- the plain path: training and the test oracle -----------------------------------------------

    def decode_full(
        self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Every target position at once with a causal mask and no cache → logits (B, T, V) float32."""
        positions = torch.arange(decoder_input_ids.shape[1], device=decoder_input_ids.device)
        x = self._embed(self.decoder, decoder_input_ids, positions)
        mask = memory_mask.bool()[:, None, None, :]
        for layer in self.decoder.layers:
            x = layer(x, memory, mask)
        return self._logits(self.decoder.finish(x))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits (B, T, V): the training step's forward pass."""
        return self.decode_full(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    # -- the cached path: serving ------------------------------------------------------------------

    def fill_cross_attention(
        self,
        cache: KVCache,
        rows: torch.Tensor,
        memory: torch.Tensor,
        source_lengths: torch.Tensor,
        repeats: torch.Tensor | None = None,
    ) -> None:
        """Project the encoder output (P, S, d) once per decoder layer into the cross-attention rows (N,).

        `repeats` (P,): how many consecutive rows each text fills (its beams); the projection runs once
        per text and its keys/values are copied, not recomputed, for each beam.
        """
        count = rows.shape[0]  # known on the host: repeat_interleave need not read `repeats` back (a sync)
        if repeats is not None:
            source_lengths = source_lengths.repeat_interleave(repeats, output_size=count)
        cache.set_source_length(rows, source_lengths)
        for index, layer in enumerate(self.decoder.layers):
            key, value = layer.encoder_attn.project_kv(memory)  # (P, H, S, D)
            if repeats is not None:
                key = key.repeat_interleave(repeats, dim=0, output_size=count)  # (N, H, S, D)
                value = value.repeat_interleave(repeats, dim=0, output_size=count)
            cache.write_cross(index, rows, key, value)

    def prefill(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache: KVCache,
        rows: torch.Tensor,
        repeats: torch.Tensor | None = None,
    ) -> None:
        """Feed P texts' decoder inputs (P, T) — the start token and a forced target prefix but its last
        token — in one pass, writing their self-attention K/V at positions 0 .. T-1 of the cache rows (N,)
        (`repeats` (P,): rows per text, its beams, which get copies). The decoder steps continue at position
        T; a shorter input padded at its end is harmless: its pads' K/V are never attended (the step
        masks positions after a row's own) and the steps overwrite them. No logits: the first free token
        comes from the next step."""
        count = rows.shape[0]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self._embed(self.decoder, tokens, positions)
        mask = memory_mask.bool()[:, None, None, :]
        for index, layer in enumerate(self.decoder.layers):
            x, key, value = layer.prefill(x, memory, mask)
            if repeats is not None:
                key = key.repeat_interleave(repeats, dim=0, output_size=count)
                value = value.repeat_interleave(repeats, dim=0, output_size=count)
            cache.write_self(index, rows, key, value)

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        target_length: int,
        source_length: int,
        group_size: int = 1,
        first_row: int = 0,
        vocabulary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One token for each of N cache rows from `first_row` → next-token logits (N, V) float32.

        tokens, positions: (N,). target_length = max(positions) + 1 and source_length = the longest source
        among these rows, both known on the host so the step needs no device-to-host read. group_size k > 1
        says the rows are texts of k rows each (beams): cross-attention then reads each text's keys and
        values once for its k queries instead of once per row. A block of rows other than the first
        (`first_row` > 0) lets a step run in parts (engine/core.py retries a failed step that way).
        `vocabulary`: the sorted target ids to compute logits for (a shortlist), the others get -inf.
        """
        return decoder_step.decode_step(self, tokens, positions, cache, target_length, source_length, group_size,
                                        first_row, vocabulary)

    def fuse_projections(self) -> None:
        """Inference: every self-attention projects q, k and v with one layer, every cross-attention k and v
        (MultiHeadAttention.fuse). The same function; the parameter names are no longer Transformers'."""
        for layer in [*self.encoder.layers, *self.decoder.layers]:
            layer.self_attn.fuse(with_query=True)
        for layer in self.decoder.layers:
            layer.encoder_attn.fuse(with_query=False)

    @property
    def device(self) -> torch.device:
        # The embedding table: a parameter in every configuration (linear layers may be packed for inference).
        return self.decoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    def new_cache(
        self, num_rows: int, *, max_target_length: int | None = None, initial_length: int = INITIAL_LENGTH
    ) -> KVCache:
        config = self.config
        return KVCache(
            config.decoder_layers,
            num_rows,
            config.decoder_attention_heads,
            config.d_model // config.decoder_attention_heads,
            max_target_length=max_target_length or config.max_position_embeddings,
            dtype=self.dtype,
            device=self.device,
            initial_length=initial_length,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
