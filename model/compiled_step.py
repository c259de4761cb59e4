"""The decoder step compiled with torch.compile: one graph per row bucket (opt-in, ``--compile``).

What is compiled is decoder_step.decode_step followed by the log-softmax, the whole per-step computation
of the model. On the CPU, inductor fuses the step's small operations (residual + layer norm, the masked
softmax, the activation, the log-softmax) into a few loops and, with ``freezing``, makes the weights
constants of the graph that it packs for MKL at the graph's exact row count. That packing is why the row
count is static (a graph per bucket): with a dynamic row count the weights stay unpacked, which measured
no faster than the eager step. Target and source lengths stay dynamic, so a graph serves every length. On
CUDA, mode ``reduce-overhead`` captures a graph as a CUDA graph (no launch overhead); CUDA graphs need
static shapes, so there attention reads the whole cache capacity, masked.

Costs, measured on the bundled model (one thread, Intel Xeon; tests and benchmarks/README.md give more):
compiling one bucket takes 6-11 s on two cores, and each bucket holds its own packed copy of the decoder's
weights (about 25 MB for the bundled model: the model's float32 weights times the buckets). The server
compiles its buckets before it reports SERVING (``EngineCore.warm_up``), so no caller waits for a compile.

Rows are padded up to the bucket with rows past the active ones, which are free: what the padding rows
write lands in free rows, which may hold anything, and their outputs are dropped. Only whole steps are
compiled; a step retried in parts (engine/core.py) runs eagerly. Any exception from compiling or running a
graph is logged once, and every later step of that model runs eagerly: the compiled step is an
optimisation, never a requirement.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .decoder_step import decode_step
from .kv_cache import KVCache

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "on")
#: Row counts a graph is compiled for; a step runs in the smallest bucket that holds its rows.
ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@functools.cache  # looked up some 30 times a step (marking the cache's buffers): once is enough
def _dynamo() -> Any:
    """torch._dynamo, imported when first needed: torch's compiler costs 1.2 s and 70 MB of resident memory
    to import, which a process that does not compile should not pay."""
    return importlib.import_module("torch._dynamo")


def buckets_for(max_rows: int, group_size: int = 1) -> list[int]:
    """The buckets of a batch of `max_rows` rows for texts of `group_size` rows each: multiples of the
    group size (a text's rows are never split) up to the batch's rows."""
    whole = max_rows - max_rows % group_size
    return sorted({b * group_size for b in ROW_BUCKETS if b * group_size <= whole} | ({whole} if whole else set()))


class _Step(nn.Module):
    """What is compiled: the step and its log-softmax, as a module holding the model, so that freezing
    finds the model's parameters (it freezes the compiled module's own)."""

    def __init__(self, model: nn.Module, group_size: int) -> None:
        super().__init__()
        self.model = model
        self.group_size = group_size

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, steps: torch.Tensor,
                sources: torch.Tensor) -> torch.Tensor:
        # The lengths come as the sizes of two tensors, marked dynamic: one graph serves all of them (two
        # ints would compile static first, then again dynamic once they change).
        logits = decode_step(self.model, tokens, positions, cache, steps.shape[0], sources.shape[0], self.group_size)
        return torch.log_softmax(logits, dim=-1)


_copies = itertools.count()


def _own_step_class() -> type[_Step]:
    """_Step with a forward of its own code object. Dynamo keeps compiled graphs per code object and tells
    them apart by guards; with the model's guards skipped (for speed), two models, or a model loaded where
    an unloaded one was (the same id), would share the first one's graphs, weights frozen in. A fresh code
    object per graph family keeps every model's graphs its own."""
    forward = _Step.forward
    number = next(_copies)
    code = forward.__code__.replace(co_name=f"forward_{number}")
    fresh = types.FunctionType(code, forward.__globals__, code.co_name, forward.__defaults__, forward.__closure__)
    return type(f"_Step{number}", (_Step,), {"forward": fresh})


