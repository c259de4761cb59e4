"""A translation cache: identical sentences with identical options are answered from memory.

The key is everything that decides a sentence's hypotheses: the model, the search options, the forced
target prefix (the target language of a multilingual model) and the sentence's source token ids. The value
is the engine's hypotheses, exactly as decoding gave them, so a hit is indistinguishable from decoding
again (batch invariance makes the decode itself independent of its neighbours). Sampling without a seed
is never cached: its next result is meant to differ. Least recently used entries go first once
``--cache-size`` entries are held. Only the event loop's thread touches it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis

Key = tuple[Hashable, ...]


def cacheable(options: SearchOptions) -> bool:
    return not (options.sampling and options.seed is None)


class TranslationCache:
    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"a cache holds at least one entry, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, list[Hypothesis]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(model: str, options: SearchOptions, prefix: Sequence[int], source_ids: Sequence[int]) -> Key:
        # repr: every field's value, whatever its type (a frozen dataclass's fields need not be hashable).
        return (model, repr(options), tuple(prefix), tuple(source_ids))

    def get(self, key: Key) -> list[Hypothesis] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Key, hypotheses: list[Hypothesis]) -> None:
        self._entries[key] = hypotheses
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
