"""int8 dynamic quantization of the linear layers (CPU): the same model up to quantization error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mtserve.engine.translator import Translator
from mtserve.model.checkpoint import load_model
from mtserve.model.quantize import quantize_int8

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_every_linear_layer_becomes_int8(make_marian: Any, tmp_path: Path) -> None:
    model_dir, _ = make_marian(tmp_path)
    _, model = load_model(model_dir, device="cpu", dtype="float32")
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert quantize_int8(model) == linears > 0
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_the_bundled_model_keeps_its_logits_under_int8() -> None:
    """On trained weights (random tiny ones have outliers no real model has) the error is a few percent."""
    bundled = Path(__file__).resolve().parents[2] / "model" / "default"
    config, reference = load_model(bundled, device="cpu", dtype="float32")
    _, model = load_model(bundled, device="cpu", dtype="float32")
    quantize_int8(model)
    pad = config.pad_token_id
    ids = torch.tensor([[50, 90, 120, 70, 30, 0], [70, 30, 110, 0, pad, pad]])
    decoder_ids = torch.tensor([[pad, 40, 80, 60], [pad, 60, 60, 90]])
    with torch.inference_mode():
        expected, got = reference(ids, ids != pad, decoder_ids), model(ids, ids != pad, decoder_ids)
    relative = ((got - expected).norm() / expected.norm()).item()
    assert 0 < relative < 0.06  # quantized (not the float path), and close
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_an_int8_translator_translates_and_says_so(make_marian: Any, helpers: Any, tmp_path: Path) -> None:
    model_dir, _ = make_marian(tmp_path, tokenizer=True, init_std=0.5, eos_boost=1.0, seed=5)
    plain = Translator.load(model_dir, device="cpu")
    int8 = Translator.load(model_dir, device="cpu", quantize="int8")
    assert (plain.quantize, int8.quantize) == ("none", "int8")
    config = plain.config
    sources = helpers.random_sources(
        16, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=config.eos_token_id, seed=2
    )
    from mtserve.model.options import SearchOptions

    options = SearchOptions(beam_size=2, max_length=12)
    ours = [h[0].token_ids for h in int8.generate(sources, options)]
    reference = [h[0].token_ids for h in plain.generate(sources, options)]
    # Random tiny weights quantize badly, so only what must hold: every text gets a translation.
    assert len(ours) == len(reference) == len(sources) and any(ours)


def test_int8_is_refused_where_it_cannot_run(make_marian: Any, tmp_path: Path) -> None:
    model_dir, _ = make_marian(tmp_path, tokenizer=True)
    with pytest.raises(ValueError, match="quantize must be one of none, int8, got 'int4'"):
        Translator.load(model_dir, device="cpu", quantize="int4")
    with pytest.raises(ValueError, match=r"quantize int8 needs a float32 model .* got torch.bfloat16"):
        Translator.load(model_dir, device="cpu", dtype="bfloat16", quantize="int8")
