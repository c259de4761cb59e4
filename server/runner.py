"""The runner: the torch side of the engine. It owns one model's BatchDecoder (KV-cache rows) and steps it.

The scheduler decides *which* groups run; the runner turns that into tensors: a batched encoder pass
for newcomers (filling their cross-attention K/V once), then one decoder step for every row.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from mtserve.model.generation import BatchDecoder, GroupEvent
from mtserve.model.search import SearchOptions
from mtserve.model.translator import Translator


class Runner:
    def __init__(self, translator: Translator, max_batch_size: int) -> None:
        self.translator = translator
        self.max_batch_size = max_batch_size
        self.decoder = BatchDecoder(translator.model, max_batch_size)
        self._groups: set[Hashable] = set()

    @property
    def device(self) -> torch.device:
        return self.translator.device

    @property
    def rows_in_use(self) -> int:
        return self.decoder.rows_in_use

    def has_work(self) -> bool:
        return self.decoder.has_work()

    def check(self, source_ids: Sequence[int], options: SearchOptions) -> None:
        """ValueError when this model cannot decode the text at all (too long, max_length too big)."""
        self.decoder.check(source_ids, options)

    def add(self, group_id: Hashable, source_ids: Sequence[int], options: SearchOptions, stream: bool) -> None:
        self.decoder.add(group_id, source_ids, options, stream)
        self._groups.add(group_id)

    def cancel(self, group_id: Hashable) -> None:
        if group_id in self._groups:
            self.decoder.cancel(group_id)
            self._groups.discard(group_id)

    @property
    def last_step_rows(self) -> int:
        """Rows the last step decoded: its batch size (rows of cancelled groups left before it)."""
        return self.decoder.last_step_rows

    def step(self) -> list[GroupEvent]:
        events = self.decoder.step()
        for event in events:
            if event.finished:
                self._groups.discard(event.group_id)
        return events

    def reset(self) -> list[Hashable]:
        """Drop every group (after a failed step); returns their ids."""
        dropped = list(self._groups)
        self._groups.clear()
        self.decoder = BatchDecoder(self.translator.model, self.max_batch_size)
        return dropped

    def device_memory_allocated(self) -> float | None:
        device = self.device
        if device.type != "cuda":
            return None
        return float(torch.cuda.memory_allocated(device))
