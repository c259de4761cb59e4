"""The model configuration: the fields of a Hugging Face ``config.json`` that change the computation.

Three families share one network (transformer.py, layers.py); what sets them apart is data, a
:class:`Family` of switches chosen by ``model_type``:

============  =========  ==============  ===================  =================================  =====
model_type    norm       final LN        layernorm_embedding  positions                          bias
============  =========  ==============  ===================  =================================  =====
marian        post-norm  none            no                   sinusoidal (sin half, cos half)    yes
m2m_100       pre-norm   encoder+decoder no                   sinusoidal, fairseq's, offset 2    none
mbart         pre-norm   encoder+decoder yes                  learned, offset 2                  yes
============  =========  ==============  ===================  =================================  =====

M2M100 covers NLLB-200 (same architecture, another tokenizer); MBart covers MBart-50.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Family:
    """How a model type's network differs from Marian's."""

    pre_norm: bool  # x + f(LN(x)) in every sublayer, instead of LN(x + f(x))
    final_layer_norm: bool  # encoder.layer_norm and decoder.layer_norm after the last layer
    layernorm_embedding: bool  # a LayerNorm on token + position embeddings (MBart)
    positions: Literal["marian", "fairseq", "learned"]
    position_offset: int  # fairseq models start counting positions at 2 (pad + 1)
    # Marian's generation config bans <pad> (its decoder start token: bad_words_ids [[pad]]); the
    # fairseq families start with </s> and ban nothing.
    bans_pad: bool = False


FAMILIES = {
    "marian": Family(pre_norm=False, final_layer_norm=False, layernorm_embedding=False, positions="marian",
                     position_offset=0, bans_pad=True),
    "m2m_100": Family(pre_norm=True, final_layer_norm=True, layernorm_embedding=False, positions="fairseq",
                      position_offset=2),
    "mbart": Family(pre_norm=True, final_layer_norm=True, layernorm_embedding=True, positions="learned",
                    position_offset=2),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# What a fairseq-family config.json leaves out means this (Transformers' M2M100Config/MBartConfig defaults).
_FAIRSEQ_IDS: dict[str, Any] = {"pad_token_id": 1, "eos_token_id": 2, "bos_token_id": 0, "decoder_start_token_id": 2,
                                "max_position_embeddings": 1024}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "marian": {},
    "m2m_100": {**_FAIRSEQ_IDS, "forced_eos_token_id": None, "activation_function": "relu", "scale_embedding": True},
    "mbart": {**_FAIRSEQ_IDS, "forced_eos_token_id": 2, "activation_function": "gelu", "scale_embedding": False},
}
# Names that Transformers' ACT2FN accepts for the same functions.
SUPPORTED_ACTIVATIONS = ("swish", "silu", "gelu", "relu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")


class ConfigError(ValueError):
    """A config.json that mtserve cannot serve; the message names the file, the field and the value."""


@dataclass
class ModelConfig:
    """A Marian encoder-decoder transformer, in Transformers' field names so config.json round-trips."""

    vocab_size: int = 58101
    decoder_vocab_size: int | None = None
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "swish"
    max_position_embeddings: int = 512
    scale_embedding: bool = True
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int = 58100
    eos_token_id: int = 0
    decoder_start_token_id: int = 58100
    forced_eos_token_id: int | None = 0
    bos_token_id: int | None = None  # fairseq models' <s>; Marian has none
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    model_type: str = "marian"

    def __post_init__(self) -> None:
        if self.decoder_vocab_size is None:
            self.decoder_vocab_size = self.vocab_size
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"model_type {self.model_type!r} is not supported; supported: "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)} (the Hugging Face Marian / OPUS-MT layout)")
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"activation_function {self.activation_function!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        for name in (
            "vocab_size",
            "decoder_vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for heads_field in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_field)
            if self.d_model % heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by {heads_field} {heads}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.target_vocab_size:
                raise ConfigError(f"{name} {value!r} is outside the target vocabulary (size {self.target_vocab_size})")

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def target_vocab_size(self) -> int:
        """Rows of the output projection: the shared vocabulary, or the decoder's own one."""
        return self.vocab_size if self.share_encoder_decoder_embeddings else int(self.decoder_vocab_size or 0)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        model_type = values.get("model_type", "marian")
        given = {k: v for k, v in values.items() if k in known and not (v is None and k in _FAIRSEQ_IDS)}
        kwargs = {**_DEFAULTS.get(model_type, {}), **given}
        if model_type in ("m2m_100", "mbart"):
            # One embedding table for both sides, tied to the output layer, as these checkpoints store it.
            kwargs.update(share_encoder_decoder_embeddings=True, decoder_vocab_size=None,
                          tie_word_embeddings=values.get("tie_word_embeddings", True))
        # Transformers allows a list of eos ids; Marian models have exactly one.
        for name in ("eos_token_id", "forced_eos_token_id"):
            if isinstance(kwargs.get(name), list):
                if len(kwargs[name]) != 1:
                    raise ConfigError(f"{name} {kwargs[name]!r}: mtserve supports exactly one end-of-sentence id")
                kwargs[name] = kwargs[name][0]
        if model_type == "marian" and (values.get("normalize_before") or values.get("add_final_layer_norm")):
            raise ConfigError("normalize_before/add_final_layer_norm: pre-norm layers are not Marian's layout")
        return cls(**kwargs)

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no config.json in the model directory") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(values)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{file}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A config.json that Transformers' MarianConfig reads back to the same model (Marian only: mtserve
        trains Marian models and serves the other families from their published directories)."""
        if self.model_type != "marian":
            raise ConfigError(f"writing a {self.model_type} config.json is not supported")
        values = asdict(self)
        values.update(
            architectures=["MarianMTModel"],
            is_encoder_decoder=True,
            bos_token_id=None,
            static_position_embeddings=True,
            num_hidden_layers=self.encoder_layers,
        )
        return values
