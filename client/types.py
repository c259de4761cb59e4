"""What the clients return and raise: plain dataclasses, no protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


class TranslationError(Exception):
    """A call failed: ``code`` is the gRPC status code, ``details`` the server's (or gRPC's) message, and
    ``hint`` what it most likely means, when that can be told (no server there, not a gRPC server...)."""

    def __init__(self, code: grpc.StatusCode, details: str, hint: str | None = None) -> None:
        self.code = code
        self.details = details
        self.hint = hint
        super().__init__(f"{hint} ({code.name}: {details})" if hint else f"{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, target: str | None = None) -> TranslationError:
        # grpc.RpcError raised by calls is also a grpc.Call with code() and details().
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else str(error)) or ""
        return cls(code, details, _hint(code, details, target or "the server"))


def _hint(code: grpc.StatusCode, details: str, target: str) -> str | None:
    """What gRPC's transport messages mean for someone calling mtserve."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    if "Connection refused" in details:
        return f"no mtserve server at {target} (is `mtserve serve` running, on that port?)"
    if "HTTP/2" in details or "SETTINGS frame" in details:
        return f"{target} is not a gRPC server (the metrics port?)"
    if "DNS resolution failed" in details or "Name or service not known" in details:
        return f"cannot resolve the host of {target}"
    if "handshake" in details.lower() or "CERTIFICATE_VERIFY" in details or "SSL" in details:
        return (f"the TLS handshake with {target} failed: a plaintext client and a TLS server (or the other way "
                f"round), or a certificate its CA does not vouch for (--tls, --ca, --cert, --key)")
    return None


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
    #: The languages used, as the model's codes ("deu_Latn"); "" where the model declares none.
    source_language: str = ""
    target_language: str = ""
    #: With return_alignments: the source tokens, the best translation's tokens, and for each of those the
    #: index of its aligned source token.
    source_tokens: list[str] = field(default_factory=list)
    target_tokens: list[str] = field(default_factory=list)
    alignment: list[int] = field(default_factory=list)

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
class Language:
    """One of a model's languages: its own code ("deu_Latn") and the BCP-47 tag it stands for ("de")."""

    code: str
    tag: str


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
    #: What a request may name as source/target language (multilingual models); empty for a single pair.
    languages: list[Language] = field(default_factory=list)


__all__ = ["Language", "ModelArchitecture", "ModelInfo", "PartialResult", "TranslationError", "TranslationResult"]
