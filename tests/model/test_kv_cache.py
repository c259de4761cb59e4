"""The cached decoder equals the plain no-cache decoder at every step, whatever happens to the batch.

A spy around ``Transformer.decode_step`` reconstructs, from the batch's search states, the
full prefix of every cache row at every step, and compares the cached logits with ``decode_full`` on
that prefix (the annotated-transformer test oracle). The scenario has texts joining mid-way, a beam
group cancelled mid-way, beam reordering, and both cache axes growing past their initial 64 positions
while other rows are in flight.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
import torch
from _engine_helpers import engine_core, run_jobs, submit_text

from mtserve.engine.core import EngineCore
from mtserve.model.checkpoint import load_model
from mtserve.model.kv_cache import INITIAL_LENGTH, KVCache
from mtserve.model.options import SearchOptions
from mtserve.model.search import Hypothesis
from mtserve.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

INITIAL = INITIAL_LENGTH  # KVCache's initial length on both axes


@pytest.fixture(scope="module")
def model(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    path = tmp_path_factory.mktemp("kv")
    make_marian(path, eos_boost=None, decoder_layers=3, decoder_attention_heads=2)
    # float64, so that the 1e-5 tolerance is far above rounding and far below any real error.
    return load_model(path, device="cpu", dtype=torch.float64)[1]


def _sources(model: Transformer, lengths: list[int], seed: int) -> list[list[int]]:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    return [
        [*torch.randint(2, config.pad_token_id, (n - 1,), generator=generator).tolist(), config.eos_token_id]
        for n in lengths
    ]


class Oracle:
    """Wraps ``model.decode_step``: checks each step's logits against ``decode_full`` on the rows' prefixes."""

    def __init__(self, model: Transformer, core: EngineCore, sources: dict[Hashable, list[int]]) -> None:
        self.model = model
        self.core = core
        self.sources = sources
        self.memory: dict[Hashable, torch.Tensor] = {}
        self.steps = 0
        self.max_error = 0.0
        self.group_sizes: list[int] = []  # what each step's cross-attention shared
        self.original = model.decode_step

    def row_prefixes(self) -> list[tuple[Hashable, list[int]]]:
        """(group, start token + tokens so far) of every cache row, in row order, from the search states."""
        start = self.model.config.decoder_start_token_id
        rows: list[tuple[Hashable, list[int]]] = []
        for slot in self.core.batch.slots:
            assert slot.start == len(rows), "texts must occupy contiguous rows in order"
            rows += [(slot.key.text_id, [start, *tokens]) for tokens in slot.search.prefixes()]
        return rows

    def encoded(self, group_id: Hashable) -> torch.Tensor:
        if group_id not in self.memory:
            ids = torch.tensor([self.sources[group_id]])
            self.memory[group_id] = self.model.encode(ids, torch.ones_like(ids, dtype=torch.bool))[0]  # (S, d)
        return self.memory[group_id]

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        logits = self.original(tokens, positions, cache, *args, **kwargs)  # (N, V)
        assert kwargs.get("first_row", 0) == 0, "the oracle checks whole steps"
        self.group_sizes.append(args[2] if len(args) > 2 else 1)
        rows = self.row_prefixes()
        assert len(rows) == tokens.shape[0]
        assert [prefix[-1] for _, prefix in rows] == tokens.tolist(), "each row's input is its last token"
        assert [len(prefix) - 1 for _, prefix in rows] == positions.tolist()

        memories = [self.encoded(group_id) for group_id, _ in rows]
        longest_source = max(m.shape[0] for m in memories)
        longest_prefix = max(len(p) for _, p in rows)
        memory = memories[0].new_zeros(len(rows), longest_source, memories[0].shape[1])  # (N, S, d)
        memory_mask = torch.zeros(len(rows), longest_source, dtype=torch.bool)
        prefixes = torch.full((len(rows), longest_prefix), self.model.config.pad_token_id)  # (N, T)
        for i, ((_, prefix), m) in enumerate(zip(rows, memories, strict=True)):
            memory[i, : m.shape[0]], memory_mask[i, : m.shape[0]] = m, True
            prefixes[i, : len(prefix)] = torch.tensor(prefix)
        full = self.model.decode_full(prefixes, memory, memory_mask)  # (N, T, V)
        last = torch.tensor([len(p) - 1 for _, p in rows])
        expected = full[torch.arange(len(rows)), last]  # (N, V)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"step {self.steps}: {m}")
        self.max_error = max(self.max_error, (logits - expected).abs().max().item())
        self.steps += 1
        return logits


def _solo(model: Transformer, source: list[int], options: SearchOptions) -> list[Hypothesis]:
    return run_jobs(model, [(source, options, 0)])[0]


def _step(core: EngineCore, results: dict[Hashable, list[Hypothesis]]) -> None:
    for event in core.step().events:
        if event.hypotheses is not None:
            results[event.text.text_id] = event.hypotheses


def test_cached_steps_equal_full_decoder(model: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    long = SearchOptions(max_length=80, min_length=70)  # past the initial 64 target positions
    beam = SearchOptions(beam_size=3, max_length=80, min_length=70)
    short_beam = SearchOptions(beam_size=4, max_length=12)
    sampled = SearchOptions(num_hypotheses=2, sampling_topk=5, seed=7, max_length=40, min_length=30)
    src = dict(
        zip(
            ["greedy", "beam", "cancelled", "sampled", "long-source"],
            _sources(model, [9, 5, 14, 7, 100], 0),
            strict=True,
        )
    )
    # When a text joins (step index) and with which options.
    plan: dict[int, list[tuple[str, SearchOptions]]] = {
        0: [("greedy", long), ("cancelled", short_beam)],
        3: [("beam", beam), ("sampled", sampled)],
        20: [("long-source", long)],  # source > 64: the cross-attention buffers grow under running rows
    }
    cancel_at = 6

    core = engine_core(model, 16)
    oracle = Oracle(model, core, src)
    monkeypatch.setattr(model, "decode_step", oracle)
    gathers: list[list[int]] = []
    original_gather = core.batch.cache.gather

    def gather(sources: torch.Tensor, **kwargs: int) -> None:
        gathers.append(sources.tolist())
        original_gather(sources, **kwargs)

    monkeypatch.setattr(core.batch.cache, "gather", gather)

    results: dict[Hashable, list[Hypothesis]] = {}
    options: dict[Hashable, SearchOptions] = {}
    step = 0
    while step <= max(plan) or core.has_work():
        for group_id, opts in plan.get(step, []):
            submit_text(core, group_id, src[group_id], opts)
            options[group_id] = opts
        if step == cancel_at:
            core.cancel("cancelled")
        _step(core, results)
        step += 1

    assert oracle.steps == step
    assert "cancelled" not in results
    assert set(results) == {"greedy", "beam", "sampled", "long-source"}
    assert core.batch.cache.target_capacity > INITIAL and core.batch.cache.source_capacity > INITIAL
    assert any(rows != sorted(rows) for rows in gathers), "no beam reordering happened"
    assert max(len(results[g][0].token_ids) for g in results) > INITIAL
    # Nobody was affected by the others joining, leaving or growing the cache.
    monkeypatch.undo()
    for group_id, hypotheses in results.items():
        alone = _solo(model, src[group_id], options[group_id])
        assert [h.token_ids for h in hypotheses] == [h.token_ids for h in alone], group_id
        assert [h.score for h in hypotheses] == pytest.approx([h.score for h in alone], abs=1e-5), group_id


def test_a_leaving_text_is_replaced_by_the_last_one_so_the_others_keep_their_rows(
    model: Transformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the first of four beam-2 texts moves the last text into its rows, not all three down."""
    core = engine_core(model, 8)
    sources = dict(zip("abcd", _sources(model, [5, 7, 6, 4], seed=3), strict=True))
    options = SearchOptions(beam_size=2, max_length=12)
    for group_id, source in sources.items():
        submit_text(core, group_id, source, options)
    oracle = Oracle(model, core, sources)
    monkeypatch.setattr(model, "decode_step", oracle)
    moves: list[tuple[list[int], list[int]]] = []
    original = core.batch.cache.move_cross
    monkeypatch.setattr(core.batch.cache, "move_cross",
                        lambda s, d, **kw: (moves.append((s.tolist(), d.tolist())), original(s, d, **kw)))

    def layout() -> list[tuple[Hashable, int]]:
        return [(slot.key.text_id, slot.start) for slot in core.batch.slots]

    results: dict[Hashable, list[Hypothesis]] = {}
    _step(core, results)
    assert layout() == [("a", 0), ("b", 2), ("c", 4), ("d", 6)]
    core.cancel("a")
    _step(core, results)  # "a" leaves before the decoder pass; "d" moves into its rows
    assert moves[0] == ([6, 7], [0, 1])  # only d's cross-attention rows moved
    if "d" not in results:
        assert layout()[:3] == [("d", 0), ("b", 2), ("c", 4)]
    while core.has_work():
        _step(core, results)
    # Texts of two beams each: cross-attention read each text's K/V once for its two beams, and the
    # oracle found the same logits as the no-cache decoder at every one of those steps.
    assert oracle.group_sizes and set(oracle.group_sizes) == {2}
    monkeypatch.undo()
    for group_id in "bcd":  # and the oracle checked every step against the no-cache decoder
        assert [h.token_ids for h in results[group_id]] == [h.token_ids for h in _solo(model, sources[group_id],
                                                                                       options)]


