"""The batch: a model's KV-cache rows on the device, the texts occupying them, and the moves between steps.

Texts join through one batched encoder pass (:meth:`Batch.add`) that fills their cross-attention K/V once;
that pass also encodes the texts next in line (``ahead``), whose encoder outputs wait here until they join, so
that newcomers trickling in as rows free up do not each pay a small pass; every step runs one decoder pass
over the rows (:meth:`Batch.decode`, in parts when the engine core retries a failed step); the texts' searches
turn the log-probabilities into plans (model/search.py) and :meth:`Batch.apply` moves rows as the plans say:
beams reorder through one gather of the self-attention rows, finished texts leave, and a hole is filled by the
last text so that most texts keep their rows. A text occupies ``search.rows`` consecutive rows; rows ``0 ..
rows_in_use-1`` are the active prefix. The batch counts nothing for the scheduler: engine/scheduler.py holds
the ledger, and the core checks after every step that the two agree.

Because every text runs the same code whatever else is in the batch, batching never changes its result
(up to float rounding): tests/model/test_batch_invariance.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict, deque
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field

import torch

from mtserve.model.constrained import ConstrainedBeamSearch
from mtserve.model.options import SearchOptions
from mtserve.model.processors import ForcedTokens, LogitsProcessor, MinLength, NeverGenerate, apply_processors
from mtserve.model.search import Plan, Search, new_search
from mtserve.model.shortlist import Shortlist
from mtserve.model.transformer import Transformer


@dataclass(frozen=True)
class NewText:
    """What the batch needs to start decoding a text."""

    source_ids: list[int]
    options: SearchOptions
    forced_prefix: tuple[int, ...] = ()  # tokens the output must start with (a target-language token)
    stream: bool = False  # the caller wants the tokens that become final at every step
    #: The caller's target prefix: the output continues from forced_prefix + target_prefix, fed in one
    #: prefill pass when the text joins (the search scores only what follows, as Transformers scores what
    #: follows decoder_input_ids).
    target_prefix: tuple[int, ...] = ()
    align: bool = False  # give each hypothesis its source alignment (model/alignment.py)
    #: Target token sequences every hypothesis must contain (terminology; model/constrained.py).
    constraints: tuple[tuple[int, ...], ...] = ()

    @property
    def prompt(self) -> tuple[int, ...]:
        """What the prefill feeds: the forced tokens, when there is a target prefix (else the steps force
        the language token one at a time, as generate()'s forced_bos_token_id does)."""
        return self.forced_prefix + self.target_prefix if self.target_prefix else ()


@dataclass(eq=False)
class Slot:
    """A text's place in the batch (and the view of it a logits processor gets: model/processors.TextRows)."""

    key: Hashable
    work: NewText
    search: Search
    source_length: int
    #: The target ids this text may produce (with a vocabulary shortlist, model/shortlist.py), else None.
    vocabulary: frozenset[int] | None = None
    serial: int = field(default_factory=itertools.count().__next__)  # never reused, unlike id()
    start: int = 0  # first cache row
    position: int = 0  # tokens generated so far (a prefilled prompt included); the next input's position
    prompt_emitted: bool = False  # a streaming text's prompt goes out with its first tokens

    @property
    def rows(self) -> int:
        return self.search.rows

    @property
    def options(self) -> SearchOptions:
        return self.work.options

    @property
    def forced_prefix(self) -> tuple[int, ...]:
        return self.work.forced_prefix


class Batch:
    """Owns a model's KV cache of `num_rows` rows and the texts decoding in them."""

    def __init__(self, model: Transformer, num_rows: int) -> None:
        config = model.config
        self.model = model
        self.num_rows = num_rows
        self.device = model.device
        self.eos_id = config.eos_token_id
        self.start_id = config.decoder_start_token_id
        self.max_source_length = config.max_position_embeddings
        self.max_target_length = config.max_position_embeddings
        self.processors: list[LogitsProcessor] = [
            NeverGenerate([config.pad_token_id] if config.family.bans_pad else []),
            MinLength(config.eos_token_id),
            ForcedTokens(config.eos_token_id, config.forced_eos_token_id is not None),
        ]
        self.cache = model.new_cache(num_rows)
        self.slots: list[Slot] = []  # in cache-row order
        self._tokens: list[int] = []  # each row's next input token, in row order
        #: The model's vocabulary shortlist, if it was loaded with one; each step computes the output layer
        #: for the union of its texts' shortlists, made anew when the texts change (_vocabulary).
        self.shortlist: Shortlist | None = getattr(model, "shortlist", None)
        self._union: tuple[tuple[int, ...], torch.Tensor] | None = None
        #: Encoder outputs (S, d) of texts encoded ahead of joining, by key (see add).
        self._encoded: dict[Hashable, torch.Tensor] = {}

    # -- bookkeeping ------------------------------------------------------------------------------

    @property
    def rows_in_use(self) -> int:
        return len(self._tokens)

    @property
    def free_rows(self) -> int:
        return self.num_rows - len(self._tokens)

    def check(self, source_ids: Sequence[int], options: SearchOptions, prompt: Sequence[int] = (),
              constraints: Sequence[Sequence[int]] = ()) -> None:
        """Raise ValueError when the text cannot be decoded by this model at all (limits named)."""
        if not source_ids:
            raise ValueError("source_ids is empty: a source ends with </s> at least")
        if len(source_ids) > self.max_source_length:
            raise ValueError(f"source is {len(source_ids)} tokens, the model accepts at most {self.max_source_length}")
        if options.max_length > self.max_target_length:
            raise ValueError(f"max_length {options.max_length} exceeds the model's limit {self.max_target_length}")
        if options.rows > self.num_rows:
            raise ValueError(f"{options.rows} beams/hypotheses exceed the batch's {self.num_rows} rows")
        if constraints and (options.sampling or options.beam_size < 2):
            raise ValueError("terminology needs beam search: beam_size >= 2 and no sampling")
        if len(prompt) >= options.max_length:
            raise ValueError(f"the target prefix is {len(prompt)} tokens, max_length {options.max_length} leaves room "
                             f"for {options.max_length - 1} at most")

    # -- texts joining and leaving ------------------------------------------------------------------

    def is_encoded(self, key: Hashable) -> bool:
        """Whether the text's encoder output waits here (it was encoded ahead)."""
        return key in self._encoded

    def forget(self, keys: Collection[Hashable]) -> None:
        """Drop the encoder outputs kept for these texts (they left the queue without joining)."""
        for key in keys:
            self._encoded.pop(key, None)

    @torch.inference_mode()
    def add(self, texts: Sequence[tuple[Hashable, NewText]], ahead: Sequence[tuple[Hashable, NewText]] = ()) -> None:
        """Give each text its rows after the active ones, encoding those not encoded ahead in one pass;
        the texts `ahead` (next in line, not joining yet) are encoded in the same pass and kept for when
        they join. All or nothing: if anything raises, no text was added (rows past the active prefix may
        hold garbage, as free rows may)."""
        if not texts:
            return
        for _, work in [*texts, *ahead]:
            self.check(work.source_ids, work.options, work.prompt, work.constraints)
        # A prefilled prompt counts toward max_length: the search generates what is left.
        searches = [_search_for(work, self.device) for _, work in texts]
        row_counts = [search.rows for search in searches]
        if sum(row_counts) > self.free_rows:
            raise RuntimeError(f"{sum(row_counts)} rows needed, {self.free_rows} free")
        joining = {key for key, _ in texts}
        unencoded = [(key, work) for key, work in texts if key not in self._encoded]
        if unencoded:
            extra = [(key, work) for key, work in ahead if key not in self._encoded and key not in joining]
            self._encoded.update(self._encode(unencoded + extra))
        memories = [self._encoded.pop(key) for key, _ in texts]
        lengths_list = [m.shape[0] for m in memories]
        longest = max(lengths_list)
        memory = memories[0].new_zeros(len(memories), longest, memories[0].shape[-1])  # (P, S, d)
        for index, text_memory in enumerate(memories):
            memory[index, : text_memory.shape[0]] = text_memory
        lengths = self._upload(lengths_list)
        mask = torch.arange(longest, device=self.device)[None, :] < lengths[:, None]  # (P, S)
        first = len(self._tokens)
        rows = torch.arange(first, first + sum(row_counts), device=self.device)  # counted on the host: no sync
        self.cache.reserve(source_length=longest + 1)  # one to spare, as in decode
        self.model.fill_cross_attention(self.cache, rows, memory, lengths, self._upload(row_counts))
        self._prefill(texts, row_counts, first, memory, mask)
        for (key, work), search in zip(texts, searches, strict=True):
            prompt = work.prompt
            vocabulary = None
            if self.shortlist is not None:
                forced = {self.eos_id, *work.forced_prefix, *work.target_prefix}
                forced.update(token for constraint in work.constraints for token in constraint)
                vocabulary = self.shortlist.allowed(work.source_ids, forced)
            self.slots.append(Slot(key, work, search, len(work.source_ids), start=len(self._tokens),
                                   position=len(prompt), vocabulary=vocabulary))
            self._tokens += [prompt[-1] if prompt else self.start_id] * search.rows

    def _encode(self, texts: Sequence[tuple[Hashable, NewText]]) -> dict[Hashable, torch.Tensor]:
        """One encoder pass over the texts' sources → each text's encoder output (S_i, d), by key."""
        sources = [work.source_ids for _, work in texts]
        longest = max(len(s) for s in sources)
        ids = self._upload([s + [self.model.config.pad_token_id] * (longest - len(s)) for s in sources])
        lengths = self._upload([len(s) for s in sources])
        mask = torch.arange(longest, device=self.device)[None, :] < lengths[:, None]  # (P, S)
        memory = self.model.encode(ids, mask)  # (P, S, d)
        return {key: memory[index, : len(source)] for index, ((key, _), source) in enumerate(zip(texts, sources,
                                                                                                  strict=True))}

    def _prefill(self, texts: Sequence[tuple[Hashable, NewText]], row_counts: list[int], first: int,
                 memory: torch.Tensor, mask: torch.Tensor) -> None:
        """One decoder pass over the prompts of the texts that have one (start token + prompt but its last
        token, which is the first step's input), into their rows."""
        chosen = [i for i, (_, work) in enumerate(texts) if work.prompt]
        if not chosen:
            return
        inputs = [[self.start_id, *texts[i][1].prompt[:-1]] for i in chosen]
        longest = max(len(ids) for ids in inputs)
        starts = [first + sum(row_counts[:i]) for i in range(len(texts))]
        rows = [row for i in chosen for row in range(starts[i], starts[i] + row_counts[i])]
        self.cache.reserve(target_length=longest)
        index = self._upload(chosen)
        self.model.prefill(self._upload([ids + [self.start_id] * (longest - len(ids)) for ids in inputs]),
                           memory.index_select(0, index), mask.index_select(0, index), self.cache,
                           self._upload(rows), self._upload([row_counts[i] for i in chosen]))

    @torch.inference_mode()
    def remove(self, keys: Collection[Hashable]) -> None:
        """Drop these texts now; their rows are free when this returns."""
        if any(slot.key in keys for slot in self.slots):
            self._relayout([None if slot.key in keys else self._stay(slot) for slot in self.slots], advance=0)

    def reset(self) -> None:
        """Forget every text (after a fault that left the rows in an unknown state); a fresh cache."""
        self.slots, self._tokens = [], []
        self._encoded.clear()
        self.cache = self.model.new_cache(self.num_rows)

    # -- one decoder step, in parts if need be -------------------------------------------------------

    @torch.inference_mode()
    def decode(self, first: int = 0, stop: int | None = None) -> torch.Tensor:
        """Log-probabilities (rows, V) of the next token for the rows of ``slots[first:stop]``, before any
        logits processor."""
        slots = self.slots[first:stop]
        row0, row1 = slots[0].start, slots[-1].start + slots[-1].rows
        positions = [slot.position for slot in slots for _ in range(slot.rows)]
        target_length = max(positions) + 1
        # One position to spare: a compiled step's graph then always reads a part of the buffer, never all
        # of it (which would be a second graph).
        self.cache.reserve(target_length=min(target_length + 1, self.max_target_length))
        tokens, token_positions = self._upload(self._tokens[row0:row1]), self._upload(positions)
        source_length, group_size = max(slot.source_length for slot in slots), _group_size(slots)
        vocabulary = self._vocabulary(slots)
        compiled = getattr(self.model, "compiled_step", None)
        if compiled is not None and vocabulary is None and row0 == 0 and row1 == len(self._tokens):
            logprobs = compiled(tokens, token_positions, self.cache, target_length, source_length, group_size,
                                self.start_id)
            if logprobs is not None:
                return logprobs
        logits = self.model.decode_step(tokens, token_positions, self.cache, target_length, source_length,
                                        group_size, first_row=row0, vocabulary=vocabulary)
        return torch.log_softmax(logits, dim=-1)  # (N, V)

    def _vocabulary(self, slots: Sequence[Slot]) -> torch.Tensor | None:
        """The union of these texts' shortlists as sorted ids on the device (None without a shortlist); the
        same tensor while the texts are the same, so the model gathers its output rows only on a change."""
        if self.shortlist is None:
            return None
        key = tuple(slot.serial for slot in slots)
        if self._union is None or self._union[0] != key:
            union = sorted(set().union(*(slot.vocabulary or () for slot in slots)))
            self._union = (key, torch.tensor(union, dtype=torch.long, device=self.device))
        return self._union[1]

    @torch.inference_mode()
    def constrain(self, logprobs: torch.Tensor) -> None:
        """Apply the logits processors to a whole step's log-probs, in place."""
        apply_processors(self.processors, logprobs, self.slots)

    @torch.inference_mode()
    def select(self, logprobs: torch.Tensor, skip: Collection[int] = ()) -> list[object]:
        """Each search kind's device work for its texts at once; one selection per slot (None for `skip`)."""
        by_kind: dict[type[Search], list[int]] = defaultdict(list)
        for index, slot in enumerate(self.slots):
            if index not in skip:
                by_kind[type(slot.search)].append(index)
        selections: list[object] = [None] * len(self.slots)
        for kind, indices in by_kind.items():
            members = [self.slots[i] for i in indices]
            chosen = kind.select(logprobs, [slot.start for slot in members], [slot.search for slot in members])
            for index, selection in zip(indices, chosen, strict=True):
                selections[index] = selection
        return selections

    @torch.inference_mode()
    def apply(self, plans: Sequence[Plan | None]) -> None:
        """Move rows as each slot's plan says (None or a finished plan: the text leaves)."""
        self._relayout([None if p is None or p.finished else (p.sources, p.tokens) for p in plans], advance=1)

    # -- moving rows ----------------------------------------------------------------------------------

    def _stay(self, slot: Slot) -> tuple[list[int], list[int]]:
        return list(range(slot.rows)), self._tokens[slot.start : slot.start + slot.rows]

    def _relayout(self, moves: list[tuple[list[int], list[int]] | None], advance: int) -> None:
        """Give each surviving slot its new rows: ``(sources, tokens)`` are the rows (counted within the
        slot) its new rows continue from and their next tokens; positions move on by `advance`."""
        sources: list[int] = []
        tokens: list[int] = []
        slots: list[Slot] = []
        # Cross-attention rows move per text, not per row: every row of a text holds the same keys/values.
        cross_from: list[int] = []
        cross_to: list[int] = []
        cross_length = 0
        survivors = [(s, m) for s, m in zip(self.slots, moves, strict=True) if m is not None]
        for slot, (rows, next_tokens) in _fill_holes_from_the_tail(survivors):
            if slot.start != len(sources):
                cross_from += range(slot.start, slot.start + len(rows))
                cross_to += range(len(sources), len(sources) + len(rows))
                cross_length = max(cross_length, slot.source_length)
            old_start = slot.start
            slot.start = len(sources)
            slot.position += advance
            sources += [old_start + r for r in rows]
            tokens += next_tokens
            slots.append(slot)
        moved = [row for row, source in enumerate(sources) if source != row]
        if moved:
            target_length = max((slot.position for slot in slots), default=0)
            if 2 * len(moved) < len(sources):  # a few rows moved (a text took a hole): copy just those
                self.cache.move_self(torch.tensor([sources[row] for row in moved], device=self.device),
                                     torch.tensor(moved, device=self.device), target_length=target_length)
            else:  # beams reordered: every row through the spare buffer (kv_cache.py says why)
                self.cache.gather(torch.tensor(sources, device=self.device), target_length=target_length)
        if cross_from:
            self.cache.move_cross(
                torch.tensor(cross_from, device=self.device),
                torch.tensor(cross_to, device=self.device),
                source_length=cross_length,
            )
        self.slots, self._tokens = slots, tokens

    def _upload(self, values: list) -> torch.Tensor:
        """A host list as a long tensor on the model's device. On CUDA through pinned memory and without
        waiting: the step's only wait is for the chosen tokens."""
        tensor = torch.tensor(values, dtype=torch.long)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)


