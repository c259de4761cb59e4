"""Round trips of every TranslationService RPC against a real in-process server, checked against offline
``Translator.translate`` of the same model."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from mtserve.engine.translator import Translator
from mtserve.model.checkpoint import load_model
from mtserve.proto.api import pb2, pb2_grpc

MAX_LENGTH = 24


@pytest.fixture()
def stub(channel: grpc.Channel) -> Any:
    return pb2_grpc.TranslationServiceStub(channel)


def _texts(helpers: Any) -> list[str]:
    # An empty text in the middle: it must keep its index and give an empty result.
    texts = helpers.sample_texts(5)
    texts.insert(2, "")
    return texts


def test_translate_matches_offline(stub: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    texts = _texts(helpers)
    expected = offline("tiny").translate(texts, max_length=MAX_LENGTH)
    request = pb2.TranslateRequest(
        texts=texts, options=pb2.DecodingOptions(max_length=MAX_LENGTH, return_scores=True)
    )
    response = stub.Translate(request, timeout=60)

    assert response.model == "tiny"  # the default model, as no model was named
    assert [r.index for r in response.results] == list(range(len(texts)))
    for result, want in zip(response.results, expected, strict=True):
        assert result.text == want.text
        assert result.input_tokens == want.input_tokens
        assert result.output_tokens == helpers.expected_output_tokens(want, MAX_LENGTH)
        assert result.max_length_reached == (result.output_tokens == MAX_LENGTH) == want.max_length_reached
        if texts[result.index]:
            assert result.HasField("score")
            assert result.score == pytest.approx(want.score, abs=1e-4)
        else:  # nothing was decoded, so there is nothing to score
            assert (result.text, result.input_tokens, result.output_tokens) == ("", 0, 0)
            assert not result.HasField("score")
        assert not result.hypotheses  # n-best only when num_hypotheses > 1
    # The fixture model ends texts at different lengths, some at max_length: both paths are exercised.
    lengths = {r.output_tokens for r in response.results if r.input_tokens}
    assert MAX_LENGTH in lengths and min(lengths) < MAX_LENGTH


def test_translate_nbest_and_named_model(stub: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    texts = ["Tom eats an apple.", "Mary sells the house today.", "The cat likes fresh bread!"]
    expected = offline("short").translate(texts, max_length=12, beam_size=4, num_hypotheses=3)
    request = pb2.TranslateRequest(
        texts=texts,
        model="short",
        options=pb2.DecodingOptions(max_length=12, beam_size=4, num_hypotheses=3, return_scores=True),
    )
    response = stub.Translate(request, timeout=60)
    assert response.model == "short"
    for result, want in zip(response.results, expected, strict=True):
        assert [h.text for h in result.hypotheses] == [h.text for h in want.hypotheses]
        assert [h.score for h in result.hypotheses] == pytest.approx([h.score for h in want.hypotheses], abs=1e-4)
        assert result.text == result.hypotheses[0].text == want.text


def test_early_stopping_reaches_the_beam_search(
    stub: Any, offline: Callable[[str], Translator], helpers: Any
) -> None:
    texts = [t for t in helpers.sample_texts(8) if t]
    translator = offline("tiny")
    early = translator.translate(texts, max_length=MAX_LENGTH, beam_size=4, early_stopping=True)
    full = translator.translate(texts, max_length=MAX_LENGTH, beam_size=4)
    assert [t.text for t in early] != [t.text for t in full], "the fixture must make early stopping matter"
    for flag, expected in ((True, early), (False, full)):
        options = pb2.DecodingOptions(max_length=MAX_LENGTH, beam_size=4, early_stopping=flag)
        response = stub.Translate(pb2.TranslateRequest(texts=texts, options=options), timeout=60)
        assert [r.text for r in response.results] == [t.text for t in expected]


def test_stream_tags_every_text_once(stub: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    texts = _texts(helpers)
    expected = offline("tiny").translate(texts, max_length=MAX_LENGTH)
    request = pb2.TranslateRequest(texts=texts, options=pb2.DecodingOptions(max_length=MAX_LENGTH))
    messages = list(stub.TranslateStream(request, timeout=60))

    assert {m.model for m in messages} == {"tiny"}
    assert all(m.WhichOneof("event") == "result" for m in messages)  # no partials unless asked
    indices = [m.result.index for m in messages]
    assert sorted(indices) == list(range(len(texts)))
    by_index = {m.result.index: m.result for m in messages}
    for i, want in enumerate(expected):
        assert by_index[i].text == want.text
        assert by_index[i].output_tokens == helpers.expected_output_tokens(want, MAX_LENGTH)


def test_stream_partial_results_grow(stub: Any, offline: Callable[[str], Translator], helpers: Any) -> None:
    texts = helpers.sample_texts(2, seed=3)
    max_length = 8
    expected = offline("endless").translate(texts, max_length=max_length)
    request = pb2.TranslateRequest(
        texts=texts, model="endless", partial_results=True, options=pb2.DecodingOptions(max_length=max_length)
    )
    messages = list(stub.TranslateStream(request, timeout=60))

    for index, want in enumerate(expected):
        events = [
            (m.WhichOneof("event"), getattr(m, m.WhichOneof("event")))
            for m in messages
            if getattr(m, m.WhichOneof("event")).index == index
        ]
        kinds = [kind for kind, _ in events]
        # Every generated token but the final </s> as a partial, then the result, last.
        assert kinds == ["partial"] * (max_length - 1) + ["result"]
        partials = [event for kind, event in events if kind == "partial"]
        result = events[-1][1]
        assert [p.output_tokens for p in partials] == list(range(1, max_length))
        assert result.text == want.text and result.output_tokens == max_length
        assert partials[-1].text == result.text
        for shorter, longer in itertools.pairwise(partials):
            assert result.text.startswith(shorter.text) and len(shorter.text) <= len(longer.text)
        assert partials[0].text  # the first token already shows


def test_stream_partials_with_beam_search_never_take_anything_back(stub: Any, helpers: Any) -> None:
    """Beam search streams the prefix its live beams share: every partial is a prefix of the final result."""
    texts = helpers.sample_texts(8, seed=11)
    request = pb2.TranslateRequest(texts=texts, partial_results=True,
                                   options=pb2.DecodingOptions(max_length=24, beam_size=4))
    messages = list(stub.TranslateStream(request, timeout=60))
    finals = {m.result.index: m.result for m in messages if m.WhichOneof("event") == "result"}
    assert sorted(finals) == list(range(len(texts)))
    alone = stub.Translate(pb2.TranslateRequest(texts=texts, options=request.options), timeout=60)
    assert [finals[i].text for i in range(len(texts))] == [r.text for r in alone.results]  # streaming changes nothing
    partials = [m.partial for m in messages if m.WhichOneof("event") == "partial"]
    assert partials, "beam search streamed no partial at all"
    for index in range(len(texts)):
        mine = [p for p in partials if p.index == index]
        assert [p.output_tokens for p in mine] == sorted(p.output_tokens for p in mine)
        for partial in mine:
            assert finals[index].text.startswith(partial.text), (partial.text, finals[index].text)
            assert partial.output_tokens < finals[index].output_tokens


def test_stream_partial_results_ignored_for_several_samples(stub: Any) -> None:
    request = pb2.TranslateRequest(
        texts=["Tom reads the house."],
        model="endless",
        partial_results=True,
        options=pb2.DecodingOptions(max_length=6, sampling_topk=5, num_hypotheses=2, seed=3),
    )
    messages = list(stub.TranslateStream(request, timeout=60))
    assert [m.WhichOneof("event") for m in messages] == ["result"]
    assert messages[0].result.output_tokens == 6


def test_list_models(stub: Any, offline: Callable[[str], Translator]) -> None:
    response = stub.ListModels(pb2.ListModelsRequest(), timeout=30)
    # The default model first, then the others by name.
    assert [m.name for m in response.models] == ["tiny", "endless", "short"]
    assert [m.is_default for m in response.models] == [True, False, False]
    for info in response.models:
        translator = offline(info.name)
        positions = translator.config.max_position_embeddings
        assert (info.source_language, info.target_language) == ("en", "de")  # from tokenizer_config.json
        assert info.max_source_length == positions
        assert info.max_target_length == positions
        assert (info.device, info.dtype) == ("cpu", "float32")
        arch = info.architecture
        assert arch.model_type == "marian"
        assert (arch.encoder_layers, arch.decoder_layers, arch.d_model) == (2, 2, 32)
        assert (arch.encoder_attention_heads, arch.decoder_attention_heads) == (4, 4)
        assert (arch.encoder_ffn_dim, arch.decoder_ffn_dim) == (64, 64)
        assert arch.source_vocab_size == translator.tokenizer.source_vocab_size
        assert arch.target_vocab_size == translator.tokenizer.target_vocab_size
        # Counted on the plain checkpoint (the served copy's linear layers are packed for inference).
        assert arch.parameter_count == load_model(translator.path, device="cpu")[1].num_parameters()
    assert [m.max_source_length for m in response.models] == [128, 256, 32]
