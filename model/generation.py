"""BatchDecoder: iteration-level batched decoding over KV-cache rows, shared by the Translator and the server.

Texts ("groups") join between steps: one batched encoder pass for all newcomers fills their
cross-attention K/V once, then every step runs one decoder pass over all rows of all groups. A group
occupies `options.rows` rows (its beams or samples), kept contiguous; finished and cancelled groups
leave, and beam reordering moves rows, through one gather of the self-attention rows per step (texts
that change place also move their cross-attention rows). Because every text runs the
same code whatever else is in the batch, batching never changes its result (up to float rounding).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .search import BeamSearch, GreedySearch, Hypothesis, SamplingSearch, SearchOptions, constrain
from .transformer import MarianTransformer

Search = GreedySearch | BeamSearch | SamplingSearch


@dataclass
class GroupEvent:
    """What happened to one text in a step: new tokens (greedy, when streaming asked) and/or its results."""

    group_id: Hashable
    new_token_ids: list[int] | None = None
    hypotheses: list[Hypothesis] | None = None

    @property
    def finished(self) -> bool:
        return self.hypotheses is not None


@dataclass
class _Group:
    group_id: Hashable
    options: SearchOptions
    search: Search
    source_length: int
    stream: bool
    start: int = 0  # first cache row


@dataclass
class _Pending:
    group: _Group
    source_ids: list[int]


class BatchDecoder:
    """Owns a model's KV cache of `num_rows` rows and decodes every text added to it, one step at a time."""

    def __init__(self, model: MarianTransformer, num_rows: int) -> None:
        config = model.config
        self.model = model
        self.num_rows = num_rows
        self.device = model.device
        self.pad_id, self.eos_id = config.pad_token_id, config.eos_token_id
        self.start_id = config.decoder_start_token_id
        self.forced_eos = config.forced_eos_token_id is not None
        self.max_source_length = config.max_position_embeddings
        self.max_target_length = config.max_position_embeddings
        self.cache = model.new_cache(num_rows)
        self._groups: list[_Group] = []  # in cache-row order
        self._pending: list[_Pending] = []
        self._cancelled: set[Hashable] = set()
        # Host-side per-row state, in row order: the next input token and its position.
        self._tokens: list[int] = []
        self._positions: list[int] = []
        #: Rows the last step decoded (cancelled rows leave before the step, so they do not count).
        self.last_step_rows = 0

    # -- bookkeeping ------------------------------------------------------------------------------

    @property
    def rows_in_use(self) -> int:
        return len(self._tokens) + sum(p.group.search.rows for p in self._pending)

    @property
    def free_rows(self) -> int:
        return self.num_rows - self.rows_in_use

    @property
    def num_groups(self) -> int:
        return len(self._groups) + len(self._pending)

    def has_work(self) -> bool:
        return bool(self._groups or self._pending)

    def check(self, source_ids: Sequence[int], options: SearchOptions) -> None:
        """Raise ValueError when the text cannot be decoded by this model at all (limits named)."""
        if not source_ids:
            raise ValueError("source_ids is empty: a source ends with </s> at least")
        if len(source_ids) > self.max_source_length:
            raise ValueError(f"source is {len(source_ids)} tokens, the model accepts at most {self.max_source_length}")
        if options.max_length > self.max_target_length:
            raise ValueError(f"max_length {options.max_length} exceeds the model's limit {self.max_target_length}")
        if options.rows > self.num_rows:
            raise ValueError(f"{options.rows} beams/hypotheses exceed the decoder's {self.num_rows} rows")

    def add(self, group_id: Hashable, source_ids: Sequence[int], options: SearchOptions, stream: bool = False) -> None:
        """Queue a text; it is encoded at the start of the next step. Needs `options.rows` free rows."""
        self.check(source_ids, options)
        if options.rows > self.free_rows:
            raise RuntimeError(f"{options.rows} rows needed, {self.free_rows} free: admit fewer texts")
        search: Search
        if options.sampling:
            search = SamplingSearch(options, self.device)
        elif options.beam_size > 1:
            search = BeamSearch(options)
        else:
            search = GreedySearch(options)
        group = _Group(group_id, options, search, len(source_ids), stream)
        self._pending.append(_Pending(group, list(source_ids)))

    def cancel(self, group_id: Hashable) -> None:
        """Drop a text at the next step; its rows are freed then."""
        self._cancelled.add(group_id)

    # -- the step ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[GroupEvent]:
        """Admit pending texts, run one decoder step for all rows, advance every search."""
        self._drop_cancelled()
        self._admit()
        self.last_step_rows = len(self._tokens)
        if not self._groups:
            return []
        tokens = self._upload(self._tokens)
        positions = self._upload(self._positions)
        target_length = max(self._positions) + 1
        self.cache.reserve(target_length=target_length)
        source_length = max(g.source_length for g in self._groups)
        logits = self.model.decode_step(tokens, positions, self.cache, target_length, source_length, self._group_size())
        logprobs = torch.log_softmax(logits, dim=-1)  # (N, V)
        no_eos_rows, forced_eos_rows = self._length_constraints()
        constrain(logprobs, pad_id=self.pad_id, eos_id=self.eos_id, no_eos_rows=no_eos_rows,
                  forced_eos_rows=forced_eos_rows)
        return self._advance(logprobs)

    def _upload(self, values: list) -> torch.Tensor:
        """A host list as a long tensor on the model's device. On CUDA through pinned memory and without
        waiting: the step's only wait is for the chosen tokens."""
        tensor = torch.tensor(values, dtype=torch.long)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _group_size(self) -> int:
        """k when every text has k rows (so text i holds rows i*k .. i*k+k-1), else 1 (no sharing)."""
        sizes = {g.search.rows for g in self._groups}
        return sizes.pop() if len(sizes) == 1 else 1

    def _length_constraints(self) -> tuple[list[int], list[int]]:
        """Rows that may not end yet (before min_length) and rows that must end now (at max_length, on
        forced-EOS models): per text, since a text's rows share their position."""
        no_eos: list[int] = []
        forced: list[int] = []
        for group in self._groups:
            position = self._positions[group.start]
            rows = range(group.start, group.start + group.search.rows)
            if position < group.options.min_length:
                no_eos += rows
            if self.forced_eos and position + 1 == group.options.max_length:
                forced += rows
        return no_eos, forced

    def _advance(self, logprobs: torch.Tensor) -> list[GroupEvent]:
        events: list[GroupEvent] = []
        # Per group: the old rows its new rows copy (None = group finished) and each new row's token.
        plans: list[tuple[list[int], list[int]] | None] = []
        greedy = [g for g in self._groups if isinstance(g.search, GreedySearch)]
        greedy_choice: dict[int, tuple[int, float]] = {}
        if greedy:
            if len(greedy) == logprobs.shape[0]:  # every row is a greedy text's, in row order
                best, best_tokens = logprobs.max(dim=-1)
            else:
                best, best_tokens = logprobs[torch.tensor([g.start for g in greedy], device=self.device)].max(dim=-1)
            for group, token, value in zip(greedy, best_tokens.tolist(), best.tolist(), strict=True):
                greedy_choice[id(group)] = (token, value)
        beam_choice = self._beam_candidates(logprobs)
        vocab_size = logprobs.shape[-1]

        for group in self._groups:
            search = group.search
            if isinstance(search, GreedySearch):
                token, value = greedy_choice[id(group)]
                done = search.advance(token, value, self.eos_id)
                if group.stream and token != self.eos_id:
                    events.append(GroupEvent(group.group_id, new_token_ids=[token]))
                plans.append(None if done else ([group.start], [token]))
            elif isinstance(search, BeamSearch):
                scores, flat = beam_choice[id(group)]
                done, sources, tokens = search.advance(scores, flat, vocab_size, self.eos_id)
                plans.append(None if done else ([group.start + s for s in sources], tokens))
            else:
                rows = slice(group.start, group.start + search.rows)
                tokens, values = search.choose(logprobs[rows])
                keep = search.advance(tokens, values, self.eos_id)
                plans.append(([group.start + k for k in keep], [tokens[k] for k in keep]) if keep else None)
            if plans[-1] is None:
                events.append(GroupEvent(group.group_id, hypotheses=search.hypotheses()))
        self._relayout(plans)
        return events

    def _beam_candidates(self, logprobs: torch.Tensor) -> dict[int, tuple[list[float], list[int]]]:
        """The 2K best (score, beam*V + token) of every beam group, computed together per beam size."""
        by_size: dict[int, list[_Group]] = {}
        for group in self._groups:
            if isinstance(group.search, BeamSearch):
                by_size.setdefault(group.search.rows, []).append(group)
        result: dict[int, tuple[list[float], list[int]]] = {}
        vocab_size = logprobs.shape[-1]
        for beams, groups in by_size.items():
            row_list = [g.start + b for g in groups for b in range(beams)]
            running = torch.tensor(
                [g.search.running_scores for g in groups], dtype=torch.float32, device=self.device
            )  # (G, K)
            if len(row_list) == logprobs.shape[0]:  # every row is a beam of these texts, in row order
                totals = logprobs.view(len(groups), beams, vocab_size).add_(running[:, :, None])
            else:
                rows = torch.tensor(row_list, device=self.device)
                totals = logprobs[rows].view(len(groups), beams, vocab_size) + running[:, :, None]
            totals = totals.view(len(groups), beams * vocab_size)  # (G, K*V)
            scores, flat = totals.topk(2 * beams, dim=-1)
            for group, group_scores, group_flat in zip(groups, scores.tolist(), flat.tolist(), strict=True):
                result[id(group)] = (group_scores, group_flat)
        return result

    def _relayout(self, plans: list[tuple[list[int], list[int]] | None], advance: int = 1) -> None:
        """Move surviving rows into their new places, and set the next step's inputs
        (positions move on by `advance`: 1 after a decoder step, 0 when rows only leave)."""
        sources: list[int] = []
        tokens: list[int] = []
        positions: list[int] = []
        groups: list[_Group] = []
        # Cross-attention rows move per text, not per row: every row of a text holds the same keys/values.
        cross_from: list[int] = []
        cross_to: list[int] = []
        cross_length = 0
        survivors = [(g, p) for g, p in zip(self._groups, plans, strict=True) if p is not None]
        for group, (rows, next_tokens) in _fill_holes_from_the_tail(survivors):
            next_position = self._positions[group.start] + advance
            if group.start != len(sources):
                cross_from += range(group.start, group.start + len(rows))
                cross_to += range(len(sources), len(sources) + len(rows))
                cross_length = max(cross_length, group.source_length)
            group.start = len(sources)
            sources += rows
            tokens += next_tokens
            positions += [next_position] * len(rows)
            groups.append(group)
        if sources != list(range(len(sources))):
            self.cache.gather(torch.tensor(sources, device=self.device), target_length=max(positions, default=0))
        if cross_from:
            self.cache.move_cross(
                torch.tensor(cross_from, device=self.device),
                torch.tensor(cross_to, device=self.device),
                source_length=cross_length,
            )
        self._groups, self._tokens, self._positions = groups, tokens, positions

    def _drop_cancelled(self) -> None:
        if not self._cancelled:
            return
        self._pending = [p for p in self._pending if p.group.group_id not in self._cancelled]
        if any(g.group_id in self._cancelled for g in self._groups):
            plans = [
                None
                if g.group_id in self._cancelled
                else (
                    list(range(g.start, g.start + g.search.rows)),
                    self._tokens[g.start : g.start + g.search.rows],
                )
                for g in self._groups
            ]
            self._relayout(plans, advance=0)
        self._cancelled.clear()

    def _admit(self) -> None:
        """One encoder pass over all pending texts; their rows are appended after the running ones."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        longest = max(len(p.source_ids) for p in pending)
        ids = self._upload([p.source_ids + [self.pad_id] * (longest - len(p.source_ids)) for p in pending])
        lengths = self._upload([len(p.source_ids) for p in pending])
        mask = torch.arange(longest, device=self.device)[None, :] < lengths[:, None]  # (P, S)
        memory = self.model.encode(ids, mask)  # (P, S, d)

        row_counts = [p.group.search.rows for p in pending]
        repeats = self._upload(row_counts)
        first = len(self._tokens)
        rows = torch.arange(first, first + sum(row_counts), device=self.device)  # counted on the host: no sync
        self.cache.reserve(source_length=longest)
        self.model.fill_cross_attention(self.cache, rows, memory, lengths, repeats)
        for p in pending:
            p.group.start = len(self._tokens)
            self._groups.append(p.group)
            self._tokens += [self.start_id] * p.group.search.rows
            self._positions += [0] * p.group.search.rows


def _fill_holes_from_the_tail(
    survivors: list[tuple[_Group, tuple[list[int], list[int]]]],
) -> list[tuple[_Group, tuple[list[int], list[int]]]]:
    """The new row order of the surviving groups (given in row order with their next rows).

    Rows must stay a contiguous prefix. Shifting every group after a leaver down would move all their
    cross-attention rows; instead a hole is filled with groups taken from the end when they fit, so
    most groups keep their rows (the order of groups in the cache does not change any result).
    """
    remaining = deque(survivors)
    placed = []
    cursor = 0
    while remaining:
        group, _ = remaining[0]
        hole = group.start - cursor
        if hole > 0 and len(remaining) > 1 and len(remaining[-1][1][0]) <= hole:
            placed.append(remaining.pop())
        else:
            placed.append(remaining.popleft())
        cursor += len(placed[-1][1][0])
    return placed
