"""Tokenizers read from a model directory's own files, one per model family, with one interface.

- marian.py: OPUS-MT (source.spm/target.spm + vocab.json; ``>>xxx<<`` target tokens in multi-target models);
- fairseq.py: NLLB-200, M2M100 and MBart-50 (one spm, fairseq ids, a language token on each side);
- added_tokens.py: special tokens matched in the raw text, shared by both.

:func:`load_tokenizer` picks one by the model's ``model_type``. Language codes given to ``encode`` and
``target_prefix`` are the model's own (``languages.LanguageCodes.resolve`` maps a caller's tag to one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from ..config import ModelConfig
from ..languages import LanguageCodes, choose_language
from .fairseq import FairseqTokenizer
from .marian import MarianTokenizer


class Tokenizer(Protocol):
    """What the engine, the Translator and the server use of a tokenizer."""

    @property
    def source_languages(self) -> LanguageCodes: ...  # empty: not declared (any accepted, none chosen)

    @property
    def target_languages(self) -> LanguageCodes: ...

    # Whether a request must name the language: the model reads it (a language token), it cannot guess.
    needs_source_language: bool
    needs_target_language: bool
    pad_id: int
    eos_id: int

    @property
    def source_vocab_size(self) -> int: ...

    @property
    def target_vocab_size(self) -> int: ...

    def encode(self, text: str, source_language: str | None = None, target_language: str | None = None) -> list[int]:
        """Source ids ending with </s>, with whatever language tokens the model's encoder reads."""
        ...

    def target_prefix(self, target_language: str | None) -> tuple[int, ...]:
        """The tokens a translation into that language is forced to start with."""
        ...

    def encode_prefix(self, text: str) -> list[int]:
        """Target ids of `text` without </s>: what a translation that starts with `text` starts with."""
        ...

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str: ...

    def source_pieces(self, text: str, source_language: str | None = None,
                      target_language: str | None = None) -> list[str]:
        """One string per id of ``encode(text, ...)``: the piece of the text it stands for (an unknown
        piece's own text, not "<unk>"), or the special token's name."""
        ...

    def vocabulary(self, side: str) -> dict[str, int]:
        """Token → id on one side ("source" or "target"), special tokens included (a vocabulary map's
        tokens are read with it: model/shortlist.py)."""
        ...

    def target_tokens(self, ids: Iterable[int]) -> list[str]:
        """The target-side token of each id, special ones included."""
        ...

    def decode_replacing_unknowns(self, ids: Sequence[int], source_pieces: Sequence[str],
                                  alignment: Sequence[int]) -> str:
        """:meth:`decode`, each ``<unk>`` replaced by the source piece it is aligned to (from
        :meth:`source_pieces`; dropped when that is a special token such as ``</s>``): names and rare words
        the target vocabulary lacks come through."""
        ...


def choose_languages(
    tokenizer: Tokenizer,
    source: str | None,
    target: str | None,
    fields: tuple[str, str] = ("source_language", "target_language"),
) -> tuple[str | None, str | None]:
    """The model's codes for a requested pair (languages.choose_language on each side); raises
    languages.LanguageError naming the field (`fields`: the names the caller gave them)."""
    return (
        choose_language(fields[0], source, tokenizer.source_languages, required=tokenizer.needs_source_language),
        choose_language(fields[1], target, tokenizer.target_languages, required=tokenizer.needs_target_language),
    )


def load_tokenizer(path: str | Path, config: ModelConfig) -> Tokenizer:
    """The tokenizer of a model directory, chosen by its config.json's model_type."""
    if config.model_type == "marian":
        return MarianTokenizer.from_dir(path)
    return FairseqTokenizer.from_dir(path, config.model_type, config.target_vocab_size)


__all__ = ["FairseqTokenizer", "MarianTokenizer", "Tokenizer", "choose_languages", "load_tokenizer"]
