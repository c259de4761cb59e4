"""The same model code on every device this machine has: the CPU always, CUDA where there is one (these are
the CUDA tests benchmarks/gpu.sh runs first on a GPU machine; on a machine without one they run on the CPU
and the CUDA cases are skipped, saying why).

On each device: the cached step equals the no-cache decoder, the engine decodes what it decodes on the
CPU in float32, float16/bfloat16 decode without non-finite scores, and the compiled step (CUDA graphs on
CUDA) gives the eager step's tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mtserve.engine.translator import Translator
from mtserve.model.checkpoint import load_model
from mtserve.model.options import SearchOptions

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="no CUDA device on this machine"))]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model_dir(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices")
    make_marian(path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    return path


@pytest.fixture(scope="module")
def sources(model_dir: Path, helpers: Any) -> list[list[int]]:
    config = load_model(model_dir, device="cpu")[0]
    return helpers.random_sources(6, vocab_size=config.vocab_size, pad_id=config.pad_token_id,
                                  eos_id=config.eos_token_id, seed=7)


@pytest.mark.parametrize("device", DEVICES)
def test_the_cached_step_equals_the_no_cache_decoder(model_dir: Path, device: str) -> None:
    _, model = load_model(model_dir, device=device, dtype="float32")
    config = model.config
    source = torch.tensor([[5, 9, 12, 7, config.eos_token_id]], device=device)
    mask = torch.ones_like(source, dtype=torch.bool)
    prefix = [config.decoder_start_token_id, 4, 8, 3]
    with torch.inference_mode():
        memory = model.encode(source, mask)
        cache = model.new_cache(1)
        cache.reserve(source_length=source.shape[1])
        model.fill_cross_attention(cache, torch.tensor([0], device=device), memory,
                                   torch.tensor([source.shape[1]], device=device))
        full = model.decode_full(torch.tensor([prefix], device=device), memory, mask)[0]  # (T, V)
        for position, token in enumerate(prefix):
            cache.reserve(target_length=position + 2)
            step = model.decode_step(torch.tensor([token], device=device), torch.tensor([position], device=device),
                                     cache, position + 1, source.shape[1])
            torch.testing.assert_close(step[0], full[position], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_the_engine_decodes_on_the_device_what_it_decodes_on_the_cpu(model_dir: Path, device: str,
                                                                     sources: list[list[int]]) -> None:
    reference = Translator.load(model_dir, device="cpu", dtype="float32")
    here = Translator.load(model_dir, device=device, dtype="float32")
    for options in (SearchOptions(max_length=14), SearchOptions(beam_size=3, max_length=14)):
        assert ([h[0].token_ids for h in here.generate(sources, options)]
                == [h[0].token_ids for h in reference.generate(sources, options)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_decodes_with_finite_scores(model_dir: Path, device: str, dtype: str,
                                                   sources: list[list[int]]) -> None:
    translator = Translator.load(model_dir, device=device, dtype=dtype)
    assert translator.dtype == getattr(torch, dtype)
    results = translator.generate(sources, SearchOptions(beam_size=2, max_length=10))
    assert all(h and all(torch.isfinite(torch.tensor(x.score)) for x in h) for h in results)


@pytest.mark.parametrize("device", DEVICES)
def test_the_compiled_step_gives_the_eager_tokens(model_dir: Path, device: str, sources: list[list[int]]) -> None:
    eager = Translator.load(model_dir, device=device)
    compiled = Translator.load(model_dir, device=device, compile="on")
    for translator in (eager, compiled):
        translator.max_batch_rows = 1  # one graph: bucket 1
    options = SearchOptions(max_length=10)
    assert ([h[0].token_ids for h in compiled.generate(sources[:2], options)]
            == [h[0].token_ids for h in eager.generate(sources[:2], options)])
    assert compiled.model.compiled_step.failed is None
