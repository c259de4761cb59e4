"""Texts of several sentences: split (engine/segment.py) the same way by the gRPC service and the offline
Translator, each sentence decoded exactly as it is alone, joined with the original whitespace; streamed
partials only grow; ``split_sentences: false`` keeps a text whole."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mtserve.engine.segment import split_sentences
from mtserve.engine.translator import Translator
from mtserve.model.options import SearchOptions
from mtserve.proto.api import pb2, pb2_grpc

MAX_LENGTH = 12


@pytest.fixture()
def stub(channel: grpc.Channel) -> Any:
    return pb2_grpc.TranslationServiceStub(channel)


@pytest.fixture(scope="module")
def sentences(helpers: Any) -> list[str]:
    """Three sentences that end in a full stop, a question or exclamation mark (so that they split)."""
    found = [s for s in helpers.sample_sentences(40, seed=31) if s.rstrip()[-1] in ".?!"][:3]
    assert len(found) == 3
    return found


def _text(sentences: list[str]) -> str:
    return f"{sentences[0]}  {sentences[1]}\n{sentences[2]}"


def test_the_text_splits_into_the_sentences(sentences: list[str]) -> None:
    assert split_sentences(_text(sentences)) == [(sentences[0], "  "), (sentences[1], "\n"), (sentences[2], "")]


def test_the_translator_translates_each_sentence_as_alone(offline: Callable[[str], Translator],
                                                          sentences: list[str]) -> None:
    translator = offline("tiny")
    alone = translator.translate(sentences, beam_size=2, max_length=MAX_LENGTH)
    [split] = translator.translate([_text(sentences)], beam_size=2, max_length=MAX_LENGTH)
    assert all(a.text for a in alone)
    assert split.text == f"{alone[0].text}  {alone[1].text}\n{alone[2].text}"
    assert split.token_ids == [token for a in alone for token in a.token_ids]
    assert split.input_tokens == sum(a.input_tokens for a in alone)
    assert split.output_tokens == sum(a.output_tokens for a in alone)
    # Whole: what generate() gives on the whole text's ids.
    [whole] = translator.translate([_text(sentences)], beam_size=2, max_length=MAX_LENGTH, split_sentences=False)
    ids = translator.tokenizer.encode(_text(sentences))
    [hypotheses] = translator.generate([ids], SearchOptions(beam_size=2, max_length=MAX_LENGTH))
    assert whole.input_tokens == len(ids) < split.input_tokens
    assert whole.token_ids == hypotheses[0].token_ids


@pytest.mark.parametrize("beam_size", [1, 3])
def test_grpc_splits_as_the_translator_does(stub: Any, offline: Callable[[str], Translator], sentences: list[str],
                                            beam_size: int) -> None:
    translator = offline("tiny")
    options = pb2.DecodingOptions(beam_size=beam_size, max_length=MAX_LENGTH, num_hypotheses=beam_size)
    whole = pb2.DecodingOptions(beam_size=beam_size, max_length=MAX_LENGTH, split_sentences=False)
    response = stub.Translate(pb2.TranslateRequest(texts=[_text(sentences), sentences[1]], model="tiny",
                                                   options=options), timeout=60)
    [kept] = stub.Translate(pb2.TranslateRequest(texts=[_text(sentences)], model="tiny", options=whole),
                            timeout=60).results
    [split, single] = response.results
    [expected, expected_single] = translator.translate([_text(sentences), sentences[1]], beam_size=beam_size,
                                                       max_length=MAX_LENGTH, num_hypotheses=beam_size)
    assert split.text == expected.text and split.output_tokens == expected.output_tokens
    assert split.input_tokens == expected.input_tokens
    assert single.text == expected_single.text
    if beam_size > 1:  # the n-best list: rank k joins each sentence's k-th hypothesis
        assert [h.text for h in split.hypotheses] == [h.text for h in expected.hypotheses]
    [expected_whole] = translator.translate([_text(sentences)], beam_size=beam_size, max_length=MAX_LENGTH,
                                            split_sentences=False)
    assert kept.text == expected_whole.text and kept.input_tokens == expected_whole.input_tokens


def test_streamed_partials_show_finished_sentences_then_one_growing(
    stub: Any, offline: Callable[[str], Translator], sentences: list[str]
) -> None:
    """The sentences decode side by side; a partial shows the finished ones in front and the first
    unfinished one's tokens, so each partial is a prefix of the next and of the result."""
    alone = offline("tiny").translate(sentences, max_length=MAX_LENGTH)
    request = pb2.TranslateRequest(texts=[_text(sentences)], model="tiny", partial_results=True,
                                   options=pb2.DecodingOptions(max_length=MAX_LENGTH))
    messages = list(stub.TranslateStream(request, timeout=60))
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"partial"}
    partials = [m.partial.text for m in messages[:-1]]
    result = messages[-1].result.text
    assert result == f"{alone[0].text}  {alone[1].text}\n{alone[2].text}"
    for shorter, longer in itertools.pairwise(partials):
        assert longer.startswith(shorter) and shorter != longer
    assert result.startswith(partials[-1])
    assert partials[0] and alone[0].text.startswith(partials[0])  # the first sentence grows first
