"""Terminology: which target terms a text's translation must contain.

A glossary maps source terms to target terms. A source term applies to a text (a sentence, when texts are
split) where it occurs as a whole word or phrase, ignoring case ("Haus" in "Das haus ist alt", not in
"Hausaufgabe"); its target term then becomes a constraint of that text's search (model/constrained.py),
as target token ids without ``</s>``. Each target term counts once per text, however often its source
term occurs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache


@lru_cache(maxsize=4096)
def _pattern(term: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)


def applicable(text: str, glossary: Mapping[str, str]) -> list[str]:
    """The target terms whose source term occurs in `text`, in the glossary's order, each once."""
    found: list[str] = []
    for source, target in glossary.items():
        if source.strip() and target.strip() and target not in found and _pattern(source.strip()).search(text):
            found.append(target)
    return found


def constraints_for(text: str, glossary: Mapping[str, str],
                    encode_target: Callable[[str], list[int]]) -> tuple[tuple[int, ...], ...]:
    """The token sequences `text`'s translation must contain."""
    return tuple(tuple(encode_target(term)) for term in applicable(text, glossary))


__all__ = ["applicable", "constraints_for"]
