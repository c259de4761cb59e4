"""Splitting a text into sentences, translating each on its own, and joining the translations back.

Translation models are trained on sentences, so every text of several is split (pysbd, with the rules of
the source language where pysbd has them: German knows "z. B." and "am 15. August", English "Dr." and
"e.g."; line breaks end a sentence). Each sentence becomes its own group of rows in the same batch: they
decode side by side and each gives exactly what it gives alone. The translations are joined with the
whitespace that followed each sentence in the original; an n-best list joins each sentence's k-th
hypothesis. The server and the offline Translator both split here, so a text translates the same in
both. A single sentence longer than the model accepts is an error: the text is never truncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import langcodes
import pysbd
from pysbd.languages import LANGUAGE_CODES

from mtserve.model.search import Hypothesis
from mtserve.model.tokenizers import Tokenizer

#: Sentence rules for languages pysbd has none for (its English rules: . ! ? and line breaks).
FALLBACK_LANGUAGE = "en"


@dataclass
class Segment:
    """A piece of a text to translate, and the separator that followed it in the original."""

    source_ids: list[int]
    separator: str
    text: str = ""  # the source text it stands for (what alignments and replace_unknowns point into)


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


#: Marks that can end a sentence in some language pysbd knows (Latin, CJK, Arabic, Devanagari, Armenian,
#: Ethiopic, Burmese, Greek) and line breaks: a text without one followed by more words is one sentence.
_ENDS = re.compile(r"[.!?…。！？｡;;؟۔।॥։።။\n\r][^\w]*\w")


def might_hold_several_sentences(text: str) -> bool:
    """False when `text` is surely one sentence: pysbd (tens of µs per sentence) need not look at it."""
    return _ENDS.search(text) is not None


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
            language: str = FALLBACK_LANGUAGE, split: bool = True) -> list[Segment]:
    """The sentences of `text` (in `language`) as segments, for a model accepting `max_tokens` source
    tokens (</s> included); a text of one sentence, or any text when not `split`, is one segment as it is."""
    if not split or not might_hold_several_sentences(text):
        ids = encode(text)
        if len(ids) <= max_tokens:
            return [Segment(ids, "", text)]
    sentences = split_sentences(text, language)
    if len(sentences) == 1:
        sentences = [(text, "")]
    segments = []
    for sentence, separator in sentences:
        sentence_ids = encode(sentence)
        if len(sentence_ids) > max_tokens:
            raise SentenceTooLongError(len(sentence_ids), max_tokens, sentence.strip())
        segments.append(Segment(sentence_ids, separator, sentence))
    return segments


@dataclass(frozen=True)
class Joined:
    """One hypothesis of a whole text: its sentences' hypotheses of one rank, joined."""

    text: str
    token_ids: list[int]
    score: float  # the mean of the sentences' scores
    output_tokens: int
    max_length_reached: bool
    #: Per token of token_ids, the index of its aligned source token among the text's source tokens (every
    #: sentence's, in order); None unless alignments were asked for.
    alignment: list[int] | None = None


def join_hypotheses(per_segment: Sequence[Sequence[Hypothesis]], segments: Sequence[Segment],
                    decode: Callable[[int, Hypothesis], str], count: int) -> list[Joined]:
    """Up to `count` hypotheses of a text, best first: rank k joins each sentence's k-th hypothesis (its
    last one where it has fewer). `decode(j, hypothesis)` is the text of sentence j's hypothesis."""
    count = max(1, min(count, max(len(h) for h in per_segment)))
    offsets = [sum(len(s.source_ids) for s in segments[:j]) for j in range(len(segments))]
    joined = []
    for rank in range(count):
        chosen = [h[min(rank, len(h) - 1)] for h in per_segment]
        aligned = all(h.alignment is not None for h in chosen)
        joined.append(Joined(
            text=join([decode(j, h) for j, h in enumerate(chosen)], list(segments)),
            token_ids=[token for h in chosen for token in h.token_ids],
            score=sum(h.score for h in chosen) / len(chosen),
            # What the decoder generated: the sentence's tokens and its </s>, unless the length limit ended it.
            output_tokens=sum(len(h.token_ids) + (0 if h.stopped_by_length else 1) for h in chosen),
            max_length_reached=any(h.max_length_reached for h in chosen),
            alignment=[offsets[j] + a for j, h in enumerate(chosen) for a in h.alignment or ()] if aligned else None,
        ))
    return joined


def hypothesis_text(tokenizer: Tokenizer, hypothesis: Hypothesis, source_pieces: Sequence[str] | None = None) -> str:
    """A sentence's hypothesis as text; given its source pieces (and an alignment), each ``<unk>``
    replaced by the source piece it is aligned to (replace_unknowns)."""
    if source_pieces is not None and hypothesis.alignment is not None:
        return tokenizer.decode_replacing_unknowns(hypothesis.token_ids, source_pieces, hypothesis.alignment)
    return tokenizer.decode(hypothesis.token_ids)


def join(translations: list[str], segments: list[Segment]) -> str:
    """The translated segments with the original separators between them."""
    return "".join(t + s.separator for t, s in zip(translations, segments, strict=True)).strip()
