"""The decoder's KV cache: preallocated rows that sequences occupy while they decode.

Each layer's buffers are tensors of their own, (rows, heads, positions, head_dim): a compiled decoder step
writes a layer's new keys into its buffer in place, where a write into one slice of a tensor holding all
layers made torch.compile copy the whole tensor at every write (2.5 ms against 0.12 ms a step, measured).

Rows ``0 .. n-1`` are the active ones; the decoder step always runs on that prefix, so attention reads a
view of the buffers and nothing is concatenated per step. Sequences join by being written into the rows
after the active prefix, and leave (or beams reorder) through :meth:`KVCache.gather` (self-attention) and
:meth:`KVCache.move_cross` (cross-attention), which move whole rows, never recomputing anyone's keys and
values. Buffers grow by doubling along the time axes when a
longer sequence arrives, so reallocation is rare and amortised.

Beam search reorders the self-attention rows at almost every step, so those are double-buffered: a
reorder is one ``index_select`` per layer from the live buffer into the spare one, then the two swap.
That copies every active row (the written positions only) in blocks of a head's whole history, and was
several times faster on the CPU than advanced-index assignment of only the changed rows (base-size
decoder, 128 rows, 6 layers, 30 positions: 3.5 ms against 27 ms a buffer), for twice the self-attention
memory.
"""

from __future__ import annotations

import torch

#: Positions a cache holds at first on each axis; it doubles as longer texts come. Small, because every row
#: gets them whatever its text's length: at 64, the bundled model's beam-4 cache of 128 rows (six buffers:
#: self K/V, their reorder spares, cross K/V) took 144 MB for texts of about ten tokens.
INITIAL_LENGTH = 16


