"""Request validation (INVALID_ARGUMENT naming the field and the limit), empty texts, and long texts that are
split into sentences, translated and rejoined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mtserve.engine.translator import Translator
from mtserve.proto.api import pb2, pb2_grpc

LIMITS = {"max_texts_per_request": 8, "max_text_chars": 2000, "max_beam_size": 8, "max_num_hypotheses": 8}


@pytest.fixture()
def stub(channel: grpc.Channel) -> Any:
    return pb2_grpc.TranslationServiceStub(channel)


def _request(texts: list[str] | None = None, **options: Any) -> Any:
    return pb2.TranslateRequest(texts=["Tom eats an apple."] if texts is None else texts,
                                options=pb2.DecodingOptions(**options))


# (request, the field the message must start with, a phrase it must contain)
INVALID: dict[str, tuple[Any, str, str]] = {
    "no texts": (_request([]), "texts", "at least one text"),
    "too many texts": (_request(["a."] * 9), "texts", "at most 8"),
    "text too long": (_request(["ok.", "x" * 2001]), "texts[1]", "2001 characters, at most 2000"),
    "unknown model": (pb2.TranslateRequest(texts=["a."], model="nope"), "model", "unknown model 'nope'"),
    "source language": (pb2.TranslateRequest(texts=["a."], source_language="fr"), "source_language", "'en'"),
    # The test model is multi-target (>>deu<<, >>fra<< in its vocabulary): Spanish is not one of them.
    "target language": (pb2.TranslateRequest(texts=["a."], target_language="es"), "target_language",
                        "'es' is not one of the model's 2 languages (ListModels lists"),
    "target language code": (pb2.TranslateRequest(texts=["a."], target_language="not a tag"), "target_language",
                             "'not a tag' is not a language code"),
    "per-text languages": (pb2.TranslateRequest(texts=["a.", "b."], target_languages=["de"]), "target_languages",
                           "1 entries for 2 texts"),
    "per-text language": (pb2.TranslateRequest(texts=["a.", "b."], target_languages=["de", "xx"]),
                          "target_languages[1]", "'xx' is not one of"),
    "beam_size 0": (_request(beam_size=0), "options.beam_size", "between 1 and 8, got 0"),
    "beam_size over limit": (_request(beam_size=9), "options.beam_size", "between 1 and 8, got 9"),
    "num_hypotheses over beam": (_request(beam_size=2, num_hypotheses=3), "options.num_hypotheses",
                                 "3 exceeds beam_size 2"),
    "num_hypotheses over limit": (_request(beam_size=8, num_hypotheses=9), "options.num_hypotheses",
                                  "between 1 and 8, got 9"),
    "num_hypotheses 0": (_request(num_hypotheses=0), "options.num_hypotheses", "got 0"),
    "max_length 0": (_request(max_length=0), "options.max_length", "between 1 and 128, got 0"),
    # The default model has 128 positions, below the server's --max-length-limit (512).
    "max_length over limit": (_request(max_length=129), "options.max_length", "between 1 and 128, got 129"),
    "temperature 0": (_request(sampling_temperature=0.0), "options.sampling_temperature", "must be > 0"),
    "temperature negative": (_request(sampling_temperature=-1.0), "options.sampling_temperature", "got -1"),
    "temperature nan": (_request(sampling_temperature=float("nan")), "options.sampling_temperature", "nan"),
    "topp 0": (_request(sampling_topp=0.0), "options.sampling_topp", "must be in (0, 1], got 0"),
    "topp over 1": (_request(sampling_topp=1.5), "options.sampling_topp", "got 1.5"),
    "topk over vocabulary": (_request(sampling_topk=100_000), "options.sampling_topk", "got 100000"),
    "sampling with beams": (_request(sampling_temperature=0.7, beam_size=2), "options.beam_size",
                            "sampling works with beam_size 1, got 2"),
    "length_penalty inf": (_request(length_penalty=float("inf")), "options.length_penalty", "finite"),
}


@pytest.mark.parametrize("rpc", ["Translate", "TranslateStream"])
@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_request(stub: Any, case: str, rpc: str) -> None:
    request, field, phrase = INVALID[case]
    with pytest.raises(grpc.RpcError) as failed:
        if rpc == "Translate":
            stub.Translate(request, timeout=30)
        else:
            list(stub.TranslateStream(request, timeout=30))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failed.value.details()
    assert details.startswith(f"{field}: "), details
    assert phrase in details, details


def test_unknown_model_lists_the_served_ones(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        stub.Translate(pb2.TranslateRequest(texts=["a."], model="nope"), timeout=30)
    assert "this server serves 'endless', 'short', 'tiny'" in failed.value.details()


def test_matching_languages_and_limits_are_accepted(stub: Any) -> None:
    """The boundaries themselves are valid; language codes compare case-insensitively; top-k 0 and top-p 1
    given explicitly mean "no limit" (as the .proto says), so they do not turn beam search into sampling."""
    request = pb2.TranslateRequest(
        texts=["a."] * 8,
        source_language="EN",
        target_language="de",
        options=pb2.DecodingOptions(beam_size=8, num_hypotheses=8, max_length=2, sampling_topk=0, sampling_topp=1.0),
    )
    response = stub.Translate(request, timeout=60)
    assert len(response.results) == 8
    assert all(len(r.hypotheses) == 8 for r in response.results)
    request.options.ClearField("sampling_topk")
    request.options.ClearField("sampling_topp")
    assert stub.Translate(request, timeout=60) == response
    sampled = stub.Translate(_request(sampling_temperature=0.5, sampling_topp=0.9, seed=1, max_length=4), timeout=60)
    assert len(sampled.results) == 1


def test_empty_texts_translate_to_empty_strings(server: Any, stub: Any) -> None:
    """An empty or whitespace-only text gives an empty translation with 0 tokens, without running the model."""
    engine = server.engine("tiny")
    steps = engine.steps
    response = stub.Translate(_request(["", "   ", "\n\t"], return_scores=True), timeout=30)
    assert [(r.index, r.text, r.input_tokens, r.output_tokens) for r in response.results] == [
        (0, "", 0, 0), (1, "", 0, 0), (2, "", 0, 0)
    ]
    assert not any(r.HasField("score") for r in response.results)
    assert engine.steps == steps
    streamed = list(stub.TranslateStream(_request([""]), timeout=30))
    assert [(m.result.index, m.result.text, m.result.output_tokens) for m in streamed] == [(0, "", 0)]


# -- long texts ------------------------------------------------------------------------------------------

SENTENCES = ["Tom eats an apple today.", "Mary sells the house!", "The old man finds three books?",
             "My friend paints a red car."]
SEPARATORS = [" ", "\n", "  ", ""]
LONG_TEXT = "".join(s + sep for s, sep in zip(SENTENCES, SEPARATORS, strict=True))


def test_long_text_is_split_and_rejoined(server: Any, stub: Any, offline: Callable[[str], Translator],
                                         helpers: Any) -> None:
    translator = offline("short")
    limit = translator.config.max_position_embeddings
    assert len(translator.tokenizer.encode(LONG_TEXT)) > limit  # the premise: too long as a whole
    assert all(len(translator.tokenizer.encode(s)) <= limit for s in SENTENCES)
    max_length = 10
    alone = translator.translate(SENTENCES, max_length=max_length)
    expected = "".join(t.text + sep for t, sep in zip(alone, SEPARATORS, strict=True)).strip()

    request = pb2.TranslateRequest(texts=["Tom eats.", LONG_TEXT], model="short",
                                   options=pb2.DecodingOptions(max_length=max_length))
    [short, long] = stub.Translate(request, timeout=60).results
    assert long.text == expected
    assert "\n" in long.text  # the original separators, not just spaces
    assert long.input_tokens == sum(t.input_tokens for t in alone)
    assert long.output_tokens == sum(helpers.expected_output_tokens(t, max_length) for t in alone)
    assert short.text == translator.translate(["Tom eats."], max_length=max_length)[0].text
    streamed = {m.result.index: m.result for m in stub.TranslateStream(request, timeout=60)}
    assert streamed[1].text == expected


def test_single_sentence_too_long_is_invalid(stub: Any, offline: Callable[[str], Translator]) -> None:
    sentence = " ".join(["Tom eats an apple and"] * 8) + " a pear."
    assert len(offline("short").tokenizer.encode(sentence)) > 32
    request = pb2.TranslateRequest(texts=["Fine.", f"Short one. {sentence}"], model="short")
    with pytest.raises(grpc.RpcError) as failed:
        stub.Translate(request, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failed.value.details()
    assert details.startswith("texts[1]: "), details
    assert "the model accepts at most 32" in details, details
