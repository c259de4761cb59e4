"""Pre-packed linear layers (MKL, oneDNN): the same function as nn.Linear, and the same translations."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtserve.engine.translator import Translator
from mtserve.model import mkl_gemm
from mtserve.model.checkpoint import load_model
from mtserve.model.cpu_linear import (
    CpuLinear,
    MklLinear,
    OneDnnLinear,
    bucket_rows,
    can_pack,
    default_kernel,
    fold_logits_bias,
    kernels_available,
    kernels_in_use,
    pack_linears,
)
from mtserve.model.options import SearchOptions

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"),
]


needs_mkl = pytest.mark.skipif(not mkl_gemm.available(), reason="this torch build exports no MKL packed GEMM")


@pytest.mark.parametrize("kernel", [OneDnnLinear, pytest.param(MklLinear, marks=needs_mkl)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_nn_linear(kernel: type[CpuLinear], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    packed = kernel(linear)
    for x in (torch.randn(5, 96), torch.randn(3, 7, 96), torch.randn(7, 3, 96).transpose(0, 1), torch.randn(1, 96),
              torch.randn(17, 96), torch.randn(4, 33, 96)):  # 17 and 132 rows are padded to a bucket
        torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)
    assert packed(torch.randn(0, 96)).shape == (0, 160)


@needs_mkl
def test_mkl_packing_serves_every_row_count_and_frees_the_weight_it_was_given() -> None:
    """Packed once (for mkl_gemm.PACK_ROWS rows), multiplied at any row count, as CTranslate2 does."""
    torch.manual_seed(1)
    linear = nn.Linear(256, 1000)
    packed = MklLinear(linear)
    for rows in (1, 3, 63, 64, 65, 300):
        x = torch.randn(rows, 256)
        torch.testing.assert_close(packed(x), linear(x), atol=1e-4, rtol=1e-5)
    assert not any(t is linear.weight for t in packed.state_dict().values())


def test_the_default_kernel_is_mkl_on_intel_and_onednn_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from mtserve.model import cpu_linear

    monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "GenuineIntel")
    assert default_kernel(["mkl", "onednn"]) == "mkl" and default_kernel(["onednn"]) == "onednn"
    monkeypatch.setattr(cpu_linear, "cpu_vendor", lambda: "AuthenticAMD")
    assert default_kernel(["mkl", "onednn"]) == "onednn" and default_kernel(["mkl"]) == "mkl"
    assert set(kernels_available()) <= {"mkl", "onednn"}


def test_row_buckets_are_few_and_waste_little() -> None:
    buckets = {bucket_rows(rows) for rows in range(1, 32_769)}
    assert len(buckets) == 104
    assert all(rows <= bucket_rows(rows) <= rows * 1.125 for rows in range(1, 32_769))
    assert [bucket_rows(rows) for rows in (1, 16, 17, 33, 64, 65, 1000)] == [1, 16, 18, 36, 64, 72, 1024]


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_memory_stays_flat_over_ever_new_row_counts() -> None:
    """oneDNN keeps per-shape state: without buckets these 300 encoder-like passes (P texts x S tokens)
    grew resident memory by ~240 MB (410 -> 650 MB); with them, by ~10 MB."""
    torch.manual_seed(0)
    rng = random.Random(0)
    layers = [OneDnnLinear(nn.Linear(256, 1024)), OneDnnLinear(nn.Linear(1024, 256))]

    def passes(count: int) -> None:
        with torch.inference_mode():
            for _ in range(count):
                rows = rng.randint(1, 40) * rng.randint(2, 60)
                layers[1](layers[0](torch.randn(rows, 256)))

    passes(150)  # warm-up: the allocator and most buckets
    before = _rss_mb()
    passes(300)
    assert _rss_mb() - before < 40, f"grew {_rss_mb() - before:.0f} MB"


def test_pack_linears_replaces_every_linear_and_only_on_float32_cpu(make_marian: Any, tmp_path: Path) -> None:
    model_dir, _ = make_marian(tmp_path, init_std=0.5)
    _, model = load_model(model_dir, device="cpu", dtype="float32")
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert pack_linears(model) == linears > 0
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(kernels_in_use(model).values()) == linears
    _, forced = load_model(model_dir, device="cpu", dtype="float32")
    assert pack_linears(forced, kernel="onednn") == linears and kernels_in_use(forced) == {"onednn": linears}
    with pytest.raises(ValueError, match="kernel must be auto or one of mkl, onednn, got 'x'"):
        pack_linears(forced, kernel="x")

    _, half = load_model(model_dir, device="cpu", dtype="bfloat16")
    assert not can_pack(half) and pack_linears(half) == 0


def test_packed_translator_gives_the_same_tokens(make_marian: Any, helpers: Any, tmp_path: Path) -> None:
    model_dir, _ = make_marian(tmp_path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    plain = Translator.load(model_dir, device="cpu", pack=False)
    packed = Translator.load(model_dir, device="cpu")
    assert any(isinstance(m, CpuLinear) for m in packed.model.modules())
    assert packed.num_parameters == plain.num_parameters == plain.model.num_parameters()
    config = plain.config
    sources = helpers.random_sources(
        16, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=config.eos_token_id, seed=2
    )
    for options in (SearchOptions(max_length=20), SearchOptions(beam_size=4, max_length=20)):
        ours = [h[0].token_ids for h in packed.generate(sources, options)]
        reference = [h[0].token_ids for h in plain.generate(sources, options)]
        assert ours == reference


def test_folding_final_logits_bias_into_the_packed_output_layer_keeps_the_logits(
    make_marian: Any, tmp_path: Path
) -> None:
    model_dir, _ = make_marian(tmp_path, init_std=0.5)
    _, plain = load_model(model_dir, device="cpu", dtype="float32")
    _, packed = load_model(model_dir, device="cpu", dtype="float32")
    bias = torch.randn_like(plain.final_logits_bias)  # OPUS-MT models have a non-zero one
    plain.final_logits_bias.copy_(bias)
    packed.final_logits_bias.copy_(bias)
    assert not fold_logits_bias(packed)  # nothing to fold into before packing
    pack_linears(packed)
    assert fold_logits_bias(packed) and packed.logits_bias_in_head
    assert not fold_logits_bias(packed)  # and only once
    ids = torch.tensor([[5, 9, 12, 2, 0], [7, 3, 0, 0, 0]])
    mask, decoder_ids = ids != 0, torch.tensor([[0, 4, 8], [0, 6, 6]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids, mask, decoder_ids), plain(ids, mask, decoder_ids), atol=1e-4, rtol=1e-5)


def test_warm_up_meets_every_bucket_once_per_weight_shape(make_marian: Any, tmp_path: Path) -> None:
    from mtserve.model.cpu_linear import warm_up

    model_dir, _ = make_marian(tmp_path, init_std=0.5)
    _, model = load_model(model_dir, device="cpu", dtype="float32")
    pack_linears(model, kernel="onednn")
    shapes = {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, OneDnnLinear)}
    buckets = len({bucket_rows(r) for r in range(1, 65)})
    # The output layer's shape is met up to the batch's rows, the three others up to 64 encoder rows here.
    assert warm_up(model, step_rows=64, pass_rows=64) == len(shapes) * buckets
