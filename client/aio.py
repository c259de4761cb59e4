"""The asyncio client: the same API as TranslationClient, on grpc.aio.

    async with AsyncTranslationClient("localhost:50051") as client:
        results = await client.translate(["Hello world."])
        async for r in client.translate_stream(lines):
            print(r.index, r.text)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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

_UNSET: Any = object()


class AsyncTranslationClient:
    """A grpc.aio client of mtserve's TranslationService; arguments as for TranslationClient.

    Create it, use it and close it on one event loop.
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
        self._channel = (grpc.aio.secure_channel(self.target, creds, options=opts) if creds is not None
                         else grpc.aio.insecure_channel(self.target, options=opts))
        self._stub = pb2_grpc.TranslationServiceStub(self._channel)
        self._admin = pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def translate(
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
        response = await self._call(self._stub.Translate, request, timeout)
        return [result_from_pb(r, response.model) for r in response.results]

    async def translate_stream(
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
    ) -> AsyncIterator[TranslationResult | PartialResult]:
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
                async for message in call:
                    received = True
                    item = stream_item_from_pb(message)
                    if item is not None:
                        yield item
                return
            except grpc.RpcError as error:
                if received:
                    raise TranslationError.from_rpc_error(error, self.target) from None
                await self._sleep_or_raise(error, delays, deadline)
            finally:
                call.cancel()

    async def list_models(self, *, timeout: float | None = _UNSET) -> list[ModelInfo]:
        response = await self._call(self._stub.ListModels, pb2.ListModelsRequest(), timeout)
        return [model_from_pb(m) for m in response.models]

    async def load_model(self, name: str, path: str, *, make_default: bool = False,
                         timeout: float | None = _UNSET) -> ModelInfo:
        """As TranslationClient.load_model."""
        request = pb2.LoadModelRequest(name=name, path=path, make_default=make_default)
        return model_from_pb((await self._call(self._admin.LoadModel, request, timeout)).model)

    async def unload_model(self, name: str, *, timeout: float | None = _UNSET) -> int:
        """As TranslationClient.unload_model."""
        response = await self._call(self._admin.UnloadModel, pb2.UnloadModelRequest(name=name), timeout)
        return response.drained_calls

    async def health(self, service: str = "", *, timeout: float | None = _UNSET) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the server); not retried."""
        t = self.timeout if timeout is _UNSET else timeout
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=t)
        except grpc.RpcError as error:
            raise TranslationError.from_rpc_error(error, self.target) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def wait_until_serving(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) until the server is up and reports SERVING (see TranslationClient)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        status = "not reachable"
        while (left := deadline - loop.time()) > 0:
            try:
                response = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=min(left, 5.0),
                                                    wait_for_ready=True)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                if status == "SERVING":
                    return
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise TranslationError.from_rpc_error(error, self.target) from None
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        raise TranslationError(grpc.StatusCode.DEADLINE_EXCEEDED, f"health is {status}",
                               f"{self.target} did not report SERVING within {timeout:g} s")

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = deadline_after(self.timeout if timeout is _UNSET else timeout)
        delays = self.retry_policy.delays()
        while True:
            try:
                return await method(request, timeout=remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as error:
                await self._sleep_or_raise(error, delays, deadline)

    async def _sleep_or_raise(self, error: grpc.RpcError, delays: Iterator[float], deadline: float | None) -> None:
        delay = next(delays, None) if RetryPolicy.retryable(error) else None
        left = remaining(deadline)
        if delay is None or (left is not None and left <= delay):
            raise TranslationError.from_rpc_error(error, self.target) from None
        await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncTranslationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncTranslationClient"]
