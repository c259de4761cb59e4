"""What the sync and asyncio clients share: targets, channel options, messages, and the retry policy."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from mtserve.proto.api import pb2

from .types import Language, ModelArchitecture, ModelInfo, PartialResult, TranslationResult

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
_MAX_MESSAGE = 64 * 1024 * 1024


# -- targets and channels -------------------------------------------------------------------------


def _split_host_port(target: str) -> tuple[str, str]:
    if target.startswith("["):  # [v6]:port
        host, _, port = target[1:].partition("]:")
        return host, port
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target {target!r}: expected HOST:PORT")
    return host, port


def _resolve(host: str, port: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4, as "localhost" users expect
    return ipaddress.ip_address(infos[0][4][0])


def channel_target(targets: str | Sequence[str]) -> str:
    """A gRPC target for one address or several.

    One target is used as given ("host:port", "dns:///name:port", "unix:path", ...). Several
    "host:port" targets (a sequence or a comma-separated string) become a static ``ipv4:`` or
    ``ipv6:`` address list, host names resolved once here; with the round_robin policy every
    call goes to the next address. For a changing set of replicas use one ``dns:///`` name
    (e.g. a Kubernetes headless Service), which round_robin re-resolves.
    """
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()] if "," in targets else [targets]
    if not targets:
        raise ValueError("no target given")
    if len(targets) == 1:
        return targets[0]
    addresses = []
    for target in targets:
        host, port = _split_host_port(target)
        addresses.append((_resolve(host, port), port))
    versions = {address.version for address, _ in addresses}
    if versions == {4}:
        return "ipv4:" + ",".join(f"{a}:{p}" for a, p in addresses)
    if versions == {6}:
        return "ipv6:" + ",".join(f"[{a}]:{p}" for a, p in addresses)
    raise ValueError(f"targets {list(targets)} mix IPv4 and IPv6; use a dns:/// target instead")


def channel_options(lb_policy: str | None = "round_robin") -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]
    if lb_policy:
        options.append(("grpc.lb_policy_name", lb_policy))
    return options


def _pem(value: bytes | str | Path | None) -> bytes | None:
    return value if isinstance(value, bytes) or value is None else Path(value).read_bytes()


def channel_credentials(
    credentials: grpc.ChannelCredentials | None,
    root_certificates: bytes | str | Path | None,
    tls: bool,
    certificate_chain: bytes | str | Path | None = None,
    private_key: bytes | str | Path | None = None,
) -> grpc.ChannelCredentials | None:
    """None for plaintext; else the given credentials, or TLS: with these roots (a PEM path or bytes; None:
    the system's), and with a client certificate and key for mutual TLS. Any of them turns TLS on."""
    if credentials is not None:
        return credentials
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate and its private key go together: give both or neither")
    if not (tls or root_certificates is not None or certificate_chain is not None):
        return None
    return grpc.ssl_channel_credentials(root_certificates=_pem(root_certificates), private_key=_pem(private_key),
                                        certificate_chain=_pem(certificate_chain))


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the bearer token, when there is one."""
    return (("authorization", f"Bearer {token}"),) if token else ()


# -- messages -------------------------------------------------------------------------------------


#: A request's admission class, lowest first (the .proto's Priority).
PRIORITIES = ("batch", "normal", "interactive")


@dataclass(frozen=True)
class DecodingOptions:
    """The request's decoding options; None leaves a field unset (the server's default)."""

    beam_size: int | None = None
    max_length: int | None = None
    length_penalty: float | None = None
    num_hypotheses: int | None = None
    return_scores: bool = False
    sampling_temperature: float | None = None
    sampling_topk: int | None = None
    sampling_topp: float | None = None
    seed: int | None = None
    early_stopping: bool | None = None
    split_sentences: bool | None = None  # None/True: each text split into sentences; False: each text whole
    return_alignments: bool = False
    replace_unknowns: bool = False


def build_request(
    texts: str | Sequence[str],
    model: str | None,
    options: DecodingOptions,
    source_language: str | Sequence[str] | None = None,
    target_language: str | Sequence[str] | None = None,
    partial_results: bool = False,
    priority: str | None = None,
    target_prefix: str | Sequence[str] | None = None,
    terminology: Mapping[str, str] | None = None,
) -> pb2.TranslateRequest:
    """A TranslateRequest; a language given as a list is one per text (source_languages/target_languages);
    priority: one of PRIORITIES (None: the server's default, normal); target_prefix: what the translations
    start with, one for all texts or one per text; terminology: source term -> target term."""
    if isinstance(texts, str):
        texts = [texts]
    fields = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
    request = pb2.TranslateRequest(
        texts=list(texts),
        model=model or "",
        options=pb2.DecodingOptions(**fields),
        partial_results=partial_results,
    )
    for source, target in (terminology or {}).items():
        request.terminology.add(source=source, target=target)
    if target_prefix:
        request.target_prefixes.extend([target_prefix] * len(texts) if isinstance(target_prefix, str)
                                       else list(target_prefix))
    if priority is not None:
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        request.priority = pb2.Priority.Value(f"PRIORITY_{priority.upper()}")
    for name, value in (("source_language", source_language), ("target_language", target_language)):
        if isinstance(value, str) or value is None:
            setattr(request, name, value or "")
        else:
            getattr(request, f"{name}s").extend(value)
    return request


def result_from_pb(result: pb2.TranslationResult, model: str) -> TranslationResult:
    if result.hypotheses:
        hypotheses = [h.text for h in result.hypotheses]
        scores = [h.score for h in result.hypotheses if h.HasField("score")]
    else:
        hypotheses = [result.text]
        scores = [result.score] if result.HasField("score") else []
    return TranslationResult(
        index=result.index,
        text=result.text,
        hypotheses=hypotheses,
        scores=scores,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        model=model,
        max_length_reached=result.max_length_reached,
        source_language=result.source_language,
        target_language=result.target_language,
        source_tokens=list(result.source_tokens),
        target_tokens=list(result.target_tokens),
        alignment=list(result.alignment),
    )


def stream_item_from_pb(message: pb2.TranslateStreamResponse) -> TranslationResult | PartialResult | None:
    kind = message.WhichOneof("event")
    if kind == "result":
        return result_from_pb(message.result, message.model)
    if kind == "partial":
        p = message.partial
        return PartialResult(index=p.index, text=p.text, output_tokens=p.output_tokens, model=message.model)
    return None  # an event type newer than this client


def model_from_pb(info: pb2.ModelInfo) -> ModelInfo:
    arch = ModelArchitecture(**{f.name: getattr(info.architecture, f.name)
                                for f in dataclasses.fields(ModelArchitecture)})
    return ModelInfo(
        name=info.name,
        source_language=info.source_language,
        target_language=info.target_language,
        architecture=arch,
        max_source_length=info.max_source_length,
        max_target_length=info.max_target_length,
        device=info.device,
        dtype=info.dtype,
        is_default=info.is_default,
        languages=[Language(code=language.code, tag=language.tag) for language in info.languages],
    )


# -- retries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE only (the call never reached a model, so it is safe to repeat).

    Delays grow exponentially with "equal jitter" (half fixed, half random), so that many
    clients failing together do not retry in lockstep. All attempts share the call's deadline.
    """

    retries: int = DEFAULT_RETRIES
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.retries):
            cap = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
            yield cap / 2 + random.uniform(0, cap / 2)

    @staticmethod
    def retryable(error: grpc.RpcError) -> bool:
        return hasattr(error, "code") and error.code() == grpc.StatusCode.UNAVAILABLE


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (None: no deadline)."""
    return None if deadline is None else deadline - time.monotonic()


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout
