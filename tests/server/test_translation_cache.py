"""The translation cache (--cache-size) on a real server: hits give exactly what decoding gave, the engine
decodes nothing for them, sampling without a seed is never cached, least recently used entries go first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtserve.client import TranslationClient
from mtserve.engine.segment import split_sentences
from mtserve.server.translation_cache import TranslationCache

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def cached(model_dirs: dict[str, Path], helpers: Any) -> Iterator[Any]:
    with helpers.running_server(helpers.server_config(model_dirs, "tiny", cache_size=6)) as running:
        yield running


def lookups(server: Any, result: str) -> float:
    value = server.server.metrics.registry.get_sample_value(
        "mtserve_translation_cache_lookups_total", {"model": "tiny", "result": result})
    return value or 0.0


def sentences(texts: list[str]) -> int:
    """The cache's entries are sentences: a text of several is split and each looked up."""
    return sum(len(split_sentences(text)) for text in texts)


def generated(server: Any) -> float:
    return server.server.metrics.registry.get_sample_value("mtserve_generated_tokens_total", {"model": "tiny"}) or 0


def test_a_hit_is_what_decoding_gave_and_decodes_nothing(cached: Any, helpers: Any, offline: Any) -> None:
    texts = helpers.sample_texts(3, seed=71)
    with TranslationClient(cached.address) as client:
        first = client.translate(texts, beam_size=2, max_length=MAX_LENGTH, num_hypotheses=2, return_scores=True)
        hits, misses, tokens = lookups(cached, "hit"), lookups(cached, "miss"), generated(cached)
        again = client.translate(texts, beam_size=2, max_length=MAX_LENGTH, num_hypotheses=2, return_scores=True)
        streamed = sorted(client.translate_stream(texts, beam_size=2, max_length=MAX_LENGTH, num_hypotheses=2,
                                                  return_scores=True), key=lambda r: r.index)
    assert again == first and [r.text for r in streamed] == [r.text for r in first]
    assert sentences(texts) <= 6  # all in the cache at once
    assert lookups(cached, "hit") - hits == 2 * sentences(texts) and lookups(cached, "miss") == misses
    assert generated(cached) == tokens  # the engine decoded nothing for them
    reference = offline("tiny").translate(texts, beam_size=2, max_length=MAX_LENGTH, num_hypotheses=2)
    assert [r.text for r in again] == [r.text for r in reference]


def test_other_options_are_other_entries(cached: Any, helpers: Any) -> None:
    (text,) = helpers.sample_texts(1, seed=72)
    with TranslationClient(cached.address) as client:
        greedy = client.translate([text], max_length=MAX_LENGTH)[0]
        misses = lookups(cached, "miss")
        shorter = client.translate([text], max_length=4)[0]
        assert lookups(cached, "miss") == misses + sentences([text])
        assert client.translate([text], max_length=MAX_LENGTH)[0] == greedy
        assert shorter.output_tokens <= 4 * sentences([text])  # max_length holds per sentence


def test_sampling_is_cached_only_with_a_seed(cached: Any, helpers: Any) -> None:
    (text,) = helpers.sample_texts(1, seed=73)
    with TranslationClient(cached.address) as client:
        before = lookups(cached, "hit") + lookups(cached, "miss")
        client.translate([text], sampling_temperature=1.0, max_length=MAX_LENGTH)
        client.translate([text], sampling_temperature=1.0, max_length=MAX_LENGTH)
        assert lookups(cached, "hit") + lookups(cached, "miss") == before  # not even looked up
        seeded = client.translate([text], sampling_temperature=1.0, seed=7, max_length=MAX_LENGTH)
        hits = lookups(cached, "hit")
        assert client.translate([text], sampling_temperature=1.0, seed=7, max_length=MAX_LENGTH) == seeded
        assert lookups(cached, "hit") == hits + sentences([text])


def test_least_recently_used_goes_first() -> None:
    cache = TranslationCache(2)
    cache.put(("a",), [])
    cache.put(("b",), [])
    assert cache.get(("a",)) == []  # a is now the most recent
    cache.put(("c",), [])
    assert cache.get(("b",)) is None and cache.get(("a",)) == [] and len(cache) == 2
    with pytest.raises(ValueError):
        TranslationCache(0)


def test_no_cache_by_default(server: Any, helpers: Any) -> None:
    assert server.server.service.cache is None


def test_a_hit_is_faster(cached: Any, helpers: Any, capsys: Any) -> None:
    """Not an assertion on time: the figure is printed for the record (the benchmarks compare speeds)."""
    texts = helpers.sample_texts(6, seed=74)
    with TranslationClient(cached.address) as client:
        started = time.perf_counter()
        client.translate(texts, beam_size=4, max_length=MAX_LENGTH)
        decoded = time.perf_counter() - started
        started = time.perf_counter()
        client.translate(texts, beam_size=4, max_length=MAX_LENGTH)
        answered = time.perf_counter() - started
    with capsys.disabled():
        print(f"\ntranslation cache: 6 texts decoded in {decoded * 1000:.1f} ms, from the cache in "
              f"{answered * 1000:.1f} ms")
