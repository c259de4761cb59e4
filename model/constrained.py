"""Lexically constrained beam search: every translation contains the given target terms (terminology).

Dynamic beam allocation (Post & Vilar, 2018, "Fast Lexically Constrained Decoding with Dynamic Beam
Allocation for Neural Machine Translation"), inside the same batch as every other text:

- **Candidates.** Each step, besides the 2K best (beam, token) continuations of plain beam search, every
  beam proposes its own two best tokens (so a beam that has started or met a term can go on, and end,
  though better-scored beams fill the top 2K) and the next token of each constraint it has not met: the
  one after the constraint's part it is in the middle of, else the constraint's first. A constraint is a
  token sequence; a beam meets it when the sequence occurs in its tokens.
- **Banks.** A candidate's bank is how many constraint tokens it has produced (met constraints in full,
  plus the part of one it is in the middle of). The K beams are shared out over the banks, most
  progress first, an equal share each and unused shares passed on, each bank taking its best-scored
  candidates; what is left goes to the best-scored candidates of any bank. So beams that have started a
  term survive next to better-scored beams that have not, and the search does not drop a term because
  the model would rather not say it yet.
- **Ending.** ``</s>`` is taken only from beams that have met every constraint; a hypothesis ends at
  max_length all the same (then a constraint may be unmet: the length limit wins, nothing is cut). The
  search ends when K hypotheses have finished or at max_length.

Scores are the plain beam search's (summed log-probabilities, length-normalised), so among hypotheses
that meet every constraint the best-scored wins. With no constraints the search is not used: plain
beam search is (model/search.py). The cost is the extra candidates' scoring on the host and the beams
spent on constraint progress (measured in benchmarks/controls.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .options import SearchOptions
from .search import BeamSearch, Plan, _score


class ConstrainedBeamSearch(BeamSearch):
    """K rows; beam search whose finished hypotheses contain every constraint (see the module docstring)."""

    def __init__(self, options: SearchOptions, constraints: Sequence[Sequence[int]]) -> None:
        super().__init__(options)
        self.constraints = [tuple(c) for c in constraints if c]
        self.total = sum(len(c) for c in self.constraints)

    # -- constraint states ---------------------------------------------------------------------------

    def progress(self, tokens: Sequence[int]) -> tuple[int, list[int]]:
        """(constraint tokens produced, the next token of each unmet constraint) for a token sequence."""
        produced = 0
        wanted: list[int] = []
        text = tuple(tokens)
        for constraint in self.constraints:
            if _contains(text, constraint):
                produced += len(constraint)
                continue
            part = _longest_started(text, constraint)  # its first `part` tokens end the sequence
            produced += part
            wanted.append(constraint[part])
        return produced, wanted

    def met_all(self, tokens: Sequence[int]) -> bool:
        text = tuple(tokens)
        return all(_contains(text, c) for c in self.constraints)

    # -- the step ------------------------------------------------------------------------------------

    @classmethod
    def select(cls, logprobs: torch.Tensor, starts: Sequence[int], searches: Sequence[Any]) -> list[Any]:
        """Per text: the 2K best (score, beam*V + token) and the scores of its beams' constraint tokens."""
        device, vocab_size = logprobs.device, logprobs.shape[-1]
        active = [(index, beam) for index, search in enumerate(searches) for beam in range(search.rows)
                  if search.running_scores[beam] > -1.0e8]  # not an inactive beam of step one
        # Each active beam's two best tokens and its constraints' next tokens, read before BeamSearch.select
        # (which may add the running scores to `logprobs` in place).
        proposals = [(index, beam, None) for index, beam in active]
        proposals += [(index, beam, token) for index, beam in active
                      for token in searches[index].progress(searches[index].running_tokens[beam])[1]]
        rows = torch.tensor([starts[i] + b for i, b, _ in proposals], device=device)
        own = logprobs[rows[: len(active)]].topk(2, dim=-1)
        forced = [t for _, _, t in proposals[len(active):]]
        forced_values = logprobs[rows[len(active):], torch.tensor(forced, device=device, dtype=torch.long)].tolist()
        plain = BeamSearch.select(logprobs, starts, searches)
        extra: list[list[tuple[float, int]]] = [[] for _ in searches]
        own_values, own_tokens = own.values.tolist(), own.indices.tolist()
        for (index, beam), values, tokens in zip(active, own_values, own_tokens, strict=True):
            for value, token in zip(values, tokens, strict=True):
                extra[index].append((value + searches[index].running_scores[beam], beam * vocab_size + token))
        for (index, beam, token), value in zip(proposals[len(active):], forced_values, strict=True):
            extra[index].append((value + searches[index].running_scores[beam], beam * vocab_size + token))
        return [(scores, flat, vocab_size, extra[i]) for i, (scores, flat, vocab_size) in enumerate(plain)]

    def advance(self, selection: tuple[list[float], list[int], int, list[tuple[float, int]]], eos_id: int) -> Plan:
        scores, flat_indices, vocab_size, extra = selection
        beams = self.options.beam_size
        length = len(self.running_tokens[0]) + 1
        at_max = length >= self.options.max_length
        seen: set[int] = set()
        candidates: list[tuple[float, int]] = []
        for score, flat in sorted([*zip(scores, flat_indices, strict=True), *extra], key=lambda c: -c[0]):
            if flat not in seen and score > -math.inf:
                seen.add(flat)
                candidates.append((score, flat))
        # Ends first: a beam that has met every constraint may end here. At max_length every candidate ends;
        # those that met every constraint are kept, the others only when none did (the limit wins).
        growing: list[tuple[float, int, int, list[int]]] = []  # score, beam, token, new tokens
        unmet: list[tuple[float, list[int], bool]] = []
        for score, flat in candidates:
            beam, token = divmod(flat, vocab_size)
            tokens = self.running_tokens[beam] + ([] if token == eos_id else [token])
            if token == eos_id or at_max:
                normalised = _score(score, length, self.options.length_penalty)
                if self.met_all(tokens):
                    self._add_finished(normalised, tokens, stopped=token != eos_id, at_max=at_max)
                elif at_max:
                    unmet.append((normalised, tokens, token != eos_id))
            else:
                growing.append((score, beam, token, tokens))
        if at_max and not self.finished:
            for normalised, tokens, stopped in unmet:
                self._add_finished(normalised, tokens, stopped=stopped, at_max=True)
        if at_max or len(self.finished) >= beams or not growing:
            if not self.finished:  # nothing could end: the best beam ends here as it is
                self._add_finished(_score(scores[0], length, self.options.length_penalty),
                                   self.running_tokens[0], stopped=True, at_max=at_max)
            return Plan.done(self.hypotheses(), self._newly_stable(final=True))
        chosen = self._allocate(growing, beams)
        self.running_tokens = [tokens for _, _, _, tokens in chosen]
        self.running_scores = [score for score, _, _, _ in chosen]
        sources = [beam for _, beam, _, _ in chosen]
        next_tokens = [token for _, _, token, _ in chosen]
        while len(sources) < beams:  # fewer candidates than beams: the spare rows repeat the last, inactive
            sources.append(sources[-1])
            next_tokens.append(next_tokens[-1])
            self.running_tokens.append(list(self.running_tokens[-1]))
            self.running_scores.append(-1.0e9)
        return Plan(sources, next_tokens, self._newly_stable(final=False))

    def _allocate(self, growing: list[tuple[float, int, int, list[int]]],
                  beams: int) -> list[tuple[float, int, int, list[int]]]:
        """Dynamic beam allocation: the K survivors, an equal share per bank of progress, best first."""
        banks: dict[int, list[tuple[float, int, int, list[int]]]] = {}
        for candidate in growing:  # already best first
            banks.setdefault(self.progress(candidate[3])[0], []).append(candidate)
        share, chosen, taken = max(1, beams // (self.total + 1)), [], set()
        carried = 0
        for bank in sorted(banks, reverse=True):
            quota = share + carried
            picked = banks[bank][:quota]
            carried = quota - len(picked)
            chosen += picked
            taken.update(id(c) for c in picked)
            if len(chosen) >= beams:
                break
        if len(chosen) < beams:
            rest = [c for c in growing if id(c) not in taken]
            chosen += rest[: beams - len(chosen)]
        chosen = sorted(chosen[:beams], key=lambda c: -c[0])
        return chosen


def _contains(text: tuple[int, ...], part: tuple[int, ...]) -> bool:
    n = len(part)
    return any(text[i:i + n] == part for i in range(len(text) - n + 1))


def _longest_started(text: tuple[int, ...], constraint: tuple[int, ...]) -> int:
    """The largest k < len(constraint) such that the text ends with the constraint's first k tokens."""
    for k in range(min(len(constraint) - 1, len(text)), 0, -1):
        if text[-k:] == constraint[:k]:
            return k
    return 0


__all__ = ["ConstrainedBeamSearch"]
