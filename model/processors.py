"""Logits processors: constraints on what a step may generate, applied to the whole batch's log-probs.

Each processor edits the step's log-probabilities (N, V) in place, after log_softmax and without
renormalising, as Transformers' processors do in beam search; the search strategies (search.py) then
pick from what is left. A processor sees each text of the batch as :class:`TextRows` (its first row, row
count, position and options) and works out on the host which rows it touches, so nothing is read back
from the device. A new constraint is one class here, added to the batch's list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

from .options import SearchOptions


class TextRows(Protocol):
    """What a processor knows of one text in the batch."""

    @property
    def start(self) -> int: ...  # first cache row

    @property
    def rows(self) -> int: ...  # how many consecutive rows it holds

    @property
    def position(self) -> int: ...  # tokens generated so far (shared by its rows)

    @property
    def options(self) -> SearchOptions: ...

    @property
    def forced_prefix(self) -> Sequence[int]: ...  # tokens its output must start with


class LogitsProcessor(Protocol):
    def __call__(self, logprobs: torch.Tensor, texts: Sequence[TextRows]) -> None: ...


def _rows(text: TextRows) -> range:
    return range(text.start, text.start + text.rows)


class NeverGenerate:
    """Tokens no step may produce (pad, which doubles as the decoder start token in Marian models)."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = list(token_ids)

    def __call__(self, logprobs: torch.Tensor, texts: Sequence[TextRows]) -> None:
        if self.token_ids:
            logprobs[:, self.token_ids] = -math.inf


class MinLength:
    """No ``</s>`` before a text has generated ``min_length`` tokens."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, logprobs: torch.Tensor, texts: Sequence[TextRows]) -> None:
        rows = [row for text in texts if text.position < text.options.min_length for row in _rows(text)]
        if rows:
            logprobs[torch.tensor(rows, device=logprobs.device), self.eos_id] = -math.inf


class ForcedTokens:
    """Positions where a text may produce one token only: its forced prefix (e.g. a target-language
    token), and ``</s>`` as the max_length-th token on models that force it (Marian's forced_eos)."""

    def __init__(self, eos_id: int, force_eos_at_max_length: bool) -> None:
        self.eos_id = eos_id
        self.force_eos = force_eos_at_max_length

    def __call__(self, logprobs: torch.Tensor, texts: Sequence[TextRows]) -> None:
        rows: list[int] = []
        tokens: list[int] = []
        for text in texts:
            position = text.position
            if position < len(text.forced_prefix):
                token = text.forced_prefix[position]
            elif self.force_eos and position + 1 == text.options.max_length:
                token = self.eos_id
            else:
                continue
            rows += _rows(text)
            tokens += [token] * text.rows
        if rows:
            row_index = torch.tensor(rows, device=logprobs.device)
            logprobs.index_fill_(0, row_index, -math.inf)
            logprobs[row_index, torch.tensor(tokens, device=logprobs.device)] = 0.0


def apply_processors(processors: Sequence[LogitsProcessor], logprobs: torch.Tensor, texts: Sequence[TextRows]) -> None:
    for processor in processors:
        processor(logprobs, texts)


__all__ = ["ForcedTokens", "LogitsProcessor", "MinLength", "NeverGenerate", "TextRows", "apply_processors"]