class CompiledStep:
    """The compiled step of one model: its graphs by (row bucket, group size), compiled on first use."""

    def __init__(self, model: torch.nn.Module) -> None:
        # Every bucket and group size is a graph of the one step function; dynamo's default allows it 8.
        config = _dynamo().config
        config.recompile_limit = max(config.recompile_limit, 64)
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 512)
        self.model = model
        self.device = next(model.parameters()).device
        self._functions: dict[int, Callable[..., torch.Tensor]] = {}
        self._compiled: set[tuple[int, int]] = set()  # (bucket, group size) graphs that ran once
        self.compile_seconds: dict[tuple[int, int], float] = {}
        self.failed: BaseException | None = None

    @staticmethod
    def bucket(rows: int, group_size: int, max_rows: int) -> int | None:
        """The bucket `rows` run in, or None when none holds them."""
        return next((b for b in buckets_for(max_rows, group_size) if b >= rows), None)

    def _function(self, group_size: int) -> Callable[..., torch.Tensor]:
        if group_size not in self._functions:
            on_cuda = self.device.type == "cuda"
            step = _own_step_class()(self.model, group_size)
            # The model never changes once loaded and its step has code of its own (_own_step_class), so
            # its modules need no guards: checking them took 0.43 ms of every 7.5 ms step (bundled model,
            # 32 rows), 0.10 ms without.
            self._functions[group_size] = torch.compile(
                step, fullgraph=True, mode="reduce-overhead" if on_cuda else None,
                options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        return self._functions[group_size]

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, target_length: int,
                 source_length: int, group_size: int, pad_token: int) -> torch.Tensor | None:
        """Log-probabilities (N, V) of a whole step (rows 0 .. N-1), or None when this step cannot run
        compiled (no bucket holds it, or compiling failed before): the caller then runs it eagerly."""
        if self.failed is not None:
            return None
        count = tokens.shape[0]
        bucket = self.bucket(count, group_size, cache.num_rows)
        if bucket is None:
            return None
        if bucket != count:  # padding rows: free rows, at position 0
            tokens = torch.cat([tokens, tokens.new_full((bucket - count,), pad_token)])
            positions = torch.cat([positions, positions.new_zeros(bucket - count)])
        if self.device.type == "cuda":  # static shapes for CUDA graphs: the whole capacity, masked
            target_length, source_length = cache.target_capacity, cache.source_capacity
        else:
            # At least 2: torch.compile turns a dynamic size of 1 into a constant, and every batch starts
            # at target length 1, so graphs compiled there served no later step, and graphs compiled
            # later none of the first steps (each bucket compiled twice). The extra position is masked
            # (attention_biases: beyond a row's position or source length) and the cache holds it
            # (capacities start at 16).
            target_length = min(max(target_length, 2), cache.target_capacity)
            source_length = min(max(source_length, 2), cache.source_capacity)
        steps = torch.empty(target_length, dtype=torch.int8, device=self.device)  # only their sizes are read
        sources = torch.empty(source_length, dtype=torch.int8, device=self.device)
        _dynamo().mark_static(tokens, 0)  # a graph per bucket, whatever the row counts seen before
        _dynamo().mark_static(positions, 0)
        if self.device.type != "cuda":
            _dynamo().mark_dynamic(steps, 0)
            _dynamo().mark_dynamic(sources, 0)
            for buffer in (*cache.self_k, *cache.self_v, *cache.cross_k, *cache.cross_v):
                # Capacities grow, and batches of other row counts use the same graphs.
                _dynamo().mark_dynamic(buffer, 0)
                _dynamo().mark_dynamic(buffer, 2)
            _dynamo().mark_dynamic(cache.source_length, 0)
        key = (bucket, group_size)
        started = time.perf_counter()
        try:
            # Freezing is read from inductor's global config when a graph compiles (torch.compile's options
            # did not reach it), so it is set around the call, which is when compiling happens.
            with importlib.import_module("torch._inductor.config").patch(freezing=self.device.type != "cuda"):
                logprobs = self._function(group_size)(tokens, positions, cache, steps, sources)
        except Exception as exc:  # any failure: eager from now on, said once
            self.failed = exc
            log.warning("the compiled decoder step failed (%s: %s); decoding eagerly from now on",
                        type(exc).__name__, exc)
            return None
        if key not in self._compiled:
            self._compiled.add(key)
            self.compile_seconds[key] = time.perf_counter() - started
            log.info("compiled the decoder step for %d rows (texts of %d rows) in %.1fs", bucket, group_size,
                     self.compile_seconds[key])
        return logprobs[:count]

    @torch.inference_mode()  # as the engine's steps run: torch.compile guards on inference tensors too
    def warm_up(self, cache: KVCache, group_sizes: Iterable[int] = (1,), pad_token: int = 0) -> float:
        """Compile every bucket of these group sizes now (the server does this before SERVING); returns the
        seconds it took. The cache's rows are written (free rows: the caller's batch is empty)."""
        started = time.perf_counter()
        cache.reserve(target_length=2, source_length=2)
        cache.set_source_length(torch.arange(cache.num_rows, device=cache.device),
                                torch.full((cache.num_rows,), 2, dtype=torch.long, device=cache.device))
        for group_size in group_sizes:
            for bucket in buckets_for(cache.num_rows, group_size):
                tokens = torch.full((bucket,), pad_token, dtype=torch.long, device=self.device)
                if self(tokens, torch.zeros_like(tokens), cache, 1, 2, group_size, pad_token) is None:
                    return time.perf_counter() - started
        return time.perf_counter() - started