class KVCache:
    """Self-attention K/V (appended per step) and cross-attention K/V (written once per sequence)."""

    def __init__(
        self,
        num_layers: int,
        num_rows: int,
        num_heads: int,
        head_dim: int,
        *,
        max_target_length: int,
        dtype: torch.dtype,
        device: torch.device | str,
        initial_length: int = INITIAL_LENGTH,
    ) -> None:
        self.num_rows = num_rows
        self.max_target_length = max_target_length
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_layers = num_layers
        self._shape = (num_rows, num_heads, head_dim)
        # One buffer per layer (module docstring): (R, H, T, D).
        self.self_k: list[torch.Tensor] = []
        self.self_v: list[torch.Tensor] = []
        self.cross_k: list[torch.Tensor] = []
        self.cross_v: list[torch.Tensor] = []
        # Reorder targets for self_k/self_v, allocated at the first reorder (greedy-only use never needs them).
        self._spare_k: list[torch.Tensor] | None = None
        self._spare_v: list[torch.Tensor] | None = None
        self._allocate_self(min(initial_length, max_target_length))
        self._allocate_cross(initial_length)
        self.source_length = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # (R,)

    # -- capacity ---------------------------------------------------------------------------------

    @property
    def target_capacity(self) -> int:
        return self.self_k[0].shape[2]

    @property
    def source_capacity(self) -> int:
        return self.cross_k[0].shape[2]

    def _buffers(self, length: int) -> list[torch.Tensor]:
        rows, heads, dim = self._shape
        # Always ordinary tensors, never inference tensors, whether the cache grows inside inference_mode
        # (the engine's steps) or outside it (construction, the compiled step's warm-up): torch.compile
        # guards on the kind, and a cache holding both recompiled every graph the first time it grew.
        with torch.inference_mode(False):
            return [torch.zeros(rows, heads, length, dim, dtype=self.dtype, device=self.device)  # (R, H, T, D)
                    for _ in range(self.num_layers)]

    def _grown(self, old: list[torch.Tensor], length: int) -> list[torch.Tensor]:
        new = self._buffers(length)
        with torch.inference_mode(False):
            for fresh, kept in zip(new, old, strict=False):  # old is [] at the first allocation
                fresh[:, :, : kept.shape[2]] = kept
        return new

    def _allocate_self(self, length: int) -> None:
        self.self_k, self.self_v = self._grown(self.self_k, length), self._grown(self.self_v, length)
        self._spare_k = self._spare_v = None

    def _allocate_cross(self, length: int) -> None:
        self.cross_k, self.cross_v = self._grown(self.cross_k, length), self._grown(self.cross_v, length)

    def reserve(self, *, target_length: int = 0, source_length: int = 0) -> None:
        """Make room for `target_length` decoded positions and `source_length` source positions."""
        if target_length > self.max_target_length:
            raise ValueError(f"target length {target_length} exceeds the cache limit {self.max_target_length}")
        if target_length > self.target_capacity:
            grown = self.target_capacity
            while grown < target_length:
                grown *= 2
            self._allocate_self(min(grown, self.max_target_length))
        if source_length > self.source_capacity:
            grown = self.source_capacity
            while grown < source_length:
                grown *= 2
            self._allocate_cross(grown)

    # -- writes -----------------------------------------------------------------------------------

    def write_cross(self, layer: int, rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store cross-attention K/V (N, H, S, D) of the encoder output for `rows` (N,)."""
        length = key.shape[2]
        self.cross_k[layer][rows, :, :length] = key
        self.cross_v[layer][rows, :, :length] = value

    def write_self(self, layer: int, rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Self-attention K/V (N, H, T, D) of positions 0 .. T-1 for `rows` (N,): a prefill's, all at once."""
        length = key.shape[2]
        self.self_k[layer][rows, :, :length] = key
        self.self_v[layer][rows, :, :length] = value

    def set_source_length(self, rows: torch.Tensor, lengths: torch.Tensor) -> None:
        self.source_length[rows] = lengths

    def append(
        self,
        layer: int,
        positions: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        length: int,
        first_row: int = 0,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's K/V (N, H, 1, D) of rows ``first_row ..`` at each row's position (N,) and return
        those rows' K/V so far.

        `length` is max(positions) + 1, known on the host so that no device value is read here. `rows`: the
        row indices ``first_row .. first_row + N - 1``, when the caller has them already (every layer of a
        step writes the same rows).
        """
        count = positions.shape[0]
        if rows is None:
            rows = torch.arange(first_row, first_row + count, device=positions.device)
        # Advanced indices on dims 0 and 2 of (R, H, T, D) select (N, H, D).
        self.self_k[layer][rows, :, positions] = key[:, :, 0]
        self.self_v[layer][rows, :, positions] = value[:, :, 0]
        block = slice(first_row, first_row + count)
        return self.self_k[layer][block, :, :length], self.self_v[layer][block, :, :length]  # (N, H, T, D)

    def cross(
        self, layer: int, count: int, length: int, group_size: int = 1, first_row: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K/V of `count` rows from `first_row`, up to `length` source positions: (N, H, S, D).

        With `group_size` k > 1 (texts of k rows each, aligned at multiples of k from `first_row`), one row
        per text: (N/k, H, S, D), a strided view, since a text's rows hold the same cross-attention K/V.
        """
        rows = slice(first_row, first_row + count, group_size)
        return self.cross_k[layer][rows, :, :length], self.cross_v[layer][rows, :, :length]

    # -- moving rows ------------------------------------------------------------------------------

    def gather(self, sources: torch.Tensor, *, target_length: int) -> None:
        """Self-attention rows ``0 .. len(sources)-1`` become copies of rows `sources` (beam reordering,
        compaction); rows past them are free afterwards. Only the first `target_length` positions move:
        nothing beyond them is read."""
        count = sources.shape[0]
        if self._spare_k is None or self._spare_v is None:
            # Zeros, not empty: rows past the active ones are read (masked) by attention and must be finite.
            self._spare_k, self._spare_v = self._buffers(self.target_capacity), self._buffers(self.target_capacity)
        for lives, spares in ((self.self_k, self._spare_k), (self.self_v, self._spare_v)):
            for live, spare in zip(lives, spares, strict=True):
                torch.index_select(live[:, :, :target_length], 0, sources, out=spare[:count, :, :target_length])
        self.self_k, self._spare_k = self._spare_k, self.self_k
        self.self_v, self._spare_v = self._spare_v, self.self_v

    def move_self(self, sources: torch.Tensor, destinations: torch.Tensor, *, target_length: int) -> None:
        """Self-attention rows `destinations` become copies of rows `sources`, their first `target_length`
        positions, in place; other rows stay. For a few rows (a finished text's hole filled by the last
        text) this copies those rows twice instead of every active row once (:meth:`gather`): greedy
        decoding compacts at almost every step, and copied all 32 rows of all layers each time."""
        for buffer in (*self.self_k, *self.self_v):
            view = buffer[:, :, :target_length]
            view.index_copy_(0, destinations, torch.index_select(view, 0, sources))

    def move_cross(self, sources: torch.Tensor, destinations: torch.Tensor, *, source_length: int) -> None:
        """Cross-attention rows `destinations` become copies of rows `sources` (texts moving to other rows),
        their first `source_length` positions; other rows stay as they are.

        Separate from gather: beams of one text share their cross-attention rows, so a beam reorder moves
        none, and compaction moves only the texts that change place. index_select, not advanced indexing:
        contiguous copies, 2x faster on the CPU; all rows are read before any is written (they may overlap).
        """
        self.source_length[destinations] = self.source_length[sources]
        for buffer in (*self.cross_k, *self.cross_v):
            view = buffer[:, :, :source_length]
            view.index_copy_(0, destinations, torch.index_select(view, 0, sources))

    def attention_biases(
        self,
        positions: torch.Tensor,
        target_length: int,
        source_length: int,
        group_size: int = 1,
        first_row: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What one step of N rows from `first_row` adds to its attention scores (0 where a row may attend,
        -inf where it may not): self (N,1,1,T), and cross (N,1,1,S), or (N/k,1,1,S) for texts of
        `group_size` k rows (see :meth:`cross`). Made once per step for every layer."""
        count = positions.shape[0]
        steps = torch.arange(target_length, device=positions.device)
        sources = torch.arange(source_length, device=positions.device)
        # At least 1: rows past the active ones (a compiled step's padding) must not attend to nothing (NaN).
        lengths = self.source_length[first_row : first_row + count : group_size].clamp(min=1)
        self_bias = torch.zeros(count, target_length, dtype=self.dtype, device=self.device)
        self_bias.masked_fill_(steps[None, :] > positions[:, None], float("-inf"))  # (N, T)
        cross_bias = torch.zeros(lengths.shape[0], source_length, dtype=self.dtype, device=self.device)
        cross_bias.masked_fill_(sources[None, :] >= lengths[:, None], float("-inf"))  # (N/k, S)
        return self_bias[:, None, None, :], cross_bias[:, None, None, :]

    def nbytes(self) -> int:
        buffers = [*self.self_k, *self.self_v, *self.cross_k, *self.cross_v, *(self._spare_k or []),
                   *(self._spare_v or [])]
        return sum(t.numel() * t.element_size() for t in buffers)
