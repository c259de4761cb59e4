"""Terminology through gRPC and the clients: translations contain the glossary's targets where its sources
occur, texts without a term in the same request are unchanged, and bad glossaries are INVALID_ARGUMENT
naming the field."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from mtserve.client import TranslationClient
from mtserve.proto.api import pb2, pb2_grpc

MAX_LENGTH = 16
GLOSSARY = {"Tom": "Thomas", "apple": "pomme"}


def test_translations_contain_the_terms(server: Any, offline: Any) -> None:
    texts = ["Tom reads the book.", "Mary eats an apple with Tom.", "The house is small."]
    with TranslationClient(server.address) as client:
        results = client.translate(texts, "tiny", beam_size=4, max_length=MAX_LENGTH, terminology=GLOSSARY)
        plain = client.translate(texts, "tiny", beam_size=4, max_length=MAX_LENGTH)
    expected = offline("tiny").translate(texts, beam_size=4, max_length=MAX_LENGTH, terminology=GLOSSARY)
    assert [r.text for r in results] == [e.text for e in expected]
    assert "Thomas" in results[0].text
    assert "Thomas" in results[1].text and "pomme" in results[1].text
    assert results[2].text == plain[2].text  # no term applies
    assert results[0].text != plain[0].text


@pytest.mark.parametrize(("options", "terms", "field", "message"), [
    ({}, [("Tom", "Thomas")], "options.beam_size", "terminology needs beam search"),
    ({"beam_size": 4}, [("Tom", " ")], "terminology[0].target", "give 1 to 200, not blank"),
    ({"beam_size": 4}, [(f"w{i}", "x") for i in range(65)], "terminology", "65 terms, at most 64"),
])  # fmt: skip
def test_bad_glossaries_name_the_field(server: Any, options: dict[str, Any], terms: list[tuple[str, str]],
                                       field: str, message: str) -> None:
    request = pb2.TranslateRequest(texts=["Tom reads."], model="tiny",
                                   options=pb2.DecodingOptions(max_length=MAX_LENGTH, **options),
                                   terminology=[pb2.Term(source=s, target=t) for s, t in terms])
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as failed:
        pb2_grpc.TranslationServiceStub(channel).Translate(request, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith(f"{field}: ") and message in failed.value.details()
