"""A vocabulary shortlist: the target pieces a text may produce, chosen from the pieces of its source.

The output layer is the largest matrix of a small decoder and the only one whose size grows with the
vocabulary: an OPUS-MT model's 58k target pieces cost more per step than its six decoder layers. Most of
them can never appear in the translation of a given sentence, so the layer is computed for a shortlist
only, as Marian (lexical shortlists) and CTranslate2 (vocabulary maps) do.

The file is CTranslate2's vocabulary map, ``vmap.txt`` in the model directory (so that one file serves
both): one line per source token, or space-separated n-gram of tokens, then a tab, then the target tokens
it allows, space-separated; a line whose source is empty lists the target tokens every text may produce
(the most frequent ones, punctuation). A text's shortlist is that list, every entry of its source's tokens
and n-grams, ``</s>`` and the tokens a request forces (language codes, target prefix, terminology). The
batch computes the output layer over the union of its texts' shortlists; each text's log-probabilities
are normalised over the pieces computed, so a text may score slightly differently than without a
shortlist (never a piece outside the union). ``python -m mtserve.training.shortlist`` builds a map from a
parallel corpus; benchmarks/README.md gives the measured speed and BLEU/chrF change.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

VMAP_FILE = "vmap.txt"


@dataclass(frozen=True)
class Shortlist:
    """The vocabulary map in ids: source id n-gram → allowed target ids, and the ids always allowed."""

    always: frozenset[int]
    entries: dict[tuple[int, ...], frozenset[int]]

    @functools.cached_property
    def longest(self) -> int:
        """The longest source n-gram with an entry (once: every text's admission asks, and a map has tens of
        thousands of entries)."""
        return max((len(key) for key in self.entries), default=1)

    def allowed(self, source_ids: Sequence[int], extra: Iterable[int] = ()) -> frozenset[int]:
        """The target ids a text of these source ids may produce, with `extra` (its forced tokens, ``</s>``)."""
        allowed = set(self.always)
        allowed.update(extra)
        longest = self.longest
        for start in range(len(source_ids)):
            for stop in range(start + 1, min(start + longest, len(source_ids)) + 1):
                allowed.update(self.entries.get(tuple(source_ids[start:stop]), ()))
        return frozenset(allowed)

    @classmethod
    def load(cls, path: str | Path, source_vocabulary: dict[str, int], target_vocabulary: dict[str, int]
             ) -> Shortlist:
        """Read a vocabulary map (see the module docstring); tokens missing from the vocabularies are
        skipped (a map made for another model), and a malformed line is an error naming it."""
        path = Path(path)
        always: set[int] = set()
        entries: dict[tuple[int, ...], set[int]] = {}
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                if "\t" not in line:
                    raise ValueError(f"{path}:{number}: expected 'source tokens<TAB>target tokens', got {line[:60]!r}")
                source, targets = line.split("\t", 1)
                target_ids = {target_vocabulary[t] for t in targets.split() if t in target_vocabulary}
                if not source.strip():
                    always |= target_ids
                    continue
                key = tuple(source_vocabulary.get(token, -1) for token in source.split())
                if -1 not in key:
                    entries.setdefault(key, set()).update(target_ids)
        return cls(frozenset(always), {key: frozenset(ids) for key, ids in entries.items()})

    def write(self, path: str | Path, source_tokens: Sequence[str], target_tokens: Sequence[str]) -> Path:
        """Write the map in CTranslate2's format; `*_tokens` give each id's token."""
        path = Path(path)
        lines = ["\t" + " ".join(target_tokens[i] for i in sorted(self.always))]
        for key in sorted(self.entries):
            lines.append(" ".join(source_tokens[i] for i in key) + "\t"
                         + " ".join(target_tokens[i] for i in sorted(self.entries[key])))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def load_shortlist(model_dir: str | Path, tokenizer: object) -> Shortlist | None:
    """The model directory's vmap.txt with the model's tokenizer, or None when it has none."""
    path = Path(model_dir) / VMAP_FILE
    if not path.is_file():
        return None
    return Shortlist.load(path, tokenizer.vocabulary("source"), tokenizer.vocabulary("target"))  # type: ignore[attr-defined]


__all__ = ["VMAP_FILE", "Shortlist", "load_shortlist"]
