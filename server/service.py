"""The gRPC service: protobuf in, plain dataclasses to the engine, protobuf out. Protobuf stops here.

Each call: validate (INVALID_ARGUMENT naming the field and the limit) → tokenize, splitting texts
longer than the model accepts into sentences → submit every sentence as a sequence group to the
model's engine → await its events on an asyncio queue → detokenize and answer (unary) or stream
each text's result as it finishes. A call that ends early (client cancel, deadline) cancels its
groups, so their KV-cache rows are freed at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from mtserve.model.search import Hypothesis, SearchOptions, asks_for_sampling
from mtserve.model.translator import merge_defaults
from mtserve.proto.api import pb2, pb2_grpc

from .config import ServerConfig
from .engine import GroupWork, TextEvent
from .errors import DeadlineExceededError, DrainingError, RequestCancelledError, ValidationError, status_for
from .metrics import Metrics
from .registry import ModelRegistry, ServedModel
from .scheduler import AbortReason, SequenceGroup
from .segment import Segment, SentenceTooLongError, join, segment

_request_ids = itertools.count(1)


@dataclass
class _Text:
    """One text of a call: its sentences' sources, and their hypotheses / streamed tokens as they come."""

    index: int
    segments: list[Segment]
    hypotheses: list[list[Hypothesis] | None] = field(default_factory=list)
    partial: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hypotheses = [None] * len(self.segments)
        self.partial = [[] for _ in self.segments]

    @property
    def done(self) -> bool:
        return all(h is not None for h in self.hypotheses)

    @property
    def input_tokens(self) -> int:
        return sum(len(s.source_ids) for s in self.segments)


@dataclass
class _Call:
    request_id: int
    model: ServedModel
    options: SearchOptions
    return_scores: bool
    texts: list[_Text]
    groups: list[SequenceGroup]
    stream_partial: bool


def _output_tokens(hypothesis: Hypothesis) -> int:
    return len(hypothesis.token_ids) + (0 if hypothesis.stopped_by_length else 1)


