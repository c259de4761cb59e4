"""The gRPC service: protobuf in, plain dataclasses to the engine, protobuf out. Protobuf stops here.

Each call: validate (INVALID_ARGUMENT naming the field and the limit) → split texts into sentences
(engine/segment.py) and tokenize them (off the event loop when the request is large) → submit
the call as one engine request, a text per sentence → await its events on an asyncio queue →
detokenize and answer (unary) or stream each text's result as it finishes. A call that ends early
(client cancel, deadline) cancels its request, whose rows the engine frees at its next step.

Every call has a request id (the caller's ``x-request-id`` metadata, or a new one), returned in the
trailing metadata and named in every log line about the call, and one access-log line when it ends
(logger ``mtserve.access``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from mtserve.engine.batch import NewText
from mtserve.engine.errors import QueueFullError
from mtserve.engine.events import FinishReason, TextEvent
from mtserve.engine.scheduler import Request, Text
from mtserve.engine.segment import Segment, SentenceTooLongError, hypothesis_text, join, join_hypotheses, segment
from mtserve.engine.terminology import constraints_for
from mtserve.model.options import MAX_LENGTH_PENALTY, SearchOptions, asks_for_sampling, merge_defaults
from mtserve.model.search import Hypothesis
from mtserve.proto.api import pb2, pb2_grpc

from .auth import current_caller
from .config import ServerConfig
from .errors import (
    CallerLimitError,
    DeadlineExceededError,
    DrainingError,
    RequestCancelledError,
    ValidationError,
    cancelled_status,
    status_for,
)
from .languages import text_languages
from .metrics import Metrics
from .registry import ModelRegistry, ServedModel
from .translation_cache import Key, TranslationCache, cacheable

access_log = logging.getLogger("mtserve.access")

# A caller's x-request-id is used as given when it is this short and printable; otherwise a new one.
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
# Requests with more characters than this are prepared (tokenized, split) off the event loop.
_INLINE_CHARACTERS = 4096
_engine_request_ids = itertools.count(1)
# A request's glossary: its terms and each side's length.
MAX_TERMS = 64
MAX_TERM_CHARS = 200


@dataclass
class _Text:
    """One text of a call: its sentences' sources, and their hypotheses / streamed tokens as they come."""

    index: int
    segments: list[Segment]
    languages: tuple[str | None, str | None] = (None, None)  # the model's (source, target) codes
    target_prefix: tuple[int, ...] = ()  # the target ids its translation starts with (not split when given)
    #: Per sentence, the source pieces its alignments point into (tokenized with the rest, when asked for).
    source_pieces: list[list[str]] = field(default_factory=list)
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
    request_id: str  # the caller's x-request-id, or a new one
    model: ServedModel
    options: SearchOptions
    return_scores: bool
    texts: list[_Text]
    request: Request  # what the engine decodes: one text per sentence
    stream_partial: bool
    return_alignments: bool = False
    replace_unknowns: bool = False
    constrained: bool = False  # with terminology


def _priority(given: int) -> int:
    """The scheduler's priority (higher first) for the proto's Priority; unset is normal."""
    if given == pb2.PRIORITY_BATCH:
        return -1
    if given == pb2.PRIORITY_INTERACTIVE:
        return 1
    if given in (pb2.PRIORITY_UNSPECIFIED, pb2.PRIORITY_NORMAL):
        return 0
    raise ValidationError("priority", f"unknown value {given}: PRIORITY_BATCH, PRIORITY_NORMAL or PRIORITY_INTERACTIVE")


@dataclass
class _Outcome:
    """What the access log says of a call, filled in as it goes."""

    method: str
    request_id: str
    model: str
    caller: str  # its token's name, else its address: the unit of --max-texts-per-caller
    started: float = field(default_factory=time.monotonic)
    texts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    accepted: bool = False  # counted in TranslationService.accepted_calls
    counted_for: str | None = None  # the model it is counted for in TranslationService.calls_by_model


