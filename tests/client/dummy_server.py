"""A real grpc.aio server on an ephemeral port, in a background thread, with fake servicers (no model).

The fake "translation" upper-cases the text, so tests can check what reached the server and back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mtserve.proto.api import SERVICE_NAME, pb2, pb2_grpc


def fake_translation(text: str) -> str:
    return text.upper()


class DummyServicer(pb2_grpc.TranslationServiceServicer):
    """Answers every RPC without a model. ``model="invalid"`` fails with INVALID_ARGUMENT."""

    def __init__(self, name: str = "dummy") -> None:
        self.name = name
        self.requests: list[pb2.TranslateRequest] = []
        self.calls = 0

    def _result(self, request: pb2.TranslateRequest, index: int) -> pb2.TranslationResult:
        text = request.texts[index]
        options = request.options
        n = options.num_hypotheses if options.HasField("num_hypotheses") else 1
        result = pb2.TranslationResult(index=index, text=fake_translation(text),
                                       input_tokens=len(text.split()) + 1, output_tokens=len(text.split()) + 1)
        if options.return_scores:
            result.score = -0.5
        # Like the real server: a translation as long as max_length is flagged as possibly cut short.
        result.max_length_reached = options.HasField("max_length") and result.output_tokens >= options.max_length
        if n > 1:
            for k in range(n):
                h = pb2.Hypothesis(text=fake_translation(text) + ("" if k == 0 else f" #{k}"), output_tokens=k + 1)
                if options.return_scores:
                    h.score = -0.5 - k
                result.hypotheses.append(h)
        return result

    async def Translate(self, request: pb2.TranslateRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        self.requests.append(request)
        if request.model == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts[0]: has 12 characters, the limit is 10")
        return pb2.TranslateResponse(model=request.model or self.name,
                                     results=[self._result(request, i) for i in range(len(request.texts))])

    async def TranslateStream(self, request: pb2.TranslateRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        self.requests.append(request)
        model = request.model or self.name
        # Results in reverse order: callers must use .index, not the arrival order.
        for i in reversed(range(len(request.texts))):
            if request.partial_results:
                words = fake_translation(request.texts[i]).split()
                for k in range(1, len(words)):
                    yield pb2.TranslateStreamResponse(
                        model=model, partial=pb2.PartialTranslation(index=i, text=" ".join(words[:k]), output_tokens=k))
            yield pb2.TranslateStreamResponse(model=model, result=self._result(request, i))

    async def ListModels(self, request: pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        arch = pb2.ModelArchitecture(model_type="marian", encoder_layers=2, decoder_layers=3, d_model=64,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                     decoder_ffn_dim=128, source_vocab_size=1000, target_vocab_size=900,
                                     parameter_count=123_456)
        return pb2.ListModelsResponse(models=[
            pb2.ModelInfo(name=self.name, source_language="en", target_language="de", architecture=arch,
                          max_source_length=512, max_target_length=256, device="cpu", dtype="float32",
                          is_default=True),
            pb2.ModelInfo(name="other", architecture=arch, device="cpu", dtype="float32"),
        ])


class FlakyServicer(DummyServicer):
    """Fails the first ``failures`` calls of every RPC with ``code``, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__()
        self.failures = failures
        self.code = code

    async def Translate(self, request: pb2.TranslateRequest, context: grpc.aio.ServicerContext) -> Any:
        if self.calls < self.failures:
            self.calls += 1
            await context.abort(self.code, f"failure {self.calls} of {self.failures}")
        return await super().Translate(request, context)

    async def TranslateStream(self, request: pb2.TranslateRequest, context: grpc.aio.ServicerContext) -> Any:
        if self.calls < self.failures:
            self.calls += 1
            await context.abort(self.code, f"failure {self.calls} of {self.failures}")
        async for message in super().TranslateStream(request, context):
            yield message


class SlowServicer(DummyServicer):
    async def Translate(self, request: pb2.TranslateRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        await asyncio.sleep(5)
        return pb2.TranslateResponse()


class ServerThread:
    """``with ServerThread(servicer) as server:`` serves on 127.0.0.1:``server.port`` until the block ends."""

    def __init__(self, servicer: pb2_grpc.TranslationServiceServicer,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.servicer = servicer
        self.interceptors = list(interceptors)
        self.port = 0
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = grpc.aio.server(interceptors=self.interceptors)
            pb2_grpc.add_TranslationServiceServicer_to_server(self.servicer, server)
            health_servicer = health.aio.HealthServicer()
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            self.port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
        except BaseException as e:
            self._error = e
            self._started.set()
            raise
        self._started.set()
        await self._stop.wait()
        await server.stop(None)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
