"""Splitting a text into sentences, translating each on its own, and joining the translations back.

A text whose token count fits the model is one segment (most texts; the offline Translator takes them
whole too). A longer one is split into sentences (pysbd, with the rules of the source language where
pysbd has them: German knows "z. B." and "am 15. August", English "Dr." and "e.g."; line breaks end a
sentence); each sentence becomes its own group of rows in the same batch (they decode side by side, and
each gives exactly what it gives alone) and the translations are joined with the whitespace that
followed each sentence in the original. The HTTP API splits every text of several sentences (as
LibreTranslate does). A single sentence longer than the model accepts is an error: the text is never
truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import langcodes
import pysbd
from pysbd.languages import LANGUAGE_CODES

#: Sentence rules for languages pysbd has none for (its English rules: . ! ? and line breaks).
FALLBACK_LANGUAGE = "en"


@dataclass
class Segment:
    """A piece of a text to translate, and the separator that followed it in the original."""

    source_ids: list[int]
    separator: str


class SentenceTooLongError(ValueError):
    def __init__(self, tokens: int, limit: int, sentence: str) -> None:
        preview = sentence if len(sentence) <= 60 else sentence[:57] + "..."
        super().__init__(
            f"a sentence is {tokens} tokens long, the model accepts at most {limit} per sentence: {preview!r}"
        )


def rules_for(language: str) -> str:
    """pysbd's language for a model's language code ("de", "deu_Latn", "de_DE"), else the fallback."""
    try:
        code = langcodes.get(language.replace("_", "-")).language or ""
    except (langcodes.tag_parser.LanguageTagError, ValueError):
        code = ""
    return code if code in LANGUAGE_CODES else FALLBACK_LANGUAGE


@cache
def _segmenter(language: str) -> pysbd.Segmenter:
    return pysbd.Segmenter(language=language, clean=False, char_span=True)


def split_sentences(text: str, language: str = FALLBACK_LANGUAGE) -> list[tuple[str, str]]:
    """(sentence, whitespace after it) pairs whose concatenation is `text` without its leading whitespace."""
    spans = _segmenter(rules_for(language)).segment(text)
    pieces: list[tuple[str, str]] = []
    for i, span in enumerate(spans):
        end = spans[i + 1].start if i + 1 < len(spans) else len(text)
        piece = text[span.start:end]  # from the original: pysbd's own copy may have lost whitespace
        sentence = piece.rstrip()
        if sentence.strip():
            pieces.append((sentence, piece[len(sentence):]))
        elif pieces:  # blank: its whitespace belongs to the previous separator
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + piece)
    return pieces or [(text.strip(), "")]


def segment(text: str, encode: Callable[[str], list[int]], max_tokens: int,
            language: str = FALLBACK_LANGUAGE) -> list[Segment]:
    """The segments of `text` (in `language`) for a model accepting `max_tokens` source tokens (</s>
    included): the whole text when it fits (as the offline Translator and the reference decoders take
    it), else its sentences."""
    ids = encode(text)
    if len(ids) <= max_tokens:
        return [Segment(ids, "")]
    segments = []
    for sentence, separator in split_sentences(text, language):
        sentence_ids = encode(sentence)
        if len(sentence_ids) > max_tokens:
            raise SentenceTooLongError(len(sentence_ids), max_tokens, sentence.strip())
        segments.append(Segment(sentence_ids, separator))
    return segments


def join(translations: list[str], segments: list[Segment]) -> str:
    """The translated segments with the original separators between them."""
    return "".join(t + s.separator for t, s in zip(translations, segments, strict=True)).strip()