class TranslationService(pb2_grpc.TranslationServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        #: Translation calls in progress; draining waits for this to reach 0 before closing the port.
        self.active_calls = 0

    # -- RPCs -------------------------------------------------------------------------------------

    async def Translate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, model_name = time.monotonic(), self._model_label(request.model)
        self.active_calls += 1
        try:
            call = self._prepare(request, context, stream=False)
            model_name = call.model.name
            results = [None] * len(call.texts)
            async for text in self._run(call):
                if isinstance(text, _Text):
                    results[text.index] = self._result(call, text)
            response = pb2.TranslateResponse(results=results, model=call.model.name)
        except BaseException as exc:
            await self._fail(context, exc, model_name, started)
        finally:
            self.active_calls -= 1
        self._observe(model_name, grpc.StatusCode.OK, started)
        return response

    async def TranslateStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started, model_name = time.monotonic(), self._model_label(request.model)
        self.active_calls += 1
        try:
            call = self._prepare(request, context, stream=True)
            model_name = call.model.name
            async for item in self._run(call):
                if isinstance(item, _Text):
                    yield pb2.TranslateStreamResponse(model=model_name, result=self._result(call, item))
                else:
                    text, tokens = item
                    yield pb2.TranslateStreamResponse(
                        model=model_name,
                        partial=pb2.PartialTranslation(
                            index=text.index, text=self._partial(call, text), output_tokens=tokens
                        ),
                    )
        except BaseException as exc:
            await self._fail(context, exc, model_name, started)
        finally:
            self.active_calls -= 1
        self._observe(model_name, grpc.StatusCode.OK, started)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.registry.draining:  # like every call while draining: go elsewhere (UNAVAILABLE)
            status = status_for(DrainingError())
            await context.abort(status.code, status.details)
        return pb2.ListModelsResponse(models=[self._model_info(m) for m in self.registry.ordered()])

    # -- preparing a call -------------------------------------------------------------------------

    def _prepare(self, request: Any, context: grpc.aio.ServicerContext, *, stream: bool) -> _Call:
        config = self.config
        texts = list(request.texts)
        if not texts:
            raise ValidationError("texts", "at least one text is required")
        if len(texts) > config.texts_per_request_limit:
            raise ValidationError("texts", f"{len(texts)} texts, at most {config.texts_per_request_limit} per request")
        for i, text in enumerate(texts):
            if len(text) > config.max_text_chars:
                raise ValidationError(f"texts[{i}]", f"{len(text)} characters, at most {config.max_text_chars}")
        model = self.registry.get(request.model)
        for field_name, given, served in (
            ("source_language", request.source_language, model.source_language),
            ("target_language", request.target_language, model.target_language),
        ):
            if given and served and given.lower() != served.lower():
                raise ValidationError(field_name, f"{given!r} does not match model {model.name!r} ({served!r})")
        options = self._search_options(request.options, model)
        tokenizer, runner = model.translator.tokenizer, model.engine.runner
        call_texts: list[_Text] = []
        for i, text in enumerate(texts):
            if not text.strip():
                call_texts.append(_Text(i, []))
                continue
            try:
                segments = segment(text, tokenizer.encode, model.max_source_length)
            except SentenceTooLongError as exc:
                raise ValidationError(f"texts[{i}]", str(exc)) from None
            for piece in segments:
                try:
                    runner.check(piece.source_ids, options)
                except ValueError as exc:
                    raise ValidationError(f"texts[{i}]", str(exc)) from None
            call_texts.append(_Text(i, segments))

        request_id = next(_request_ids)
        now = time.monotonic()
        remaining = context.time_remaining()
        deadline = now + remaining if remaining is not None else None
        work_stream = stream and request.partial_results and not options.sampling and options.beam_size == 1
        groups = [
            SequenceGroup(
                group_id=(request_id, text.index, j),
                slots=options.rows,
                source_tokens=len(piece.source_ids),
                arrival_time=now,
                request_id=request_id,
                deadline=deadline,
                payload=GroupWork(piece.source_ids, options, work_stream),
            )
            for text in call_texts
            for j, piece in enumerate(text.segments)
        ]
        return _Call(request_id, model, options, request.options.return_scores, call_texts, groups, work_stream)

    def _search_options(self, given: Any, model: ServedModel) -> SearchOptions:
        """Request options over the model's defaults, checked against the server's limits."""
        config = self.config
        defaults = dict(model.translator.defaults)
        defaults["beam_size"] = min(defaults.get("beam_size", 1), config.beam_size_limit)
        max_length_limit = min(config.max_length_limit, model.max_target_length)
        defaults["max_length"] = min(defaults.get("max_length", max_length_limit), max_length_limit)
        values: dict[str, Any] = {}  # the options the request gives, each checked

        def check_range(name: str, value: float, low: float, high: float) -> None:
            if not low <= value <= high:
                raise ValidationError(f"options.{name}", f"must be between {low} and {high}, got {value}")

        if given.HasField("beam_size"):
            check_range("beam_size", given.beam_size, 1, config.beam_size_limit)
            values["beam_size"] = given.beam_size
        if given.HasField("max_length"):
            check_range("max_length", given.max_length, 1, max_length_limit)
            values["max_length"] = given.max_length
        if given.HasField("length_penalty"):
            if not math.isfinite(given.length_penalty):
                raise ValidationError("options.length_penalty", f"must be a finite number, got {given.length_penalty}")
            values["length_penalty"] = given.length_penalty
        if given.HasField("num_hypotheses"):
            check_range("num_hypotheses", given.num_hypotheses, 1, config.num_hypotheses_limit)
            values["num_hypotheses"] = given.num_hypotheses
        if given.HasField("sampling_temperature"):
            if not (math.isfinite(given.sampling_temperature) and given.sampling_temperature > 0):
                raise ValidationError(
                    "options.sampling_temperature", f"must be > 0 and finite, got {given.sampling_temperature}"
                )
            values["sampling_temperature"] = given.sampling_temperature
        if given.HasField("sampling_topk"):
            check_range("sampling_topk", given.sampling_topk, 0, model.translator.config.target_vocab_size)
            values["sampling_topk"] = given.sampling_topk
        if given.HasField("sampling_topp"):
            if not 0 < given.sampling_topp <= 1:
                raise ValidationError("options.sampling_topp", f"must be in (0, 1], got {given.sampling_topp}")
            values["sampling_topp"] = given.sampling_topp
        if given.HasField("seed"):
            values["seed"] = given.seed
        if given.HasField("early_stopping"):
            values["early_stopping"] = given.early_stopping
        # Top-k 0 and top-p 1 mean "no limit" (as the .proto says), so giving them does not turn sampling on.
        sampling = asks_for_sampling(values)
        if sampling and values.get("beam_size", 1) > 1:
            raise ValidationError("options.beam_size", f"sampling works with beam_size 1, got {values['beam_size']}")
        values = merge_defaults(defaults, values)
        if not sampling and values.get("num_hypotheses", 1) > values["beam_size"]:
            raise ValidationError(
                "options.num_hypotheses",
                f"{values['num_hypotheses']} exceeds beam_size {values['beam_size']} (without sampling)",
            )
        try:
            return SearchOptions(**values)
        except ValueError as exc:  # a combination the checks above did not name
            raise ValidationError("options", str(exc)) from None

    # -- running a call ---------------------------------------------------------------------------

    async def _run(self, call: _Call) -> AsyncIterator[_Text | tuple[_Text, int]]:
        """Yield each text when it is done (and (text, tokens) partial updates when streaming them)."""
        for text in call.texts:
            if not text.segments:
                yield text
        if not call.groups:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[TextEvent]] = asyncio.Queue()

        def sink(events: list[TextEvent]) -> None:  # runs in the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, events)

        engine = call.model.engine
        engine.submit(call.request_id, call.groups, sink)
        remaining = sum(1 for t in call.texts if t.segments)
        try:
            while remaining:
                for event in await queue.get():
                    _, index, j = event.group_id
                    text = call.texts[index]
                    if event.error is not None:
                        raise event.error
                    if event.aborted is not None:
                        raise (
                            DeadlineExceededError()
                            if event.aborted == AbortReason.DEADLINE
                            else RequestCancelledError()
                        )
                    if event.new_token_ids:
                        text.partial[j] += event.new_token_ids
                        yield text, sum(len(p) for p in text.partial)
                    if event.hypotheses is not None:
                        text.hypotheses[j] = event.hypotheses
                        if text.done:
                            remaining -= 1
                            yield text
        finally:
            if remaining:
                engine.cancel_request(call.request_id)
            engine.release(call.request_id, call.groups)

    # -- building responses -----------------------------------------------------------------------

    def _result(self, call: _Call, text: _Text) -> Any:
        """A text's result: sentences joined; n-best combines each sentence's i-th hypothesis."""
        result = pb2.TranslationResult(index=text.index, input_tokens=text.input_tokens)
        if not text.segments:
            return result
        decode = call.model.translator.tokenizer.decode
        per_segment = [h or [] for h in text.hypotheses]
        count = max(1, min(call.options.num_hypotheses, max(len(h) for h in per_segment)))
        hypotheses = []
        for rank in range(count):
            chosen = [h[min(rank, len(h) - 1)] for h in per_segment]
            joined = join([decode(h.token_ids) for h in chosen], text.segments)
            score = sum(h.score for h in chosen) / len(chosen)
            tokens = sum(_output_tokens(h) for h in chosen)
            reached = any(h.max_length_reached for h in chosen)
            hypothesis = pb2.Hypothesis(text=joined, output_tokens=tokens, max_length_reached=reached)
            if call.return_scores:
                hypothesis.score = score
            hypotheses.append(hypothesis)
        best = hypotheses[0]
        result.text = best.text
        result.output_tokens = best.output_tokens
        result.max_length_reached = best.max_length_reached
        if call.return_scores:
            result.score = best.score
        if call.options.num_hypotheses > 1:
            result.hypotheses.extend(hypotheses)
        return result

    def _partial(self, call: _Call, text: _Text) -> str:
        decode = call.model.translator.tokenizer.decode
        pieces = [
            decode(h[0].token_ids) if h else decode(p) for h, p in zip(text.hypotheses, text.partial, strict=True)
        ]
        return join(pieces, text.segments)

    def _model_info(self, model: ServedModel) -> Any:
        config = model.translator.config
        tokenizer = model.translator.tokenizer
        return pb2.ModelInfo(
            name=model.name,
            source_language=model.source_language,
            target_language=model.target_language,
            architecture=pb2.ModelArchitecture(
                model_type=config.model_type,
                encoder_layers=config.encoder_layers,
                decoder_layers=config.decoder_layers,
                d_model=config.d_model,
                encoder_attention_heads=config.encoder_attention_heads,
                decoder_attention_heads=config.decoder_attention_heads,
                encoder_ffn_dim=config.encoder_ffn_dim,
                decoder_ffn_dim=config.decoder_ffn_dim,
                source_vocab_size=tokenizer.source_vocab_size,
                target_vocab_size=tokenizer.target_vocab_size,
                parameter_count=model.translator.num_parameters,
            ),
            max_source_length=model.max_source_length,
            max_target_length=min(model.max_target_length, self.config.max_length_limit),
            device=str(model.translator.device),
            dtype=str(model.translator.dtype).removeprefix("torch."),
            is_default=model.is_default,
        )

    # -- errors and metrics -----------------------------------------------------------------------

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException, model: str, started: float) -> None:
        if isinstance(exc, asyncio.CancelledError):
            # grpc.aio cancels the handler when the client goes away *or* the deadline passes: nobody to
            # answer, but the metrics say which (as the interceptor's grpc_code does).
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError.reason
            else:
                code, reason = grpc.StatusCode.CANCELLED, RequestCancelledError.reason
            if self.metrics is not None:
                self.metrics.reject(model, reason)
            self._observe(model, code, started)
            raise exc
        status = status_for(exc)
        if self.metrics is not None:
            self.metrics.reject(model, status.reason)
        self._observe(model, status.code, started)
        await context.abort(status.code, status.details)

    def _model_label(self, name: str) -> str:
        """The metrics label of the model a request names: a served model's name, else "" (so an invalid
        request to a served model is counted under that model, and a request's own strings never are)."""
        name = name or self.registry.default_name or ""
        return name if name in self.registry.models else ""

    def _observe(self, model: str, code: grpc.StatusCode, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(model, code, time.monotonic() - started)
