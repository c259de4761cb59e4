"""Alignments and replace_unknowns through gRPC and the client: what the offline Translator gives (itself
checked against Transformers' cross-attentions in tests/model/test_alignment.py), a split text's second
sentence pointing into its own source tokens, and the n-best list aligned too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from mtserve.client import TranslationClient
from mtserve.engine.segment import split_sentences
from mtserve.engine.translator import Translator
from mtserve.proto.api import pb2, pb2_grpc

MAX_LENGTH = 12


def test_alignments_match_the_translator(server: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    sentences = [s for s in helpers.sample_sentences(30, seed=61) if s.rstrip()[-1] in ".?!"][:2]
    text = f"{sentences[0]} {sentences[1]}"
    assert len(split_sentences(text)) == 2
    translator = offline("tiny")
    with TranslationClient(server.address) as client:
        [result] = client.translate([text], "tiny", max_length=MAX_LENGTH, return_alignments=True)
        [plain] = client.translate([text], "tiny", max_length=MAX_LENGTH)
    [expected] = translator.translate([text], max_length=MAX_LENGTH, return_alignments=True)
    assert result.text == plain.text == expected.text
    assert result.source_tokens == expected.source_tokens
    assert result.alignment == expected.alignment and result.target_tokens
    assert len(result.alignment) == len(result.target_tokens)
    assert all(0 <= a < len(result.source_tokens) for a in result.alignment)
    # The second sentence's tokens point into its own source tokens, after the first sentence's.
    first = translator.translate([sentences[0]], max_length=MAX_LENGTH, return_alignments=True)[0]
    assert result.source_tokens[: len(first.source_tokens)] == first.source_tokens
    assert result.alignment[: len(first.alignment)] == first.alignment
    assert all(a >= len(first.source_tokens) for a in result.alignment[len(first.alignment):])
    assert not plain.alignment and not plain.source_tokens  # only when asked for


def test_every_hypothesis_of_the_nbest_list_is_aligned(server: Any, helpers: Any) -> None:
    texts = helpers.sample_sentences(2, seed=62)
    options = pb2.DecodingOptions(beam_size=3, num_hypotheses=3, max_length=MAX_LENGTH, return_alignments=True)
    with grpc.insecure_channel(server.address) as channel:
        response = pb2_grpc.TranslationServiceStub(channel).Translate(
            pb2.TranslateRequest(texts=texts, model="tiny", options=options), timeout=60)
    for result in response.results:
        assert len(result.hypotheses) == 3
        for hypothesis in result.hypotheses:
            assert len(hypothesis.alignment) == len(hypothesis.target_tokens) > 0
            assert max(hypothesis.alignment) < len(result.source_tokens)
        assert list(result.alignment) == list(result.hypotheses[0].alignment)
