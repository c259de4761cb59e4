"""Aligning a German and an English text block that translate each other: sentences and lines.

Shared by the sources whose units are longer than a sentence (DDTP descriptions, debconf templates,
AppStream descriptions, multi-line gettext messages). The rules are conservative: a pairing is made only
where the structure on both sides shows it, since a misaligned pair teaches the model to drop or invent
content.

- **Sentences**: pysbd with German rules for German (``z. B.``, ``am 15. August``) and English rules for
  English. When both sides have as many sentences they are paired in order; when not, the block is kept
  whole if it is short (≤ ``max_words`` words a side: still a good pair, only not a single sentence), else
  dropped (a long block whose sentences do not line up is likely a loose translation).
- **Lines**: a block of several lines is paired line by line when both sides have as many non-empty
  lines and every line pair visibly corresponds: the same command-line option (``-a, --all …``), or both
  lines complete (ending in ``. : ! ? ) ]``). Lines of wrapped prose end mid-sentence, wherever each
  language's wrapping fell, and are never paired one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import pysbd

MAX_BLOCK_WORDS = 60


@dataclass
class Stats:
    """What happened to blocks; printed by the corpus builder."""

    descriptions: int = 0
    paragraph_mismatch: int = 0  # different numbers of paragraphs: only the title is used
    block_mismatch: int = 0  # different block structure: the paragraph became one text block
    sentence_pairs: int = 0
    short_blocks: int = 0  # sentence counts differ, block kept whole
    long_blocks: int = 0  # sentence counts differ, block dropped


@cache
def _segmenter(language: str) -> pysbd.Segmenter:
    return pysbd.Segmenter(language=language, clean=False)


def sentences(text: str, language: str) -> list[str]:
    """pysbd's sentences of ``text`` with the rules of ``language`` (``de`` or ``en``)."""
    return [s.strip() for s in _segmenter(language).segment(text) if s.strip()]


def block_pairs(german: str, english: str, max_words: int = MAX_BLOCK_WORDS,
                stats: Stats | None = None) -> list[tuple[str, str]]:
    """A text block pair as sentence pairs, whole when short, or nothing (see the module docstring)."""
    stats = stats if stats is not None else Stats()
    de_sentences, en_sentences = sentences(german, "de"), sentences(english, "en")
    if len(de_sentences) == len(en_sentences):
        stats.sentence_pairs += len(de_sentences)
        return list(zip(de_sentences, en_sentences, strict=True))
    if len(german.split()) <= max_words and len(english.split()) <= max_words:
        stats.short_blocks += 1
        return [(german, english)]
    stats.long_blocks += 1
    return []


_OPTION = re.compile(r"\s*(-{1,2}[\w-]+)")
_LINE_END = re.compile(r"[.:!?)\]]\s*$")


def lines_correspond(german: str, english: str) -> bool:
    """Whether two lines are the same unit: the same option, or both complete."""
    de_option, en_option = _OPTION.match(german), _OPTION.match(english)
    if de_option and en_option:
        return de_option.group(1) == en_option.group(1)
    return bool(_LINE_END.search(german) and _LINE_END.search(english))


def line_pairs(german: str, english: str) -> list[tuple[str, str]] | None:
    """The line pairs of two multi-line blocks when their lines correspond one to one, else ``None``."""
    de_lines = [line for line in german.split("\n") if line.strip()]
    en_lines = [line for line in english.split("\n") if line.strip()]
    if (len(de_lines) > 1 and len(de_lines) == len(en_lines)
            and all(lines_correspond(d, e) for d, e in zip(de_lines, en_lines, strict=True))):
        return list(zip(de_lines, en_lines, strict=True))
    return None
