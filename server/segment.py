"""Splitting a text that is longer than the model accepts into sentences, and joining the translations back.

A text whose token count fits the model is one segment (most texts). A longer one is split after
sentence-final punctuation or at line breaks; each sentence is translated on its own (as one request,
so its pieces decode side by side) and the translations are joined with the original separators.
A single sentence still longer than the model accepts is an error: the text is never truncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# A sentence ends at . ! ? … (optionally followed by closing quotes/brackets) before whitespace,
# or at a line break. The separator (whitespace) is kept so that rejoining restores the layout.
_BOUNDARY = re.compile(r"(?<=[.!?…])[\"'»”’)\]]*(\s+)|(\n+)")


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


def split_sentences(text: str) -> list[tuple[str, str]]:
    """(sentence, separator after it) pairs whose concatenation is `text`."""
    pieces: list[tuple[str, str]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        separator_start = match.start(1) if match.group(1) is not None else match.start(2)
        sentence = text[start:separator_start]
        if sentence.strip():
            pieces.append((sentence, match.group(0)[separator_start - match.start() :]))
        elif pieces:  # blank run: attach to the previous separator so nothing is lost
            last, sep = pieces[-1]
            pieces[-1] = (last, sep + sentence + match.group(0)[separator_start - match.start() :])
        start = match.end()
    if text[start:].strip() or not pieces:
        pieces.append((text[start:], ""))
    return pieces


def segment(text: str, encode: Callable[[str], list[int]], max_tokens: int) -> list[Segment]:
    """The segments of `text` for a model accepting `max_tokens` source tokens (</s> included)."""
    ids = encode(text)
    if len(ids) <= max_tokens:
        return [Segment(ids, "")]
    segments = []
    for sentence, separator in split_sentences(text):
        sentence_ids = encode(sentence)
        if len(sentence_ids) > max_tokens:
            raise SentenceTooLongError(len(sentence_ids), max_tokens, sentence.strip())
        segments.append(Segment(sentence_ids, separator))
    return segments


def join(translations: list[str], segments: list[Segment]) -> str:
    """The translated segments with the original separators between them."""
    return "".join(t + s.separator for t, s in zip(translations, segments, strict=True)).strip()
