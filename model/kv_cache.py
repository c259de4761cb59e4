"""The decoder's KV cache: preallocated rows that sequences occupy while they decode.

Rows ``0 .. n-1`` are the active ones; the decoder step always runs on that prefix, so attention reads a
view of the buffers and nothing is concatenated per step. Sequences join by being written into the rows
after the active prefix, and leave (or beams reorder) through one :meth:`KVCache.gather` that moves whole
rows, never recomputing anyone's keys and values. Buffers grow by doubling along the time axes when a
longer sequence arrives, so reallocation is rare and amortised.
"""

from __future__ import annotations

import torch


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
        initial_length: int = 64,
    ) -> None:
        self.num_rows = num_rows
        self.max_target_length = max_target_length
        self.dtype = dtype
        self.device = torch.device(device)
        self._shape = (num_layers, num_rows, num_heads, head_dim)
        self.self_k = self.self_v = self.cross_k = self.cross_v = torch.empty(0)
        self._allocate_self(min(initial_length, max_target_length))
        self._allocate_cross(initial_length)
        self.source_length = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # (R,)

    # -- capacity ---------------------------------------------------------------------------------

    @property
    def target_capacity(self) -> int:
        return self.self_k.shape[3]

    @property
    def source_capacity(self) -> int:
        return self.cross_k.shape[3]

    def _buffer(self, length: int) -> torch.Tensor:
        layers, rows, heads, dim = self._shape
        return torch.zeros(layers, rows, heads, length, dim, dtype=self.dtype, device=self.device)  # (L, R, H, T, D)

    def _allocate_self(self, length: int) -> None:
        old_k, old_v = self.self_k, self.self_v
        self.self_k, self.self_v = self._buffer(length), self._buffer(length)
        if old_k.numel():
            self.self_k[..., : old_k.shape[3], :] = old_k
            self.self_v[..., : old_v.shape[3], :] = old_v

    def _allocate_cross(self, length: int) -> None:
        old_k, old_v = self.cross_k, self.cross_v
        self.cross_k, self.cross_v = self._buffer(length), self._buffer(length)
        if old_k.numel():
            self.cross_k[..., : old_k.shape[3], :] = old_k
            self.cross_v[..., : old_v.shape[3], :] = old_v

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
        self.cross_k[layer, rows, :, :length] = key
        self.cross_v[layer, rows, :, :length] = value

    def set_source_length(self, rows: torch.Tensor, lengths: torch.Tensor) -> None:
        self.source_length[rows] = lengths

    def append(
        self, layer: int, positions: torch.Tensor, key: torch.Tensor, value: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's K/V (N, H, 1, D) at each row's position (N,) and return the rows' K/V so far.

        `length` is max(positions) + 1, known on the host so that no device value is read here.
        """
        count = positions.shape[0]
        rows = torch.arange(count, device=positions.device)
        # Advanced indices on dims 0 and 2 of (R, H, T, D) select (N, H, D).
        self.self_k[layer][rows, :, positions] = key[:, :, 0]
        self.self_v[layer][rows, :, positions] = value[:, :, 0]
        return self.self_k[layer, :count, :, :length], self.self_v[layer, :count, :, :length]  # (N, H, T, D)

    def cross(self, layer: int, count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K/V of the first `count` rows, up to `length` source positions: (N, H, S, D)."""
        return self.cross_k[layer, :count, :, :length], self.cross_v[layer, :count, :, :length]

    # -- moving rows ------------------------------------------------------------------------------

    def gather(self, sources: torch.Tensor, *, target_length: int, source_length: int) -> None:
        """Rows ``0 .. len(sources)-1`` become copies of rows `sources` (beam reordering, compaction).

        Only the first `target_length`/`source_length` positions are moved: nothing beyond them is read.
        A `source_length` of 0 leaves the cross-attention rows alone (beams of one text share them).
        """
        count = sources.shape[0]
        buffers = [(self.self_k, target_length), (self.self_v, target_length)]
        if source_length:
            buffers += [(self.cross_k, source_length), (self.cross_v, source_length)]
            self.source_length[:count] = self.source_length[sources]
        # Only rows that change are copied (the right-hand side is gathered before anything is written).
        destinations = torch.arange(count, device=sources.device)
        changed = sources != destinations
        sources, destinations = sources[changed], destinations[changed]
        for buffer, length in buffers:
            buffer[:, destinations, :, :length] = buffer[:, sources, :, :length]

    def masks(
        self, positions: torch.Tensor, target_length: int, source_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean attention masks for one step of the first N rows: self (N,1,1,T) and cross (N,1,1,S)."""
        count = positions.shape[0]
        steps = torch.arange(target_length, device=positions.device)
        self_mask = steps[None, :] <= positions[:, None]  # (N, T)
        sources = torch.arange(source_length, device=positions.device)
        cross_mask = sources[None, :] < self.source_length[:count, None]  # (N, S)
        return self_mask[:, None, None, :], cross_mask[:, None, None, :]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.self_k, self.self_v, self.cross_k, self.cross_v))
