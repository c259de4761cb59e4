"""The bundled German→English model: installed with the package, loads, and translates everyday phrases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mtserve.model
from mtserve.engine import Translator

DEFAULT_DIR = Path(mtserve.model.__file__).resolve().parent / "default"

EVERYDAY = [
    "Guten Morgen!",
    "Vielen Dank.",
    "Wie geht es dir?",
    "Ich habe Hunger.",
    "Das Wetter ist heute schön.",
    "Wo ist der Bahnhof?",
]


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator.load(DEFAULT_DIR, device="cpu")


def test_the_bundled_model_is_a_complete_marian_directory():
    names = {p.name for p in DEFAULT_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json", "MODEL_CARD.md"} <= names
    config = json.loads((DEFAULT_DIR / "config.json").read_text())
    assert config["model_type"] == "marian"
    # Small enough for the repository (the budget is ~25 MB).
    assert (DEFAULT_DIR / "model.safetensors").stat().st_size < 25 * 1024 * 1024


def test_it_declares_german_to_english(translator: Translator):
    assert (translator.tokenizer.source_lang, translator.tokenizer.target_lang) == ("de", "en")


def test_everyday_phrases_become_non_empty_latin_text(translator: Translator):
    for beam_size in (1, 4):
        results = translator.translate(EVERYDAY, beam_size=beam_size, max_length=64)
        for source, result in zip(EVERYDAY, results, strict=True):
            assert result.text.strip(), f"empty translation of {source!r}"
            assert result.text != source, f"{source!r} came back untranslated"
            # English: Latin letters and punctuation (Ding writes typographic quotes), not stray pieces.
            assert all(c < "\u0250" or "\u2000" <= c <= "\u206f" or c == "€" for c in result.text), result.text


def test_a_few_words_it_must_know(translator: Translator):
    """Dictionary-level knowledge: frequent single words translate to their usual English."""
    words = {"Hund": "dog", "Haus": "house", "Wasser": "water", "Buch": "book"}
    results = translator.translate(list(words), beam_size=4, max_length=16)
    hits = sum(expected in r.text.lower() for expected, r in zip(words.values(), results, strict=True))
    assert hits >= 3, [r.text for r in results]


def test_the_decoder_start_embedding_is_zero_as_ctranslate2_assumes():
    """CTranslate2 and Marian start decoding from a zero vector where Transformers looks up <pad>."""
    from mtserve.model.checkpoint import load_model

    config, model = load_model(DEFAULT_DIR, device="cpu", dtype="float32")
    assert not model.decoder.embed_tokens.weight[config.decoder_start_token_id].any()
