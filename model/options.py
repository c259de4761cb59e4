"""How one text is decoded: :class:`SearchOptions`, their bounds, and their defaults from a model directory.

Lengths count target tokens after the decoder start token: ``max_length`` includes ``</s>`` (when the
model forces ``</s>``, the max_length-th token is ``</s>``); ``min_length`` is the least number of tokens
before ``</s>``. Transformers counts the start token too, so its ``max_length``/``min_length`` are ours + 1.

Every bound here exists so that no value a caller can send breaks the arithmetic of a decoding step:
a length penalty of 1e30 once raised OverflowError inside a step (``length ** penalty``) and took the
texts decoding beside it down. Within these bounds every step's arithmetic stays finite (see search.py).
No torch here: the server validates requests with these classes before anything reaches the engine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: |length_penalty| at most this: hypotheses are scored sum(logprob) / length ** length_penalty, and at
#: 10 a 4,096-token hypothesis divides by 1e36, far inside a float's range. Published models use 0.6-2.
MAX_LENGTH_PENALTY = 10.0
#: Sampling seeds are unsigned 64-bit (the proto's uint64, and what torch.Generator accepts).
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class SearchOptions:
    """How one text is decoded. Sampling is on when a temperature, top-k or top-p is given."""

    beam_size: int = 1
    num_hypotheses: int = 1
    max_length: int = 256
    min_length: int = 0
    length_penalty: float = 1.0
    sampling_temperature: float | None = None
    sampling_topk: int = 0
    sampling_topp: float = 1.0
    seed: int | None = None
    # Beam search ends as soon as beam_size hypotheses have finished (Transformers' early_stopping=True,
    # CTranslate2's behaviour): fewer steps, sometimes a shorter best hypothesis.
    early_stopping: bool = False

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.num_hypotheses < 1:
            raise ValueError(f"num_hypotheses must be at least 1, got {self.num_hypotheses}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}")
        if not 0 <= self.min_length < self.max_length:
            raise ValueError(f"min_length must be in [0, max_length={self.max_length}), got {self.min_length}")
        if not (math.isfinite(self.length_penalty) and abs(self.length_penalty) <= MAX_LENGTH_PENALTY):
            raise ValueError(
                f"length_penalty must be between {-MAX_LENGTH_PENALTY:g} and {MAX_LENGTH_PENALTY:g}, "
                f"got {self.length_penalty}"
            )
        if self.sampling_temperature is not None and not (
            math.isfinite(self.sampling_temperature) and self.sampling_temperature > 0
        ):
            raise ValueError(f"sampling_temperature must be > 0 and finite, got {self.sampling_temperature}")
        if self.sampling_topk < 0:
            raise ValueError(f"sampling_topk must be >= 0 (0 = no limit), got {self.sampling_topk}")
        if not (math.isfinite(self.sampling_topp) and 0 < self.sampling_topp <= 1):
            raise ValueError(f"sampling_topp must be in (0, 1], got {self.sampling_topp}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**64 - 1], got {self.seed}")
        if self.sampling and self.beam_size > 1:
            raise ValueError(f"sampling works with beam_size 1, got beam_size {self.beam_size}")
        if not self.sampling and self.num_hypotheses > self.beam_size:
            raise ValueError(
                f"num_hypotheses {self.num_hypotheses} exceeds beam_size {self.beam_size} (without sampling)"
            )

    @property
    def sampling(self) -> bool:
        return asks_for_sampling(vars(self))

    @property
    def rows(self) -> int:
        """KV-cache rows the text occupies while it decodes: its beams, or its samples."""
        return self.num_hypotheses if self.sampling else self.beam_size


def asks_for_sampling(options: Mapping[str, Any]) -> bool:
    """Whether these SearchOptions fields turn sampling on (top-k 0 and top-p 1 mean "no limit")."""
    return (
        options.get("sampling_temperature") is not None
        or options.get("sampling_topk", 0) > 0
        or options.get("sampling_topp", 1.0) < 1
    )


def merge_defaults(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """SearchOptions fields: `defaults` overridden by `options`; a default yields where it conflicts with
    them (sampling asked without a beam size gets one beam; a default min_length stays below max_length)."""
    values = {**defaults, **options}
    if asks_for_sampling(options) and "beam_size" not in options:
        values["beam_size"] = 1
    if "min_length" not in options and "min_length" in values:
        values["min_length"] = min(values["min_length"], values["max_length"] - 1)
    return values


def generation_defaults(path: Path, max_positions: int) -> dict[str, Any]:
    """SearchOptions defaults from generation_config.json (OPUS-MT ships num_beams, max_length there).

    Transformers counts the decoder start token in max_length/min_length; SearchOptions does not. A value
    outside SearchOptions' bounds is left out (the built-in default applies), never passed on.
    """
    try:
        values = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(values, dict):
        return {}
    defaults: dict[str, Any] = {}
    if isinstance(values.get("num_beams"), int) and values["num_beams"] >= 1:
        defaults["beam_size"] = values["num_beams"]
    if isinstance(values.get("max_length"), int) and values["max_length"] > 1:
        defaults["max_length"] = min(values["max_length"] - 1, max_positions)
    if isinstance(values.get("min_length"), int) and values["min_length"] > 1:
        defaults["min_length"] = values["min_length"] - 1
    if values.get("early_stopping") is True:  # Transformers also allows "never", which is our False
        defaults["early_stopping"] = True
    penalty = values.get("length_penalty")
    if isinstance(penalty, int | float) and math.isfinite(penalty) and abs(penalty) <= MAX_LENGTH_PENALTY:
        defaults["length_penalty"] = float(penalty)
    return defaults
