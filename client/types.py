"""What the clients return and raise: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


class TranslationError(Exception):
    """A call failed: ``code`` is the gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> TranslationError:
        # grpc.RpcError raised by calls is also a grpc.Call with code() and details().
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code, details or "")


@dataclass(frozen=True)
class TranslationResult:
    """The translation of one text.

    ``hypotheses`` is the n-best list, best first (``[text]`` when one was asked);
    ``scores`` holds their scores when ``return_scores`` was asked, else it is empty.
    """

    index: int
    text: str
    hypotheses: list[str]
    scores: list[float]
    input_tokens: int
    output_tokens: int
    model: str
    #: The best translation reached the request's max_length and may be cut short.
    max_length_reached: bool = False

    @property
    def score(self) -> float | None:
        return self.scores[0] if self.scores else None


@dataclass(frozen=True)
class PartialResult:
    """The growing translation of one text (TranslateStream with ``partial=True``, greedy decoding)."""

    index: int
    text: str
    output_tokens: int
    model: str


@dataclass(frozen=True)
class ModelArchitecture:
    model_type: str
    encoder_layers: int
    decoder_layers: int
    d_model: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    source_vocab_size: int
    target_vocab_size: int
    parameter_count: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source_language: str
    target_language: str
    architecture: ModelArchitecture
    max_source_length: int
    max_target_length: int
    device: str
    dtype: str
    is_default: bool = field(default=False)


__all__ = ["ModelArchitecture", "ModelInfo", "PartialResult", "TranslationError", "TranslationResult"]