class TranslationService(pb2_grpc.TranslationServiceServicer):
    def __init__(self, registry: ModelRegistry, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        #: Calls an engine accepted and has not finished; draining waits for this to reach 0 (calls it is
        #: rejecting do not count: retrying clients must not keep a drain waiting).
        self.accepted_calls = 0
        #: Calls in flight per model, from their preparation to their end: unloading a model waits for 0.
        self.calls_by_model: collections.Counter[str] = collections.Counter()
        #: When the last translation call arrived (the event loop's clock): a drain waits for a quiet moment.
        self.last_call_time = 0.0
        # Set while a drain closes the port: calls refused meanwhile wait for it (MtserveServer.stop).
        self._refusals_held: asyncio.Event | None = None
        #: Texts in flight per caller (the event loop's thread only).
        self.in_flight: Counter[str] = Counter()
        #: Sentences answered from memory (--cache-size), looked up and filled on the event loop's thread.
        self.cache = TranslationCache(config.cache_size) if config.cache_size else None
        # Large requests are tokenized and split here, so that the event loop keeps answering meanwhile.
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mtserve-prepare")

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    def hold_refusals(self) -> None:
        """From now on, calls refused because the server drains wait for :meth:`release_refusals`."""
        self._refusals_held = asyncio.Event()

    def release_refusals(self) -> None:
        if self._refusals_held is not None:
            self._refusals_held.set()

    async def _refuse_draining(self) -> None:
        if self._refusals_held is not None:
            await self._refusals_held.wait()
        raise DrainingError()

    # -- RPCs -------------------------------------------------------------------------------------

    async def Translate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcome = self._begin("Translate", request, context)
        try:
            call = await self._prepare(request, context, outcome, stream=False)
            results: list[Any] = [None] * len(call.texts)
            async for text in self._run(call, outcome.caller):
                if isinstance(text, _Text):
                    results[text.index] = self._result(call, text, outcome)
            response = pb2.TranslateResponse(results=results, model=call.model.name)
        except BaseException as exc:
            await self._fail(context, exc, outcome)
        finally:
            self._leave(outcome)
        self._end(context, outcome, grpc.StatusCode.OK)
        return response

    async def TranslateStream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        outcome = self._begin("TranslateStream", request, context)
        try:
            call = await self._prepare(request, context, outcome, stream=True)
            model_name = call.model.name
            shown: dict[int, str] = {}  # the last partial sent per text: a later sentence's tokens change nothing
            async for item in self._run(call, outcome.caller):
                if isinstance(item, _Text):
                    result = self._result(call, item, outcome)
                    yield pb2.TranslateStreamResponse(model=model_name, result=result)
                else:
                    text, tokens = item
                    partial = self._partial(call, text)
                    if shown.get(text.index) == partial:
                        continue
                    shown[text.index] = partial
                    yield pb2.TranslateStreamResponse(
                        model=model_name,
                        partial=pb2.PartialTranslation(index=text.index, text=partial, output_tokens=tokens),
                    )
        except BaseException as exc:
            await self._fail(context, exc, outcome)
        finally:
            self._leave(outcome)
        self._end(context, outcome, grpc.StatusCode.OK)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.last_call_time = asyncio.get_running_loop().time()
        if self.registry.draining:  # like every call while draining: go elsewhere (UNAVAILABLE)
            try:
                await self._refuse_draining()
            except DrainingError as exc:
                status = status_for(exc)
                await context.abort(status.code, status.details)
        return pb2.ListModelsResponse(models=[self.model_info(m) for m in self.registry.ordered()])

    # -- preparing a call -------------------------------------------------------------------------

    def _begin(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> _Outcome:
        self.last_call_time = asyncio.get_running_loop().time()
        given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
        request_id = given if isinstance(given, str) and _REQUEST_ID.match(given) else uuid.uuid4().hex
        context.set_trailing_metadata((("x-request-id", request_id),))
        caller = current_caller.get() or _peer_host(context.peer())
        return _Outcome(method, request_id, self._model_label(request.model), caller, texts=len(request.texts))

    async def _prepare(
        self, request: Any, context: grpc.aio.ServicerContext, outcome: _Outcome, *, stream: bool
    ) -> _Call:
        """Validate, tokenize and split a request; large ones off the event loop."""
        if self.registry.draining:
            await self._refuse_draining()
        # Counted from here, so that a drain cannot close the port on a call it has let in.
        self.accepted_calls += 1
        outcome.accepted = True
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        if sum(len(text) for text in request.texts) <= _INLINE_CHARACTERS:
            call = self._build_call(request, outcome.request_id, deadline, stream)
        else:
            loop = asyncio.get_running_loop()
            call = await loop.run_in_executor(
                self._prepare_pool, self._build_call, request, outcome.request_id, deadline, stream
            )
        outcome.model = outcome.counted_for = call.model.name
        self.calls_by_model[call.model.name] += 1
        outcome.input_tokens = sum(t.input_tokens for t in call.texts)
        return call

    def _build_call(self, request: Any, request_id: str, deadline: float | None, stream: bool) -> _Call:
        config = self.config
        texts = list(request.texts)
        if not texts:
            raise ValidationError("texts", "at least one text is required")
        if len(texts) > config.texts_per_request_limit:
            raise ValidationError("texts", f"{len(texts)} texts, at most {config.texts_per_request_limit} per request")
        for i, text in enumerate(texts):
            if len(text) > config.max_text_chars:
                raise ValidationError(f"texts[{i}]", f"{len(text)} characters, at most {config.max_text_chars}")
        total = sum(len(text) for text in texts)
        if total > config.max_request_chars:
            raise ValidationError("texts", f"{total} characters in all, at most {config.max_request_chars} per request")
        model = self.registry.get(request.model)
        scheduler = model.engine.scheduler
        if scheduler.num_waiting + len(texts) > scheduler.max_queue:  # refused before any tokenizing
            raise QueueFullError(len(texts), scheduler.num_waiting, scheduler.max_queue)
        tokenizer, core = model.translator.tokenizer, model.engine.core
        pairs = text_languages(tokenizer, model.name, len(texts), request.source_language, request.target_language,
                               request.source_languages, request.target_languages)
        options = self._search_options(request.options, model)
        split = not request.options.HasField("split_sentences") or request.options.split_sentences
        target_prefixes = self._target_prefixes(request, tokenizer)
        glossary = self._glossary(request, options)
        align = request.options.return_alignments or request.options.replace_unknowns
        call_texts: list[_Text] = []
        for i, (text, pair) in enumerate(zip(texts, pairs, strict=True)):
            if not text.strip():
                call_texts.append(_Text(i, [], pair))
                continue
            try:  # a text with a target prefix is translated whole: the prefix starts its translation
                segments = segment(text, functools.partial(tokenizer.encode, source_language=pair[0],
                                                           target_language=pair[1]), model.max_source_length,
                                   pair[0] or model.source_language, split and not target_prefixes[i])
            except SentenceTooLongError as exc:
                raise ValidationError(f"texts[{i}]", str(exc)) from None
            for j, piece in enumerate(segments):
                try:
                    core.check(piece.source_ids, options)
                except ValueError as exc:
                    raise ValidationError(f"texts[{i}]", str(exc)) from None
                if j == 0 and target_prefixes[i]:
                    try:
                        core.check(piece.source_ids, options, tokenizer.target_prefix(pair[1]) + target_prefixes[i])
                    except ValueError as exc:
                        raise ValidationError(f"target_prefixes[{i}]", str(exc)) from None
            pieces = [tokenizer.source_pieces(s.text, *pair) for s in segments] if align else []
            call_texts.append(_Text(i, segments, pair, target_prefix=target_prefixes[i], source_pieces=pieces))

        # Partials stream what can no longer change: greedy and one-sample tokens as they come, the prefix
        # that every live beam shares in beam search; n independent samples have no one partial to show.
        stream_tokens = stream and request.partial_results and not (options.sampling and options.num_hypotheses > 1)
        prefixes = {pair: tokenizer.target_prefix(pair[1]) for pair in set(pairs)}
        engine_texts = [
            Text((text.index, j), options.rows, len(piece.source_ids), options.max_length,
                 work=NewText(piece.source_ids, options, prefixes[text.languages], stream=stream_tokens,
                              target_prefix=text.target_prefix if j == 0 else (), align=align,
                              constraints=constraints_for(piece.text, glossary, tokenizer.encode_prefix)
                              if glossary else ()))
            for text in call_texts
            for j, piece in enumerate(text.segments)
        ]
        if len(engine_texts) > config.max_queue:  # texts are split: count what the queue would hold
            raise ValidationError(
                "texts", f"the request splits into {len(engine_texts)} sentences, more than the queue holds "
                f"(max_queue={config.max_queue}); send fewer or shorter texts")
        engine_request = Request(next(_engine_request_ids), engine_texts, arrival_time=time.monotonic(),
                                 deadline=deadline, priority=_priority(request.priority), label=request_id)
        return _Call(request_id, model, options, request.options.return_scores, call_texts, engine_request,
                     stream_tokens, request.options.return_alignments, request.options.replace_unknowns,
                     bool(glossary))
    def _glossary(self, request: Any, options: SearchOptions) -> dict[str, str]:
        """The request's terminology as source term -> target term (checked; empty: none)."""
        if not request.terminology:
            return {}
        if len(request.terminology) > MAX_TERMS:
            raise ValidationError("terminology", f"{len(request.terminology)} terms, at most {MAX_TERMS}")
        if options.sampling or options.beam_size < 2:
            raise ValidationError("options.beam_size", "terminology needs beam search: beam_size >= 2, no sampling")
        glossary: dict[str, str] = {}
        for i, term in enumerate(request.terminology):
            for side in ("source", "target"):
                value = getattr(term, side)
                if not value.strip() or len(value) > MAX_TERM_CHARS:
                    raise ValidationError(f"terminology[{i}].{side}",
                                          f"{len(value)} characters: give 1 to {MAX_TERM_CHARS}, not blank")
            glossary[term.source] = term.target
        return glossary

    def _target_prefixes(self, request: Any, tokenizer: Any) -> list[tuple[int, ...]]:
        """Each text's target prefix as target ids (empty: none)."""
        given = list(request.target_prefixes)
        if not given:
            return [()] * len(request.texts)
        if len(given) != len(request.texts):
            raise ValidationError("target_prefixes", f"{len(given)} prefixes for {len(request.texts)} texts: give "
                                  "none, or one per text ('' for none)")
        for i, prefix in enumerate(given):
            if len(prefix) > self.config.max_text_chars:
                raise ValidationError(f"target_prefixes[{i}]",
                                      f"{len(prefix)} characters, at most {self.config.max_text_chars}")
        return [tuple(tokenizer.encode_prefix(prefix)) if prefix.strip() else () for prefix in given]

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
            if not (math.isfinite(given.length_penalty) and abs(given.length_penalty) <= MAX_LENGTH_PENALTY):
                raise ValidationError(
                    "options.length_penalty",
                    f"must be a finite number between {-MAX_LENGTH_PENALTY:g} and {MAX_LENGTH_PENALTY:g}, "
                    f"got {given.length_penalty}",
                )
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

    async def _run(self, call: _Call, caller: str) -> AsyncIterator[_Text | tuple[_Text, int]]:
        """Yield each text when it is done (and (text, tokens) partial updates when streaming them)."""
        request = call.request
        keys = self._answer_from_cache(call)
        for text in call.texts:
            if text.done:  # empty, or every sentence answered from the cache
                yield text
        if not request.texts:
            return
        needed, limit = len(request.texts), self.config.max_texts_per_caller or 0
        if self.in_flight[caller] + needed > limit:
            raise CallerLimitError(self.in_flight[caller], needed, limit)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[TextEvent]] = asyncio.Queue()

        def listen(events: list[TextEvent]) -> None:  # runs in the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, events)

        request.listener = listen
        engine = call.model.engine
        engine.submit(request)
        self.in_flight[caller] += needed
        remaining = sum(1 for t in call.texts if not t.done)
        try:
            while remaining:
                for event in await queue.get():
                    index, j = event.text.text_id  # type: ignore[misc]
                    text = call.texts[index]
                    if event.new_token_ids:
                        text.partial[j] += event.new_token_ids
                        if not event.finished:
                            yield text, sum(len(p) for p in text.partial)
                    reason = event.finish_reason
                    if reason is None:
                        continue
                    if reason in (FinishReason.FINISHED, FinishReason.MAX_LENGTH):
                        text.hypotheses[j] = event.hypotheses
                        key = keys.get((index, j))
                        if key is not None and self.cache is not None and event.hypotheses:
                            self.cache.put(key, event.hypotheses)
                        if text.done:
                            remaining -= 1
                            yield text
                    elif reason is FinishReason.FAILED:
                        raise event.error or RuntimeError("decoding failed")
                    elif reason is FinishReason.DEADLINE:
                        raise DeadlineExceededError()
                    else:
                        raise RequestCancelledError()
        finally:
            if remaining:
                engine.cancel(request.request_id)
            self.in_flight[caller] -= needed
            if not self.in_flight[caller]:
                del self.in_flight[caller]

    def _answer_from_cache(self, call: _Call) -> dict[Any, Key]:
        """Fill the sentences the cache knows and take them out of the engine's request; the keys of the
        others, for keeping their results."""
        if (self.cache is None or not cacheable(call.options) or not call.request.texts or call.return_alignments
                or call.replace_unknowns or call.constrained):  # the cache keeps tokens for plain requests
            return {}
        keys: dict[Any, Key] = {}
        misses = []
        for engine_text in call.request.texts:
            work = engine_text.work
            forced = work.prompt or work.forced_prefix  # what the output is made to start with
            key = TranslationCache.key(call.model.name, call.options, forced, work.source_ids)
            found = self.cache.get(key)
            if found is None:
                keys[engine_text.text_id] = key
                misses.append(engine_text)
            else:
                index, j = engine_text.text_id  # type: ignore[misc]
                call.texts[index].hypotheses[j] = found
        hits = len(call.request.texts) - len(misses)
        call.request.texts = misses
        if self.metrics is not None:
            self.metrics.count_cache_lookups(call.model.name, hits, len(misses))
        return keys

    # -- building responses -----------------------------------------------------------------------

    def _result(self, call: _Call, text: _Text, outcome: _Outcome) -> Any:
        """A text's result: sentences joined; n-best combines each sentence's i-th hypothesis."""
        source, target = text.languages
        result = pb2.TranslationResult(
            index=text.index, input_tokens=text.input_tokens,
            source_language=source or call.model.source_language, target_language=target or call.model.target_language,
        )  # fmt: skip
        if not text.segments:
            return result
        tokenizer = call.model.translator.tokenizer
        pieces = text.source_pieces

        def decode(j: int, hypothesis: Hypothesis) -> str:
            return hypothesis_text(tokenizer, hypothesis, pieces[j] if call.replace_unknowns else None)

        hypotheses = []
        for joined in join_hypotheses([h or [] for h in text.hypotheses], text.segments, decode,
                                      call.options.num_hypotheses):
            hypothesis = pb2.Hypothesis(text=joined.text, output_tokens=joined.output_tokens,
                                        max_length_reached=joined.max_length_reached)
            if call.return_scores:
                hypothesis.score = joined.score
            if call.return_alignments and joined.alignment is not None:
                hypothesis.target_tokens.extend(tokenizer.target_tokens(joined.token_ids))
                hypothesis.alignment.extend(joined.alignment)
            hypotheses.append(hypothesis)
        best = hypotheses[0]
        result.text = best.text
        result.output_tokens = best.output_tokens
        result.max_length_reached = best.max_length_reached
        if call.return_scores:
            result.score = best.score
        if call.return_alignments:
            result.source_tokens.extend(piece for p in pieces for piece in p)
            result.target_tokens.extend(best.target_tokens)
            result.alignment.extend(best.alignment)
        if call.options.num_hypotheses > 1:
            result.hypotheses.extend(hypotheses)
        outcome.output_tokens += best.output_tokens
        return result

    def _partial(self, call: _Call, text: _Text) -> str:
        """The finished sentences in front and the first unfinished one's partial: the sentences decode side
        by side, but what is shown only grows at its end, so each partial is a prefix of the next."""
        decode = call.model.translator.tokenizer.decode
        pieces = []
        for hypotheses, partial in zip(text.hypotheses, text.partial, strict=True):
            if not hypotheses:
                pieces.append(decode(partial))
                break
            pieces.append(decode(hypotheses[0].token_ids))
        return join(pieces, text.segments[:len(pieces)])

    def model_info(self, model: ServedModel) -> Any:
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
            languages=[pb2.Language(code=code, tag=model.languages.tag(code)) for code in model.languages.codes],
        )

    # -- errors, metrics and the access log ----------------------------------------------------------

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException, outcome: _Outcome) -> None:
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # grpc.aio cancels the handler (or closes a stream's generator) when the client goes away *or*
            # the deadline passes: nobody to answer, but the metrics say which (as the interceptor does).
            code = cancelled_status(context)
            deadline = code == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = DeadlineExceededError.reason if deadline else RequestCancelledError.reason
            if self.metrics is not None:
                self.metrics.reject(outcome.model, reason)
            self._end(context, outcome, code)
            raise exc
        status = status_for(exc, request_id=outcome.request_id)
        if self.metrics is not None:
            self.metrics.reject(outcome.model, status.reason)
        self._end(context, outcome, status.code)
        await context.abort(status.code, status.details, (("x-request-id", outcome.request_id),))

    def _leave(self, outcome: _Outcome) -> None:
        if outcome.accepted:
            outcome.accepted = False
            self.accepted_calls -= 1
        if outcome.counted_for is not None:
            self.calls_by_model[outcome.counted_for] -= 1
            if not self.calls_by_model[outcome.counted_for]:
                del self.calls_by_model[outcome.counted_for]
            outcome.counted_for = None

    def _end(self, context: grpc.aio.ServicerContext, outcome: _Outcome, code: grpc.StatusCode) -> None:
        seconds = time.monotonic() - outcome.started
        if self.metrics is not None:
            self.metrics.observe_request(outcome.model, code, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info(
            "%s model=%s texts=%d input_tokens=%d output_tokens=%d code=%s duration_ms=%.1f request_id=%s caller=%s",
            outcome.method, outcome.model or "-", outcome.texts, outcome.input_tokens, outcome.output_tokens,
            code.name, seconds * 1000, outcome.request_id, outcome.caller,
            extra={"access": {"method": outcome.method, "model": outcome.model, "texts": outcome.texts,
                              "input_tokens": outcome.input_tokens, "output_tokens": outcome.output_tokens,
                              "code": code.name, "duration_ms": round(seconds * 1000, 1),
                              "request_id": outcome.request_id, "caller": outcome.caller,
                              "peer": context.peer()}},
        )

    def _model_label(self, name: str) -> str:
        """The metrics label of the model a request names: a served model's name, else "" (so an invalid
        request to a served model is counted under that model, and a request's own strings never are)."""
        name = name or self.registry.default_name or ""
        return name if name in self.registry.models else ""


def _peer_host(peer: str) -> str:
    """A caller's address without its port ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7")."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer
