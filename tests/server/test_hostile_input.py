"""Hostile requests through the raw gRPC stubs built from the .proto (not mtserve's client): each ends with
INVALID_ARGUMENT naming the field, or with a translation, in bounded time, and the server translates the
next call. Then property-based fuzzing of every request field (hypothesis): a short run here, a long one
with ``pytest -m slow``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtserve.proto.api import pb2, pb2_grpc

UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
FLOAT_MAX = 3.4028234663852886e38
LIMITS = {"max_texts_per_request": 16, "max_text_chars": 2000, "max_request_chars": 8000, "max_beam_size": 8,
          "max_num_hypotheses": 8, "max_message_bytes": 2 * 2**20}
SECONDS = 30.0  # the bound on any one call here


@pytest.fixture(scope="module")
def hostile_server(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", "short", **LIMITS)) as server:
        yield server


@pytest.fixture()
def stub(hostile_server: Any) -> Iterator[Any]:
    with grpc.insecure_channel(hostile_server.address,
                               options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        yield pb2_grpc.TranslationServiceStub(channel)


def R(texts: Any = ("Tom reads the book.",), **fields: Any) -> Callable[[], Any]:
    """A request builder: `fields` are TranslateRequest fields, or DecodingOptions fields as options__name."""
    def build() -> Any:
        options = {k.removeprefix("o_"): v for k, v in fields.items() if k.startswith("o_")}
        top = {k: v for k, v in fields.items() if not k.startswith("o_")}
        return pb2.TranslateRequest(texts=list(texts() if callable(texts) else texts),
                                    options=pb2.DecodingOptions(**options), **top)
    return build


OK = "ok"
# name -> (request, "ok" or the field the INVALID_ARGUMENT message must start with)
CASES: dict[str, tuple[Callable[[], Any], str]] = {
    "no texts": (R([]), "texts"),
    "one empty text": (R([""]), OK),
    "whitespace": (R(["   \t  "]), OK),
    "newlines only": (R(["\r\n" * 500]), OK),
    "line separators": (R(["\u2028\u2029\u0085"]), OK),
    "NUL characters": (R(["\x00\x00Tom\x00"]), OK),
    "control characters": (R(["\x01\x02\x1b[31mred\x1b[0m\x7f"]), OK),
    "RTL Hebrew": (R(["שלום עולם, מה שלומך?"]), OK),
    "RTL Arabic with marks": (R(["مَرْحَبًا بِالْعَالَمِ"]), OK),
    "bidi overrides": (R(["\u202eevil\u202c text \u2066isolated\u2069"]), OK),
    "combining marks": (R(["e" + "\u0301" * 300]), OK),
    "emoji and ZWJ": (R(["😀🙃 👩‍👩‍👧‍👦 🏳️‍🌈"]), OK),
    "BOM and zero widths": (R(["\ufeffTom\u200b\u200c\u200dreads"]), OK),
    "private use and unassigned": (R(["\ue000\U000f0000\U0010ffff"]), OK),
    "CJK": (R(["我们今天去看电影吧。"]), OK),
    "only punctuation": (R(["?!...;;;---"]), OK),
    "a text at the character limit": (R(["Tom reads. " * 181 + "a" * 9]), OK),
    "a text over the character limit": (R(["a" * 2001]), "texts[0]"),
    "one megabyte of text": (R(["x" * 1_000_000]), "texts[0]"),
    "too many characters in all": (R(["Tom reads the book. " * 99] * 5), "texts"),
    "texts over the limit": (R(["a"] * 17), "texts"),
    "ten thousand texts": (R(["a"] * 10_000), "texts"),
    "a hundred thousand texts": (R(["a"] * 100_000), "texts"),
    "a very long word": (R(["Donaudampfschifffahrt" * 90]), "texts[0]"),
    "a long text that splits": (R(["Tom reads the book. " * 40], model="short"), OK),
    "a sentence too long for the model": (R(["Tom " * 400], model="short"), "texts[0]"),
    "many texts, one bad": (R(["fine."] * 5 + ["a" * 2001]), "texts[5]"),
    "unknown model": (R(model="nope"), "model"),
    "model name of 100 KB": (R(model="m" * 100_000), "model"),
    "model name with NUL": (R(model="tiny\x00"), "model"),
    "wrong source language": (R(source_language="fr"), "source_language"),
    "wrong target language": (R(target_language="xx"), "target_language"),
    "language code of 10 KB": (R(source_language="e" * 10_000), "source_language"),
    "beam 0": (R(o_beam_size=0), "options.beam_size"),
    "beam over the limit": (R(o_beam_size=9), "options.beam_size"),
    "beam at uint32 max": (R(o_beam_size=UINT32_MAX), "options.beam_size"),
    "beam at the limit": (R(o_beam_size=8, o_max_length=8), OK),
    "max_length 0": (R(o_max_length=0), "options.max_length"),
    "max_length at the model's limit": (R(o_max_length=128), OK),
    "max_length over the model's limit": (R(o_max_length=129), "options.max_length"),
    "max_length at uint32 max": (R(o_max_length=UINT32_MAX), "options.max_length"),
    "num_hypotheses 0": (R(o_num_hypotheses=0), "options.num_hypotheses"),
    "num_hypotheses above the beam": (R(o_beam_size=2, o_num_hypotheses=3), "options.num_hypotheses"),
    "num_hypotheses at uint32 max": (R(o_num_hypotheses=UINT32_MAX), "options.num_hypotheses"),
    "n-best with scores": (R(o_beam_size=4, o_num_hypotheses=4, o_return_scores=True, o_max_length=10), OK),
    "temperature NaN": (R(o_sampling_temperature=math.nan), "options.sampling_temperature"),
    "temperature +inf": (R(o_sampling_temperature=math.inf), "options.sampling_temperature"),
    "temperature -inf": (R(o_sampling_temperature=-math.inf), "options.sampling_temperature"),
    "temperature negative": (R(o_sampling_temperature=-1.0), "options.sampling_temperature"),
    "temperature 0": (R(o_sampling_temperature=0.0), "options.sampling_temperature"),
    "temperature tiny": (R(o_sampling_temperature=1e-45, o_max_length=12), OK),
    "temperature at float max": (R(o_sampling_temperature=FLOAT_MAX, o_max_length=12), OK),
    "top_k over the vocabulary": (R(o_sampling_topk=UINT32_MAX), "options.sampling_topk"),
    "top_k 1": (R(o_sampling_topk=1, o_max_length=12), OK),
    "top_p NaN": (R(o_sampling_topp=math.nan), "options.sampling_topp"),
    "top_p 0": (R(o_sampling_topp=0.0), "options.sampling_topp"),
    "top_p negative": (R(o_sampling_topp=-0.5), "options.sampling_topp"),
    "top_p over 1": (R(o_sampling_topp=1.0000001), "options.sampling_topp"),
    "top_p tiny": (R(o_sampling_topp=1e-38, o_max_length=12), OK),
    "length_penalty NaN": (R(o_length_penalty=math.nan), "options.length_penalty"),
    "length_penalty inf": (R(o_length_penalty=math.inf), "options.length_penalty"),
    "length_penalty 1e30": (R(o_length_penalty=1e30, o_beam_size=4), "options.length_penalty"),
    "length_penalty -1e30": (R(o_length_penalty=-1e30), "options.length_penalty"),
    "length_penalty at its bounds": (R(o_length_penalty=10.0, o_beam_size=4, o_max_length=16), OK),
    "seed 0": (R(o_seed=0, o_sampling_topk=5, o_max_length=12), OK),
    "seed at uint64 max": (R(o_seed=UINT64_MAX, o_sampling_topk=5, o_max_length=12), OK),
    "sampling with beams": (R(o_sampling_temperature=0.5, o_beam_size=2), "options.beam_size"),
    "several samples": (R(o_sampling_temperature=0.9, o_num_hypotheses=8, o_max_length=12), OK),
    "early stopping": (R(o_beam_size=3, o_early_stopping=True, o_max_length=12), OK),
    "every numeric field at its maximum": (R(o_beam_size=UINT32_MAX, o_max_length=UINT32_MAX,
                                             o_num_hypotheses=UINT32_MAX, o_sampling_topk=UINT32_MAX,
                                             o_seed=UINT64_MAX, o_length_penalty=FLOAT_MAX,
                                             o_sampling_temperature=FLOAT_MAX, o_sampling_topp=FLOAT_MAX),
                                           "options."),
    "every numeric field at its minimum": (R(o_beam_size=0, o_max_length=0, o_num_hypotheses=0, o_sampling_topk=0,
                                             o_seed=0, o_length_penalty=-FLOAT_MAX,
                                             o_sampling_temperature=-FLOAT_MAX, o_sampling_topp=-FLOAT_MAX),
                                           "options."),
}


def _call(stub: Any, request: Any, rpc: str) -> list[Any]:
    if rpc == "Translate":
        return list(stub.Translate(request, timeout=SECONDS).results)
    return [m.result for m in stub.TranslateStream(request, timeout=SECONDS) if m.WhichOneof("event") == "result"]


def _still_translates(stub: Any) -> None:
    [result] = stub.Translate(pb2.TranslateRequest(texts=["Mary eats."]), timeout=SECONDS).results
    assert result.output_tokens > 0


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("rpc", ["Translate", "TranslateStream"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_request(stub: Any, case: str, rpc: str) -> None:
    build, expected = CASES[case]
    request = build()
    started = time.monotonic()
    if expected == OK:
        results = _call(stub, request, rpc)
        assert sorted(r.index for r in results) == list(range(len(request.texts)))
        assert all(isinstance(r.text, str) for r in results)
    else:
        with pytest.raises(grpc.RpcError) as failed:
            _call(stub, request, rpc)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
        details = failed.value.details()
        assert details.startswith(expected), details
        assert len(details) < 1000, "an error message quotes bounded excerpts only"
    assert time.monotonic() - started < SECONDS
    _still_translates(stub)


_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
_languages = st.sampled_from(["", "de", "fr", "deu", "xx", "zh-TW", "sr-Latn", "__de__", "eng_Latn"]) | st.text(
    max_size=8)
_requests = st.builds(
    lambda texts, model, source, target, per_text, fit, partial, options: pb2.TranslateRequest(
        texts=texts, model=model, source_language=source, target_language=target, partial_results=partial,
        # per-text targets: one per text (cycled), or a list of any length
        target_languages=[per_text[i % len(per_text)] for i in range(len(texts))] if fit and per_text else per_text,
        options=pb2.DecodingOptions(**options)),
    st.lists(st.text(max_size=60), max_size=20),
    st.sampled_from(["", "tiny", "short", "nope"]) | st.text(max_size=20),
    st.sampled_from(["", "en", "EN", "fr"]) | st.text(max_size=8),
    _languages,
    st.lists(_languages, max_size=20),
    st.booleans(),
    st.booleans(),
    st.fixed_dictionaries({}, optional={
        "beam_size": st.integers(0, 12) | st.integers(0, UINT32_MAX),
        "max_length": st.integers(0, 40) | st.integers(0, UINT32_MAX),
        "length_penalty": _floats,
        "num_hypotheses": st.integers(0, 10) | st.integers(0, UINT32_MAX),
        "return_scores": st.booleans(),
        "sampling_temperature": _floats,
        "sampling_topk": st.integers(0, 200) | st.integers(0, UINT32_MAX),
        "sampling_topp": _floats,
        "seed": st.integers(0, UINT64_MAX),
        "early_stopping": st.booleans(),
    }),
)


def _fuzz(stub: Any, request: Any, rpc: str) -> None:
    try:
        results = _call(stub, request, rpc)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert error.details().split(":")[0] in {"texts", "model", "source_language", "target_language",
                                                 "target_languages", "options"} or error.details().startswith(
            ("texts[", "options.", "target_languages[")), \
            error.details()
    else:
        assert sorted(r.index for r in results) == list(range(len(request.texts)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests, rpc=st.sampled_from(["Translate", "TranslateStream"]))
def test_fuzzed_requests_are_answered(stub: Any, request: Any, rpc: str) -> None:
    _fuzz(stub, request, rpc)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests, rpc=st.sampled_from(["Translate", "TranslateStream"]))
def test_fuzzed_requests_are_answered_long(stub: Any, request: Any, rpc: str) -> None:
    _fuzz(stub, request, rpc)
