"""Target prefixes through gRPC and the clients: the translation starts with the prefix and equals the
offline Translator's (itself checked against Transformers' decoder_input_ids in tests/model); streamed
partials start from it; bad prefixes are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mtserve.client import TranslationClient
from mtserve.engine.translator import Translator
from mtserve.proto.api import pb2, pb2_grpc

MAX_LENGTH = 12


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translations_continue_from_the_prefix(server: Any, offline: Callable[[str], Translator], helpers: Any,
                                               beam_size: int) -> None:
    texts = helpers.sample_sentences(4, seed=41)
    translator = offline("tiny")
    plain = translator.translate(texts, max_length=MAX_LENGTH, beam_size=beam_size)
    prefixes = ["in in ro", "ro Ö", "Ö in", ""]  # words of the tiny model's output; the last text has none
    with TranslationClient(server.address) as client:
        results = client.translate(texts, "tiny", max_length=MAX_LENGTH, beam_size=beam_size, target_prefix=prefixes)
    expected = translator.translate(texts, max_length=MAX_LENGTH, beam_size=beam_size, target_prefix=prefixes)
    assert [r.text for r in results] == [e.text for e in expected]
    assert [r.output_tokens for r in results] == [e.output_tokens for e in expected]
    for result, prefix in zip(results[:3], prefixes, strict=False):
        assert result.text.startswith(prefix)
    assert results[3].text == plain[3].text  # no prefix: as without any
    assert any(r.text != p.text for r, p in zip(results[:3], plain, strict=False))  # the prefixes changed something


def test_streamed_partials_start_with_the_prefix(server: Any, helpers: Any) -> None:
    [text] = helpers.sample_sentences(1, seed=42)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        request = pb2.TranslateRequest(texts=[text], model="tiny", partial_results=True, target_prefixes=["ro in"],
                                       options=pb2.DecodingOptions(max_length=MAX_LENGTH))
        messages = list(stub.TranslateStream(request, timeout=60))
    partials = [m.partial.text for m in messages if m.WhichOneof("event") == "partial"]
    assert partials and all(p.startswith("ro in") for p in partials)
    assert messages[-1].result.text.startswith(partials[-1])


@pytest.mark.parametrize(("prefixes", "field", "message"), [
    (["a", "b"], "target_prefixes", "2 prefixes for 1 texts"),
    (["ro " * 20], "target_prefixes[0]", "the target prefix is 20 tokens, max_length 12 leaves room for 11"),
])  # fmt: skip
def test_bad_prefixes_name_the_field(server: Any, prefixes: list[str], field: str, message: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.TranslationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Translate(pb2.TranslateRequest(texts=["Tom reads."], model="tiny", target_prefixes=prefixes,
                                                options=pb2.DecodingOptions(max_length=MAX_LENGTH)), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details().startswith(f"{field}: ") and message in failed.value.details()
