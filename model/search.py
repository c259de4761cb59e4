"""Search strategies: each turns a step's log-probabilities into a :class:`Plan` for one text.

The batch (engine/batch.py) owns the rows; a search owns one text's decoding state and never touches a
row. Each step, for every kind present in the batch (greedy, beam, sampling), ``select`` does the device
work for all texts of that kind at once (one arg-max for every greedy row, one top-k per beam size,
one draw per sampled text), and then each text's ``advance`` turns its selection into a plan: which of its
rows continue from which, their next tokens, the tokens that became final (for streaming), and its
hypotheses once it is finished. The batch only moves rows as the plans say. Constraints on what may be
generated (pad never, no ``</s>`` before min_length, forced tokens) are logits processors, applied
before ``select`` (processors.py).

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
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .options import SearchOptions

# Running beams other than the first start at this score so that step one expands a single beam,
# exactly as Transformers does (the value matters for bit-identical candidate ranking).
_INACTIVE_BEAM_SCORE = -1.0e9


@dataclass
class Hypothesis:
    """One output: token ids without the start token and without ``</s>``; score as documented above."""

    token_ids: list[int]
    score: float
    stopped_by_length: bool = False  # ended without </s>
    # The output is max_length tokens long, </s> included: decoding stopped at the limit, or may have (a
    # forced-EOS model, as OPUS-MT models are, is made to end with </s> there). Clients are told.
    max_length_reached: bool = False
    #: Per token, the index of the source token it is aligned to (model/alignment.py), when asked for.
    alignment: list[int] | None = None


@dataclass
class Plan:
    """What one text's search decided in a step.

    ``sources[i]`` is the row (counted within the text's rows) that the text's i-th row continues from,
    with next input token ``tokens[i]``; no rows means the text is finished and ``hypotheses`` holds its
    results, best first. ``emitted`` are tokens that became final in this step (the text's output
    starts with everything emitted so far, whatever happens next), for streaming.
    """

    sources: list[int]
    tokens: list[int]
    emitted: list[int] = field(default_factory=list)
    hypotheses: list[Hypothesis] | None = None

    @classmethod
    def done(cls, hypotheses: list[Hypothesis], emitted: list[int] | None = None) -> Plan:
        return cls([], [], emitted or [], hypotheses)

    @property
    def finished(self) -> bool:
        return self.hypotheses is not None


def _score(logprob: float, length: int, penalty: float) -> float:
    # SearchOptions bounds the penalty, so this stays finite for every length a model allows.
    return logprob / length**penalty


class Search(ABC):
    """One text's search state. ``rows``: the KV-cache rows it occupies now."""

    rows: int

    def __init__(self, options: SearchOptions) -> None:
        self.options = options

    @classmethod
    @abstractmethod
    def select(cls, logprobs: torch.Tensor, starts: Sequence[int], searches: Sequence[Any]) -> list[Any]:
        """The device work of one step for every text of this kind: `logprobs` (N, V) of the whole batch,
        each text given by its first row and its search. One selection per text, in order."""

    @abstractmethod
    def advance(self, selection: Any, eos_id: int) -> Plan:
        """Take this step's selection; the plan for the text's rows."""

    @abstractmethod
    def prefixes(self) -> list[list[int]]:
        """The tokens each of the text's rows has generated so far, in row order (for tests and oracles)."""


class GreedySearch(Search):
    """One row; the arg-max token each step."""

    rows = 1

    def __init__(self, options: SearchOptions) -> None:
        super().__init__(options)
        self.tokens: list[int] = []
        self.logprob = 0.0

    @classmethod
    def select(cls, logprobs: torch.Tensor, starts: Sequence[int], searches: Sequence[Any]) -> list[Any]:
        if len(starts) == logprobs.shape[0]:  # every row is a greedy text's, in row order
            best, tokens = logprobs.max(dim=-1)
        else:
            best, tokens = logprobs[torch.tensor(starts, device=logprobs.device)].max(dim=-1)
        return list(zip(tokens.tolist(), best.tolist(), strict=True))

    def advance(self, selection: tuple[int, float], eos_id: int) -> Plan:
        token, logprob = selection
        self.logprob += logprob
        if token == eos_id:
            return Plan.done(self.hypotheses())
        self.tokens.append(token)
        if len(self.tokens) >= self.options.max_length:
            return Plan.done(self.hypotheses(), [token])
        return Plan([0], [token], [token])

    def hypotheses(self) -> list[Hypothesis]:
        length = min(len(self.tokens) + 1, self.options.max_length)
        stopped = len(self.tokens) >= self.options.max_length
        score = _score(self.logprob, length, self.options.length_penalty)
        return [Hypothesis(list(self.tokens), score, stopped, length >= self.options.max_length)]

    def prefixes(self) -> list[list[int]]:
        return [self.tokens]


class SamplingSearch(Search):
    """`num_hypotheses` independent rows, each drawing from the tempered, top-k/top-p filtered distribution."""

    def __init__(self, options: SearchOptions, device: torch.device) -> None:
        super().__init__(options)
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
    def rows(self) -> int:  # type: ignore[override]
        return len(self.active)

    @classmethod
    def select(cls, logprobs: torch.Tensor, starts: Sequence[int], searches: Sequence[Any]) -> list[Any]:
        return [search.draw(logprobs[start : start + search.rows]) for start, search in zip(starts, searches,
                                                                                             strict=True)]

    def draw(self, logprobs: torch.Tensor) -> tuple[list[int], list[float]]:
        """One token per active row from log-probs (R, V)."""
        options = self.options
        # Relative to each row's best token before tempering: the best stays at 0 whatever the temperature,
        # so a tiny temperature cannot turn every score into -inf (and the distribution into NaN).
        scores = logprobs - logprobs.max(dim=-1, keepdim=True).values
        if options.sampling_temperature is not None:
            scores = scores / options.sampling_temperature
        if 0 < options.sampling_topk < scores.shape[-1]:
            kth = scores.topk(options.sampling_topk, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if options.sampling_topp < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            probabilities = sorted_scores.softmax(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
            drop_sorted = probabilities.cumsum(-1) - probabilities >= options.sampling_topp
            scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
        tokens = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[:, 0]
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0]
        return tokens.tolist(), chosen.tolist()

    def advance(self, selection: tuple[list[int], list[float]], eos_id: int) -> Plan:
        tokens, logprobs = selection
        keep: list[int] = []
        for row, (hyp, token, logprob) in enumerate(zip(self.active, tokens, logprobs, strict=True)):
            self.logprobs[hyp] += logprob
            if token != eos_id:
                self.tokens[hyp].append(token)
            length = len(self.tokens[hyp])
            if token == eos_id or length >= self.options.max_length:
                stopped = token != eos_id
                total = min(length + 1, self.options.max_length)
                score = _score(self.logprobs[hyp], total, self.options.length_penalty)
                self.done[hyp] = Hypothesis(list(self.tokens[hyp]), score, stopped, total >= self.options.max_length)
            else:
                keep.append(row)
        # One sample is one output: its tokens are final as they are drawn.
        emitted = [tokens[0]] if self.options.num_hypotheses == 1 and tokens[0] != eos_id else []
        self.active = [self.active[row] for row in keep]
        if not keep:
            return Plan.done(self.hypotheses(), emitted)
        return Plan(keep, [tokens[row] for row in keep], emitted)

    def hypotheses(self) -> list[Hypothesis]:
        finished = [h for h in self.done if h is not None]
        return sorted(finished, key=lambda h: h.score, reverse=True)

    def prefixes(self) -> list[list[int]]:
        return [self.tokens[h] for h in self.active]


class BeamSearch(Search):
    """K rows; the search state of Transformers' beam search for one text (see the module docstring)."""

    def __init__(self, options: SearchOptions) -> None:
        super().__init__(options)
        beams = options.beam_size
        self.running_tokens: list[list[int]] = [[] for _ in range(beams)]
        self.running_scores = [0.0] + [_INACTIVE_BEAM_SCORE] * (beams - 1)
        self.finished: list[tuple[float, list[int], bool, bool]] = []  # score, tokens, stopped, at max
        self.improvable = True
        self.emitted = 0  # tokens of the stable prefix already emitted

    @property
    def rows(self) -> int:  # type: ignore[override]
        return self.options.beam_size

    @classmethod
    def select(cls, logprobs: torch.Tensor, starts: Sequence[int], searches: Sequence[Any]) -> list[Any]:
        """The 2K best (score, beam*V + token) of every text, computed together per beam size."""
        by_size: dict[int, list[int]] = defaultdict(list)
        for index, search in enumerate(searches):
            by_size[search.rows].append(index)
        selections: list[Any] = [None] * len(searches)
        vocab_size = logprobs.shape[-1]
        for beams, members in by_size.items():
            running = torch.tensor(
                [searches[i].running_scores for i in members], dtype=torch.float32, device=logprobs.device
            )  # (G, K)
            if len(members) * beams == logprobs.shape[0]:  # every row is a beam of these texts, in row order
                totals = logprobs.view(len(members), beams, vocab_size).add_(running[:, :, None])
            else:
                rows = torch.tensor([starts[i] + b for i in members for b in range(beams)], device=logprobs.device)
                totals = logprobs[rows].view(len(members), beams, vocab_size) + running[:, :, None]
            scores, flat = totals.view(len(members), beams * vocab_size).topk(2 * beams, dim=-1)  # (G, 2K)
            for index, text_scores, text_flat in zip(members, scores.tolist(), flat.tolist(), strict=True):
                selections[index] = (text_scores, text_flat, vocab_size)
        return selections

    def advance(self, selection: tuple[list[float], list[int], int], eos_id: int) -> Plan:
        """Take the step's 2K best (score, beam*V+token) candidates, best first."""
        scores, flat_indices, vocab_size = selection
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
                    normalised = _score(score, length, self.options.length_penalty)
                    ended = self.running_tokens[beam] + ([] if token == eos_id else [token])
                    self._add_finished(normalised, ended, stopped=token != eos_id, at_max=at_max)
            elif len(sources) < beams:
                sources.append(beam)
                tokens.append(token)
                new_scores.append(score)
        if at_max or len(sources) < beams:
            return Plan.done(self.hypotheses(), self._newly_stable(final=True))
        self.running_tokens = [self.running_tokens[b] + [t] for b, t in zip(sources, tokens, strict=True)]
        self.running_scores = new_scores
        if len(self.finished) == beams:
            if self.options.early_stopping:
                return Plan.done(self.hypotheses(), self._newly_stable(final=True))
            best_possible = _score(new_scores[0], length, self.options.length_penalty)
            self.improvable = best_possible > self.finished[-1][0]
        if not self.improvable:
            return Plan.done(self.hypotheses(), self._newly_stable(final=True))
        return Plan(sources, tokens, self._newly_stable(final=False))

    def _newly_stable(self, *, final: bool) -> list[int]:
        """Tokens that start every hypothesis that can still be the best, not emitted before.

        Every live beam and every kept finished hypothesis may still win, and all later ones descend from
        live beams, so the longest prefix they share can no longer change. At the end it is the best one.
        """
        if final:
            best = self.finished[0][1] if self.finished else []
            new, self.emitted = best[self.emitted :], len(best)
            return new
        candidates = [*self.running_tokens, *(tokens for _, tokens, _, _ in self.finished)]
        shortest = min(len(c) for c in candidates)
        stable = self.emitted
        first = candidates[0]
        while stable < shortest and all(c[stable] == first[stable] for c in candidates):
            stable += 1
        new, self.emitted = first[self.emitted : stable], stable
        return new

    def _add_finished(self, score: float, tokens: list[int], stopped: bool, at_max: bool) -> None:
        self.finished.append((score, tokens, stopped, at_max))
        self.finished.sort(key=lambda item: item[0], reverse=True)  # stable: earlier hypotheses win ties
        del self.finished[self.options.beam_size :]

    def hypotheses(self) -> list[Hypothesis]:
        return [Hypothesis(list(tokens), score, stopped, at_max) for score, tokens, stopped, at_max in self.finished]

    def prefixes(self) -> list[list[int]]:
        return self.running_tokens


def new_search(options: SearchOptions, device: torch.device) -> Search:
    """The search a text's options ask for."""
    if options.sampling:
        return SamplingSearch(options, device)
    if options.beam_size > 1:
        return BeamSearch(options)
    return GreedySearch(options)


__all__ = ["BeamSearch", "GreedySearch", "Hypothesis", "Plan", "SamplingSearch", "Search", "new_search"]
