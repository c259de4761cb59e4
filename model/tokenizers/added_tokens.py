"""Added tokens: special tokens matched in the raw text before SentencePiece runs, as Transformers does.

A literal ``</s>`` (or ``deu_Latn``) in a text becomes that token, both in Transformers' Python tokenizers
and in its ``tokenizers``-backed ones; every tokenizer here splits the text the same way first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AddedToken:
    """One token matched whole in the raw text (Transformers' ``AddedToken``)."""

    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


class AddedTokens:
    """Splits a text on a set of added tokens."""

    def __init__(self, tokens: Iterable[AddedToken]) -> None:
        self.tokens: dict[str, AddedToken] = {token.content: token for token in tokens}
        # Longest first: of two added tokens starting at the same place the longer wins, as in HF's trie.
        contents = sorted(self.tokens, key=len, reverse=True)
        self._pattern = re.compile(f"({'|'.join(map(re.escape, contents))})") if contents else None

    def __contains__(self, part: object) -> bool:
        return part in self.tokens

    def occur_in(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def split(self, text: str) -> list[str]:
        """The text cut into added tokens and the runs between them (no empty runs), with each token's
        lstrip/rstrip/single_word behaviour applied as HF's ``tokenize`` does."""
        if self._pattern is None:
            return [text] if text else []
        # The pattern is one capturing group, so matches stay in the list; HF's trie yields no empty parts.
        parts = [p for p in self._pattern.split(text) if p]
        for i in range(len(parts)):
            token = self.tokens.get(parts[i])
            if token is None:
                continue
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if token.rstrip and right:
                parts[i + 1] = right.lstrip()
            if token.lstrip and left:
                parts[i - 1] = left.rstrip()
            if token.single_word:
                if left and left[-1] != " ":
                    parts[i - 1] += parts[i]
                    parts[i] = ""
                elif right and right[0] != " ":
                    parts[i + 1] = parts[i] + parts[i + 1]
                    parts[i] = ""
        return [p for p in parts if p]
