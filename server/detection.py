"""Which language a text is in, among the languages the served models take (LibreTranslate's `source: "auto"`
and `/detect`).

py3langid, restricted to the candidate languages: on 2,000 German and English sentences of the Ding
dictionary it was as accurate as lingua (see benchmarks/language_detection.py for the figures) and some
50 times faster, with no model to load beyond a 3 MB file. Its scores, normalised over the candidates, are
the confidence.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier


@dataclass(frozen=True)
class Detection:
    language: str  # an ISO 639-1 code (py3langid's), e.g. "de"
    confidence: float  # 0..1, over the candidate languages


@cache
def _full_identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@cache
def _identifier(languages: tuple[str, ...]) -> LanguageIdentifier:
    """An identifier restricted to `languages`, one per set (restricting is a copy of the tables' columns)."""
    restricted = copy.copy(_full_identifier())
    restricted.set_languages(languages)
    return restricted


def supported(languages: Iterable[str]) -> list[str]:
    """The given language codes py3langid knows (it has 97; a model's other languages cannot be detected)."""
    known = set(_full_identifier().labels)
    return sorted({code for code in languages if code in known})


def detect(text: str, candidates: Iterable[str]) -> Detection | None:
    """The most likely of `candidates` for `text` (those py3langid knows: see `supported`); None when no
    candidate is known or the text has no letter to go by."""
    languages = tuple(supported(candidates))
    if not languages or not any(character.isalpha() for character in text):
        return None
    language, probability = _identifier(languages).classify(text)
    return Detection(str(language), float(probability))
