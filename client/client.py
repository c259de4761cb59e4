"""The synchronous client.

    from mtserve.client import TranslationClient

    with TranslationClient("localhost:50051") as client:
        for r in client.translate(["Hello world."], beam_size=4):
            print(r.text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mtserve.proto.api import pb2, pb2_grpc

from ._common import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DecodingOptions,
    RetryPolicy,
    build_request,
    call_metadata,
    channel_credentials,
    channel_options,
    channel_target,
    deadline_after,
    model_from_pb,
    remaining,
    result_from_pb,
    stream_item_from_pb,
)
from .types import ModelInfo, PartialResult, TranslationError, TranslationResult

T = TypeVar("T")
_UNSET: Any = object()


class TranslationClient:
    """A blocking client of mtserve's TranslationService.

    Args:
        target_or_targets: "host:port", any gRPC target ("dns:///svc:50051"), or several
            "host:port" (a list or comma-separated) to spread calls over with round_robin.
        timeout: default deadline of a call in seconds, retries included (None: no deadline).
        retries: how many times a call failing with UNAVAILABLE is retried (others never are).
        credentials / root_certificates / tls: TLS; plaintext when none is given. root_certificates
            is PEM bytes or a file path; tls=True uses the system's roots.
        certificate_chain / private_key: the client's certificate and key (PEM bytes or paths), for a
            server that asks for mutual TLS.
        token: a bearer token, sent with every call (``authorization: Bearer ...``).
        lb_policy: the gRPC load-balancing policy ("round_robin", or None for gRPC's pick_first).
    """

    def __init__(
        self,
        target_or_targets: str | Sequence[str],
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_policy: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        root_certificates: bytes | str | Path | None = None,
        tls: bool = False,
        certificate_chain: bytes | str | Path | None = None,
        private_key: bytes | str | Path | None = None,
        token: str | None = None,
        lb_policy: str | None = "round_robin",
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = channel_target(target_or_targets)
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(retries=retries)
        self._metadata = call_metadata(token)
        creds = channel_credentials(credentials, root_certificates, tls, certificate_chain, private_key)
        opts = [*channel_options(lb_policy), *options]
        self._channel = (grpc.secure_channel(self.target, creds, options=opts) if creds is not None
                         else grpc.insecure_channel(self.target, options=opts))
        self._stub = pb2_grpc.TranslationServiceStub(self._channel)
        self._admin = pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- calls ------------------------------------------------------------------------------------

    def translate(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        *,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int | None = None,
        return_scores: bool = False,
        sampling_temperature: float | None = None,
        sampling_topk: int | None = None,
        sampling_topp: float | None = None,
        seed: int | None = None,
        early_stopping: bool | None = None,
        split_sentences: bool | None = None,
        return_alignments: bool = False,
        replace_unknowns: bool = False,
        source_language: str | Sequence[str] | None = None,
        target_language: str | Sequence[str] | None = None,
        priority: str | None = None,
        target_prefix: str | Sequence[str] | None = None,
        terminology: Mapping[str, str] | None = None,
        timeout: float | None = _UNSET,
    ) -> list[TranslationResult]:
        """Translate ``texts``; one result per text, in order. None options take the server's defaults."""
        options = DecodingOptions(beam_size, max_length, length_penalty, num_hypotheses, return_scores,
                                  sampling_temperature, sampling_topk, sampling_topp, seed, early_stopping,
                                  split_sentences, return_alignments, replace_unknowns)
        request = build_request(texts, model, options, source_language, target_language, priority=priority,
                                target_prefix=target_prefix, terminology=terminology)
        response = self._call(self._stub.Translate, request, timeout)
        return [result_from_pb(r, response.model) for r in response.results]

    def translate_stream(
        self,
        texts: str | Sequence[str],
        model: str | None = None,
        *,
        partial: bool = False,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int | None = None,
        return_scores: bool = False,
        sampling_temperature: float | None = None,
        sampling_topk: int | None = None,
        sampling_topp: float | None = None,
        seed: int | None = None,
        early_stopping: bool | None = None,
        split_sentences: bool | None = None,
        return_alignments: bool = False,
        replace_unknowns: bool = False,
        source_language: str | Sequence[str] | None = None,
        target_language: str | Sequence[str] | None = None,
        priority: str | None = None,
        target_prefix: str | Sequence[str] | None = None,
        terminology: Mapping[str, str] | None = None,
        timeout: float | None = _UNSET,
    ) -> Iterator[TranslationResult | PartialResult]:
        """Yield each text's result as soon as it is done (any order; see ``.index``).

        With ``partial=True`` (greedy decoding) also yield PartialResult items with the growing
        text. A failure before the first message is retried like ``translate``; after it, not.
        """
        options = DecodingOptions(beam_size, max_length, length_penalty, num_hypotheses, return_scores,
                                  sampling_temperature, sampling_topk, sampling_topp, seed, early_stopping,
                                  split_sentences, return_alignments, replace_unknowns)
        request = build_request(texts, model, options, source_language, target_language, partial, priority,
                                target_prefix, terminology)
        deadline = deadline_after(self.timeout if timeout is _UNSET else timeout)
        delays = self.retry_policy.delays()
        while True:
            call = self._stub.TranslateStream(request, timeout=remaining(deadline), metadata=self._metadata)
            received = False
            try:
                for message in call:
                    received = True
                    item = stream_item_from_pb(message)
                    if item is not None:
                        yield item
                return
            except grpc.RpcError as error:
                if received:
                    raise TranslationError.from_rpc_error(error, self.target) from None
                self._sleep_or_raise(error, delays, deadline)
            finally:
                call.cancel()  # no-op when done; stops the server's work when the caller stops early

    def list_models(self, *, timeout: float | None = _UNSET) -> list[ModelInfo]:
        response = self._call(self._stub.ListModels, pb2.ListModelsRequest(), timeout)
        return [model_from_pb(m) for m in response.models]

    # -- the Admin service (mtserve serve --admin) -----------------------------------------------

    def load_model(self, name: str, path: str, *, make_default: bool = False,
                   timeout: float | None = _UNSET) -> ModelInfo:
        """Load the model directory ``path`` (on the server's machine) as ``name``; returns when it serves."""
        request = pb2.LoadModelRequest(name=name, path=path, make_default=make_default)
        return model_from_pb(self._call(self._admin.LoadModel, request, timeout).model)

    def unload_model(self, name: str, *, timeout: float | None = _UNSET) -> int:
        """Unload a model once its calls have ended; returns how many were still running."""
        return self._call(self._admin.UnloadModel, pb2.UnloadModelRequest(name=name), timeout).drained_calls

    def health(self, service: str = "", *, timeout: float | None = _UNSET) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the server): "SERVING", "NOT_SERVING", ...

        Not retried: a health check reports what it finds.
        """
        t = self.timeout if timeout is _UNSET else timeout
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=t)
        except grpc.RpcError as error:
            raise TranslationError.from_rpc_error(error, self.target) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) until the server is up and reports SERVING: for a script that starts
        ``mtserve serve`` and calls it at once (loading a model takes seconds)."""
        deadline = time.monotonic() + timeout
        status = "not reachable"
        while (left := deadline - time.monotonic()) > 0:
            try:
                response = self._health.Check(health_pb2.HealthCheckRequest(), timeout=min(left, 5.0),
                                              wait_for_ready=True)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                if status == "SERVING":
                    return
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise TranslationError.from_rpc_error(error, self.target) from None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        raise TranslationError(grpc.StatusCode.DEADLINE_EXCEEDED, f"health is {status}",
                               f"{self.target} did not report SERVING within {timeout:g} s")

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        deadline = deadline_after(self.timeout if timeout is _UNSET else timeout)
        delays = self.retry_policy.delays()
        while True:
            try:
                return method(request, timeout=remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as error:
                self._sleep_or_raise(error, delays, deadline)

    def _sleep_or_raise(self, error: grpc.RpcError, delays: Iterator[float], deadline: float | None) -> None:
        delay = next(delays, None) if RetryPolicy.retryable(error) else None
        left = remaining(deadline)
        if delay is None or (left is not None and left <= delay):
            raise TranslationError.from_rpc_error(error, self.target) from None
        time.sleep(delay)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TranslationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["TranslationClient"]