def _stacked(buffers: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(buffers)  # (L, R, H, T, D): every layer's buffer, for comparisons


def _fill_rows(buffers: list[torch.Tensor]) -> None:
    """Row r of every layer's buffer holds r everywhere."""
    for buffer in buffers:
        buffer.copy_(torch.arange(float(buffer.shape[0]))[:, None, None, None].expand_as(buffer))


def test_each_layer_has_buffers_of_its_own() -> None:
    """Separate tensors per layer, so that a compiled step writes one in place (kv_cache's docstring)."""
    cache = KVCache(3, 4, 2, 5, max_target_length=16, dtype=torch.float32, device="cpu", initial_length=4)
    for buffers in (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v):
        assert len(buffers) == 3 and all(b.shape == (4, 2, 4, 5) for b in buffers)
        assert len({b.data_ptr() for b in buffers}) == 3
    assert cache.nbytes() == 4 * 3 * 4 * 2 * 4 * 5 * 4


def test_gather_moves_whole_self_attention_rows() -> None:
    cache = KVCache(2, 4, 2, 3, max_target_length=16, dtype=torch.float32, device="cpu", initial_length=4)
    for buffers in (cache.self_k, cache.self_v, cache.cross_k, cache.cross_v):
        _fill_rows(buffers)
    cache.gather(torch.tensor([2, 2, 0]), target_length=4)
    for buffers in (cache.self_k, cache.self_v):
        buffer = _stacked(buffers)
        for row, value in enumerate([2.0, 2.0, 0.0]):
            assert torch.equal(buffer[:, row], torch.full_like(buffer[:, row], value)), row
        # Row 3 is free now. Double buffering left the spare's contents there: never anything non-finite,
        # since attention reads free and masked positions.
        assert torch.isfinite(buffer[:, 3]).all()
    for buffers in (cache.cross_k, cache.cross_v):  # beams share cross-attention rows: a reorder moves none
        buffer = _stacked(buffers)
        assert torch.equal(buffer, torch.arange(4.0)[None, :, None, None, None].expand_as(buffer))


def test_move_self_copies_only_the_named_rows_in_place() -> None:
    cache = KVCache(2, 5, 2, 3, max_target_length=16, dtype=torch.float32, device="cpu", initial_length=4)
    for buffers in (cache.self_k, cache.self_v):
        _fill_rows(buffers)
    # The last text (row 4) fills the hole at row 1; row 2 moves to 0 while 0 moves to 2 (a swap).
    cache.move_self(torch.tensor([4, 2, 0]), torch.tensor([1, 0, 2]), target_length=3)
    for buffers in (cache.self_k, cache.self_v):
        buffer = _stacked(buffers)
        for row, value in enumerate([2.0, 4.0, 0.0, 3.0, 4.0]):
            assert torch.equal(buffer[:, row, :, :3], torch.full_like(buffer[:, row, :, :3], value)), row
        assert torch.equal(buffer[:, :, :, 3], torch.arange(5.0)[None, :, None, None].expand_as(buffer[:, :, :, 3]))
    assert cache._spare_k is None  # no spare buffer for a few rows


def test_move_cross_copies_only_the_named_rows_even_when_they_overlap() -> None:
    cache = KVCache(2, 5, 2, 3, max_target_length=16, dtype=torch.float32, device="cpu", initial_length=4)
    for buffers in (cache.cross_k, cache.cross_v):
        _fill_rows(buffers)
    cache.set_source_length(torch.arange(5), torch.tensor([1, 2, 3, 4, 4]))
    # Rows 2-3 move down to 1-2 (2 is read before it is overwritten), row 4 into row 0.
    cache.move_cross(torch.tensor([2, 3, 4]), torch.tensor([1, 2, 0]), source_length=4)
    for buffers in (cache.cross_k, cache.cross_v):
        buffer = _stacked(buffers)
        for row, value in enumerate([4.0, 2.0, 3.0, 3.0, 4.0]):
            assert torch.equal(buffer[:, row], torch.full_like(buffer[:, row], value)), row
    assert cache.source_length.tolist() == [4, 3, 4, 4, 4]


def test_repeated_reorders_compose_like_index_selects() -> None:
    """Double buffering swaps live and spare at each reorder: the n-th reorder must read the (n-1)-th's result."""
    cache = KVCache(2, 5, 2, 3, max_target_length=16, dtype=torch.float32, device="cpu", initial_length=8)
    for buffer in (*cache.self_k, *cache.self_v):
        buffer.normal_()
    expected_k, expected_v = _stacked(cache.self_k), _stacked(cache.self_v)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        sources = torch.randint(0, 5, (5,), generator=generator)
        cache.gather(sources, target_length=8)
        expected_k, expected_v = expected_k[:, sources], expected_v[:, sources]
        assert torch.equal(_stacked(cache.self_k), expected_k) and torch.equal(_stacked(cache.self_v), expected_v)
    cache.reserve(target_length=9)  # growth drops the spares; the next reorder makes new ones
    cache.gather(torch.tensor([4, 3, 2, 1, 0]), target_length=9)
    assert torch.equal(_stacked(cache.self_k)[..., :8, :], expected_k[:, [4, 3, 2, 1, 0]])


def test_growth_keeps_contents_and_respects_the_limit() -> None:
    cache = KVCache(1, 2, 1, 2, max_target_length=20, dtype=torch.float32, device="cpu", initial_length=4)
    cache.self_k[0].normal_()
    cache.cross_v[0].normal_()
    self_before, cross_before = cache.self_k[0].clone(), cache.cross_v[0].clone()
    cache.reserve(target_length=9, source_length=5)
    assert (cache.target_capacity, cache.source_capacity) == (16, 8)
    assert torch.equal(cache.self_k[0][..., :4, :], self_before)
    assert torch.equal(cache.cross_v[0][..., :4, :], cross_before)
    cache.reserve(target_length=20)
    assert cache.target_capacity == 20  # doubling is capped at the limit
    with pytest.raises(ValueError, match="target length 21 exceeds the cache limit 20"):
        cache.reserve(target_length=21)


def test_oracle_catches_a_broken_cache(model: Transformer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a cache that drops the oldest self-attention entry is caught."""
    core = engine_core(model, 4)
    source = _sources(model, [6], 1)[0]
    oracle = Oracle(model, core, {"g": source})
    monkeypatch.setattr(model, "decode_step", oracle)
    original_append = core.batch.cache.append

    def forgetful_append(layer: int, positions: torch.Tensor, key: torch.Tensor, value: torch.Tensor, length: int,
                         first_row: int = 0, rows: torch.Tensor | None = None):
        k, v = original_append(layer, positions, key, value, length, first_row, rows)
        if length > 2:
            k[:, :, 0] = 0.0
        return k, v

    monkeypatch.setattr(core.batch.cache, "append", forgetful_append)
    submit_text(core, "g", source, SearchOptions(max_length=8, min_length=7))
    # The oracle's AssertionError is a fault in the decoder pass: the core fails the text, and says why.
    events = [event for _ in range(8) for event in core.step().events]
    assert len(events) == 1 and events[0].error is not None
    assert isinstance(events[0].error, AssertionError) and "step 2" in str(events[0].error)