def _search_for(work: NewText, device: torch.device) -> Search:
    """The text's search; a prefilled prompt counts toward max_length, so the search generates what is left."""
    options = dataclasses.replace(work.options, max_length=work.options.max_length - len(work.prompt))
    if work.constraints:
        return ConstrainedBeamSearch(options, work.constraints)
    return new_search(options, device)


def _group_size(slots: Sequence[Slot]) -> int:
    """k when every text has k rows (so text i holds rows i*k .. i*k+k-1), else 1 (no sharing)."""
    sizes = {slot.rows for slot in slots}
    return sizes.pop() if len(sizes) == 1 else 1


def _fill_holes_from_the_tail(
    survivors: list[tuple[Slot, tuple[list[int], list[int]]]],
) -> list[tuple[Slot, tuple[list[int], list[int]]]]:
    """The new row order of the surviving slots (given in row order with their next rows).

    Rows must stay a contiguous prefix. Shifting every text after a leaver down would move all their
    cross-attention rows; instead a hole is filled with texts taken from the end when they fit, so most
    texts keep their rows (the order of texts in the cache does not change any result).
    """
    remaining = deque(survivors)
    placed = []
    cursor = 0
    while remaining:
        slot, _ = remaining[0]
        hole = slot.start - cursor
        if hole > 0 and len(remaining) > 1 and len(remaining[-1][1][0]) <= hole:
            placed.append(remaining.pop())
        else:
            placed.append(remaining.popleft())
        cursor += len(placed[-1][1][0])
    return placed


__all__ = ["Batch", "NewText", "Slot"]
