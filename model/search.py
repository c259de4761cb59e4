"""Search options and the per-sequence search state for greedy, beam and sampling decoding.

Lengths count target tokens after the decoder start token: ``max_length`` includes ``</s>``
(when the model forces ``</s>``, the max_length-th token is ``</s>``); ``min_length`` is the least
number of tokens before ``</s>``. Transformers counts the start token too, so its
``max_length``/``min_length`` are ours + 1.

Beam search follows Transformers' ``generate(num_beams=K)`` with ``early_stopping=False``, so that the
two give identical tokens: 2K candidates per step; a candidate ending in ``</s>`` (or reaching
max_length) is kept as a finished hypothesis only if it ranks in the top K, scored by its summed
log-probability divided by its length (``</s>`` included) to the power ``length_penalty``; the search
ends when max_length is reached or when K hypotheses are finished and the best running beam, scored
at its current length, cannot beat the worst of them. With ``early_stopping`` it ends as soon as K
hypotheses are finished (Transformers' ``early_stopping=True``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# Running beams other than the first start at this score so that step one expands a single beam,
# exactly as Transformers does (the value matters for bit-identical candidate ranking).
_INACTIVE_BEAM_SCORE = -1.0e9


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
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.sampling_temperature is not None and not (
            math.isfinite(self.sampling_temperature) and self.sampling_temperature > 0
        ):
            raise ValueError(f"sampling_temperature must be > 0, got {self.sampling_temperature}")
        if self.sampling_topk < 0:
            raise ValueError(f"sampling_topk must be >= 0 (0 = no limit), got {self.sampling_topk}")
        if not 0 < self.sampling_topp <= 1:
            raise ValueError(f"sampling_topp must be in (0, 1], got {self.sampling_topp}")
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
        """KV-cache rows the text occupies while it decodes."""
        return self.num_hypotheses if self.sampling else self.beam_size


def asks_for_sampling(options: Mapping[str, Any]) -> bool:
    """Whether these SearchOptions fields turn sampling on (top-k 0 and top-p 1 mean "no limit")."""
    return (
        options.get("sampling_temperature") is not None
        or options.get("sampling_topk", 0) > 0
        or options.get("sampling_topp", 1.0) < 1
    )


@dataclass
class Hypothesis:
    """One output: token ids without the start token and without ``</s>``; score as documented above."""

    token_ids: list[int]
    score: float
    stopped_by_length: bool = False  # ended without </s>
    # The output is max_length tokens long, </s> included: decoding stopped at the limit, or may have (a
    # forced-EOS model, as OPUS-MT models are, is made to end with </s> there). Clients are told.
    max_length_reached: bool = False


def constrain(
    logprobs: torch.Tensor,
    *,
    pad_id: int,
    eos_id: int,
    no_eos_rows: Sequence[int] = (),
    forced_eos_rows: Sequence[int] = (),
) -> None:
    """In place on log-probs (N, V): pad is never generated, no ``</s>`` in `no_eos_rows` (before
    min_length), nothing but ``</s>`` in `forced_eos_rows` (at max_length on forced-EOS models).

    The rows are worked out on the host from each text's position and limits, so this reads nothing back
    from the device. Applied after log_softmax, without renormalising, as Transformers' logits processors
    do in beam search.
    """
    logprobs[:, pad_id] = -math.inf
    if no_eos_rows:
        logprobs[torch.tensor(no_eos_rows, device=logprobs.device), eos_id] = -math.inf
    if forced_eos_rows:
        rows = torch.tensor(forced_eos_rows, device=logprobs.device)
        logprobs[rows] = -math.inf
        logprobs[rows, eos_id] = 0.0


class GreedySearch:
    """One row; the arg-max token each step."""

    rows = 1

    def __init__(self, options: SearchOptions) -> None:
        self.options = options
        self.tokens: list[int] = []
        self.logprob = 0.0

    def advance(self, token: int, logprob: float, eos_id: int) -> bool:
        """Append the chosen token; True when the sequence is finished."""
        self.logprob += logprob
        if token == eos_id:
            return True
        self.tokens.append(token)
        return len(self.tokens) >= self.options.max_length

    def hypotheses(self) -> list[Hypothesis]:
        length = min(len(self.tokens) + 1, self.options.max_length)
        stopped = len(self.tokens) >= self.options.max_length
        score = self.logprob / length**self.options.length_penalty
        return [Hypothesis(list(self.tokens), score, stopped, length >= self.options.max_length)]


class SamplingSearch:
    """`num_hypotheses` independent rows, each drawing from the tempered, top-k/top-p filtered distribution."""

    def __init__(self, options: SearchOptions, device: torch.device) -> None:
        self.options = options
        self.generator = torch.Generator(device=device)
        if options.seed is not None:
            self.generator.manual_seed(options.seed)
        else:
            self.generator.seed()
        self.tokens: list[list[int]] = [[] for _ in range(options.num_hypotheses)]
        self.logprobs = [0.0] * options.num_hypotheses
        self.active = list(range(options.num_hypotheses))  # hypothesis index of each cache row, in row order
        self.done: list[Hypothesis | None] = [None] * options.num_hypotheses

    @property
    def rows(self) -> int:
        return len(self.active)

    def choose(self, logprobs: torch.Tensor) -> tuple[list[int], list[float]]:
        """Draw one token per active row from log-probs (R, V)."""
        options = self.options
        scores = logprobs / (options.sampling_temperature or 1.0)
        if options.sampling_topk > 0 and options.sampling_topk < scores.shape[-1]:
            kth = scores.topk(options.sampling_topk, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if options.sampling_topp < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
            drop_sorted = cumulative - sorted_scores.softmax(-1) >= options.sampling_topp
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
        tokens = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0]
        return tokens.tolist(), chosen.tolist()

    def advance(self, tokens: list[int], logprobs: list[float], eos_id: int) -> list[int]:
        """Record one token per active row; return the rows (indices into the active list) that continue."""
        keep: list[int] = []
        for row, (hyp, token, logprob) in enumerate(zip(self.active, tokens, logprobs, strict=True)):
            self.logprobs[hyp] += logprob
            if token != eos_id:
                self.tokens[hyp].append(token)
            length = len(self.tokens[hyp])
            if token == eos_id or length >= self.options.max_length:
                stopped = token != eos_id
                total = min(length + 1, self.options.max_length)
                score = self.logprobs[hyp] / total**self.options.length_penalty
                self.done[hyp] = Hypothesis(list(self.tokens[hyp]), score, stopped, total >= self.options.max_length)
            else:
                keep.append(row)
        self.active = [self.active[row] for row in keep]
        return keep

    def hypotheses(self) -> list[Hypothesis]:
        finished = [h for h in self.done if h is not None]
        return sorted(finished, key=lambda h: h.score, reverse=True)


@dataclass
class BeamSearch:
    """K rows; the search state of Transformers' beam search for one text (see the module docstring)."""

    options: SearchOptions
    running_tokens: list[list[int]] = field(default_factory=list)
    running_scores: list[float] = field(default_factory=list)
    finished: list[tuple[float, list[int], bool, bool]] = field(default_factory=list)  # + stopped, at max
    improvable: bool = True

    def __post_init__(self) -> None:
        beams = self.options.beam_size
        self.running_tokens = [[] for _ in range(beams)]
        self.running_scores = [0.0] + [_INACTIVE_BEAM_SCORE] * (beams - 1)

    @property
    def rows(self) -> int:
        return self.options.beam_size

    def advance(
        self, scores: list[float], flat_indices: list[int], vocab_size: int, eos_id: int
    ) -> tuple[bool, list[int], list[int]]:
        """Take the step's 2K best (score, beam*V+token) candidates, best first.

        Returns (finished, source beam of each new beam, token of each new beam).
        """
        beams = self.options.beam_size
        length = len(self.running_tokens[0]) + 1  # generated tokens including this step's
        at_max = length >= self.options.max_length
        sources: list[int] = []
        tokens: list[int] = []
        new_scores: list[float] = []
        for rank, (score, flat) in enumerate(zip(scores, flat_indices, strict=True)):
            beam, token = divmod(flat, vocab_size)
            if token == eos_id or at_max:
                if rank < beams and self.improvable and score > -math.inf:
                    normalised = score / length**self.options.length_penalty
                    ended = self.running_tokens[beam] + ([] if token == eos_id else [token])
                    self._add_finished(normalised, ended, stopped=token != eos_id, at_max=at_max)
            elif len(sources) < beams:
                sources.append(beam)
                tokens.append(token)
                new_scores.append(score)
        if at_max or len(sources) < beams:
            return True, [], []
        self.running_tokens = [self.running_tokens[b] + [t] for b, t in zip(sources, tokens, strict=True)]
        self.running_scores = new_scores
        if len(self.finished) == beams:
            if self.options.early_stopping:
                return True, [], []
            best_possible = new_scores[0] / length**self.options.length_penalty
            self.improvable = best_possible > self.finished[-1][0]
        return not self.improvable, sources, tokens

    def _add_finished(self, score: float, tokens: list[int], stopped: bool, at_max: bool) -> None:
        self.finished.append((score, tokens, stopped, at_max))
        self.finished.sort(key=lambda item: item[0], reverse=True)  # stable: earlier hypotheses win ties
        del self.finished[self.options.beam_size :]

    def hypotheses(self) -> list[Hypothesis]:
        return [Hypothesis(list(tokens), score, stopped, at_max) for score, tokens, stopped, at_max in self.finished]
