"""Loading and saving Marian directories: clear errors for bad ones, identical logits for good ones."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_helpers import run_jobs
from safetensors.torch import load_file, save_file

from mtserve.model.checkpoint import CheckpointError, load_model, save_model
from mtserve.model.options import SearchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def saved(make_marian: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A good model directory (read-only for the tests: copy it before changing anything) and its HF model."""
    path = tmp_path_factory.mktemp("good")
    return make_marian(path, decoder_layers=1, encoder_layers=1)


@pytest.fixture
def copy_of(saved: tuple[Path, Any], tmp_path: Path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(saved[0], path)
    return path


@pytest.fixture(scope="module")
def batch(saved: tuple[Path, Any], helpers: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded source batch, its mask, and teacher-forced decoder inputs."""
    config = saved[1].config
    sources = helpers.random_sources(4, vocab_size=config.vocab_size, pad_id=config.pad_token_id, eos_id=0, seed=3)
    ids, mask = helpers.pad_batch(sources, config.pad_token_id)
    decoder_ids = torch.randint(1, config.pad_token_id, (4, 7), generator=torch.Generator().manual_seed(4))
    decoder_ids[:, 0] = config.decoder_start_token_id
    return ids, mask, decoder_ids


def _hf_logits(hf: Any, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    ids, mask, decoder_ids = batch
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=decoder_ids).logits.float()


def _logits(path: Path, batch: tuple[torch.Tensor, ...], **kwargs: Any) -> torch.Tensor:
    _, model = load_model(path, device="cpu", **kwargs)
    with torch.no_grad():
        return model(*batch)


# -- bad directories ----------------------------------------------------------------------------------


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        values = json.loads((path / "config.json").read_text())
        values.update(changes)
        (path / "config.json").write_text(json.dumps(values))

    return edit


def _edit_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        tensors = load_file(path / WEIGHTS)
        change(tensors)
        save_file(tensors, path / WEIGHTS)

    return edit


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda path: (path / name).write_bytes(data)


BAD_DIRECTORIES: dict[str, tuple[Callable[[Path], None], str | None, list[str]]] = {
    # case: (how to break the copy, file the message names (None: the directory), other words it must hold)
    "no-config": (lambda p: (p / "config.json").unlink(), "config.json", ["no config.json"]),
    "invalid-json": (_write("config.json", b'{"d_model": 32,'), "config.json", ["not valid JSON"]),
    "not-marian": (_edit_config(model_type="bart"), "config.json", ["model_type 'bart'", "marian"]),
    "activation": (_edit_config(activation_function="tanh"), "config.json", ["activation_function 'tanh'"]),
    "heads": (
        _edit_config(decoder_attention_heads=5),
        "config.json",
        ["d_model 32 is not divisible by decoder_attention_heads 5"],
    ),
    "no-weights": (lambda p: (p / WEIGHTS).unlink(), None, ["no model.safetensors or pytorch_model.bin"]),
    "corrupt": (_write(WEIGHTS, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), WEIGHTS, ["not a readable"]),
    "truncated": (
        lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:-100]),
        WEIGHTS,
        ["not a readable"],
    ),
    "missing-tensor": (
        _edit_weights(lambda t: t.pop("model.decoder.layers.0.fc2.weight")),
        WEIGHTS,
        ["'decoder.layers.0.fc2.weight' is missing"],
    ),
    "wrong-shape": (
        _edit_weights(lambda t: t.update({"model.encoder.layers.0.fc1.bias": torch.zeros(63)})),
        WEIGHTS,
        ["'encoder.layers.0.fc1.bias' has shape (63,)", "(64,)"],
    ),
    "integer-tensor": (
        _edit_weights(lambda t: t.update({"model.encoder.layers.0.fc1.bias": torch.zeros(64, dtype=torch.int32)})),
        WEIGHTS,
        ["'encoder.layers.0.fc1.bias' has dtype torch.int32"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DIRECTORIES))
def test_bad_directory_has_a_clear_message(copy_of: Path, case: str) -> None:
    breaker, file, words = BAD_DIRECTORIES[case]
    breaker(copy_of)
    with pytest.raises(CheckpointError) as error:
        load_model(copy_of, device="cpu")
    message = str(error.value)
    assert str(copy_of / file if file else copy_of) in message
    for word in words:
        assert word in message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nowhere: no such model directory"):
        load_model(tmp_path / "nowhere")


def test_unknown_dtype_and_device(saved: tuple[Path, Any]) -> None:
    with pytest.raises(CheckpointError, match="dtype 'float64' is not one of auto, float32, float16, bfloat16"):
        load_model(saved[0], device="cpu", dtype="float64")
    with pytest.raises(CheckpointError, match="device 'tpu' is not one of"):
        load_model(saved[0], device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(saved: tuple[Path, Any]) -> None:
    with pytest.raises(CheckpointError, match="'cuda' was asked for, but CUDA is not available"):
        load_model(saved[0], device="cuda")


# -- good directories -----------------------------------------------------------------------------------


def test_safetensors_logits_match(saved: tuple[Path, Any], batch: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(_logits(saved[0], batch), _hf_logits(saved[1], batch), atol=1e-4, rtol=1e-4)


def test_pytorch_bin_loads(saved: tuple[Path, Any], batch: tuple[torch.Tensor, ...], tmp_path: Path) -> None:
    shutil.copy(saved[0] / "config.json", tmp_path / "config.json")
    torch.save(saved[1].state_dict(), tmp_path / "pytorch_model.bin")
    torch.testing.assert_close(_logits(tmp_path, batch), _hf_logits(saved[1], batch), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("disk_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_disk_loads_as_float32(
    saved: tuple[Path, Any], batch: tuple[torch.Tensor, ...], tmp_path: Path, disk_dtype: torch.dtype
) -> None:
    shutil.copy(saved[0] / "config.json", tmp_path / "config.json")
    save_file({k: v.to(disk_dtype) for k, v in load_file(saved[0] / WEIGHTS).items()}, tmp_path / WEIGHTS)
    _, model = load_model(tmp_path, device="cpu")  # auto on CPU: float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = load_file(saved[0] / WEIGHTS)["model.decoder.layers.0.fc1.weight"]
    assert torch.equal(model.decoder.layers[0].fc1.weight, reference.to(disk_dtype).float())
    # Transformers with the same rounded weights, computing in float32, is the reference.
    rounded = copy.deepcopy(saved[1])
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if "embed_positions" not in name:  # static sinusoids, not in the file
                parameter.copy_(parameter.to(disk_dtype).float())
        rounded.final_logits_bias.copy_(rounded.final_logits_bias.to(disk_dtype).float())
    expected = _hf_logits(rounded, batch)
    torch.testing.assert_close(_logits(tmp_path, batch), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected, _hf_logits(saved[1], batch), atol=1e-4, rtol=1e-4), "rounding must show"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_compute_on_cpu(saved: tuple[Path, Any], batch: tuple[torch.Tensor, ...], dtype: str) -> None:
    _, model = load_model(saved[0], device="cpu", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert model.positions.dtype == getattr(torch, dtype)
    with torch.no_grad():
        logits = model(*batch)
    assert logits.dtype == torch.float32  # the output projection is promoted for log_softmax
    expected = _hf_logits(saved[1], batch)
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8
    [hypotheses] = run_jobs(model, [(batch[0][0].tolist(), SearchOptions(beam_size=2, max_length=6), 0)])
    assert hypotheses and len(hypotheses[0].token_ids) <= 6


def test_save_model_round_trips_through_transformers(
    saved: tuple[Path, Any], batch: tuple[torch.Tensor, ...], tmp_path: Path
) -> None:
    from transformers import MarianMTModel

    config, model = load_model(saved[0], device="cpu")
    save_model(model, config, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", WEIGHTS}
    reloaded = MarianMTModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_hf_logits(reloaded, batch), _hf_logits(saved[1], batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(tmp_path, batch), _hf_logits(saved[1], batch), atol=1e-4, rtol=1e-4)


def _tensor_bytes(file: Path) -> int:
    """Bytes of tensor data in a safetensors file: its size less the length prefix and the JSON header."""
    data = file.read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def test_save_model_float16_halves_the_file(saved: tuple[Path, Any], tmp_path: Path) -> None:
    config, model = load_model(saved[0], device="cpu")
    save_model(model, config, tmp_path / "full")
    save_model(model, config, tmp_path / "half", dtype="float16")
    full, half = (_tensor_bytes(tmp_path / name / WEIGHTS) for name in ("full", "half"))
    assert half * 2 == full
    assert {t.dtype for t in load_file(tmp_path / "half" / WEIGHTS).values()} == {torch.float16}
    _, reloaded = load_model(tmp_path / "half", device="cpu")
    assert reloaded.lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False}, {"share_encoder_decoder_embeddings": False,
                                                                           "decoder_vocab_size": 90}])
def test_loaded_model_keeps_the_ties_and_parameter_count_of_transformers(
    make_marian: Any, tmp_path: Path, overrides: dict[str, Any]
) -> None:
    _, hf = make_marian(tmp_path, **overrides)
    config, model = load_model(tmp_path, device="cpu")
    tied = model.lm_head.weight is model.decoder.embed_tokens.weight
    assert tied == config.tie_word_embeddings
    # Transformers counts its frozen sinusoidal position tables as parameters (ours are a buffer), and
    # with a shared vocabulary but untied embeddings it keeps an unused `shared` table.
    unused = sum(p.numel() for name, p in hf.named_parameters() if "embed_positions" in name)
    shared = getattr(hf.model, "shared", None)
    if shared is not None and hf.model.encoder.embed_tokens.weight is not shared.weight:
        unused += shared.weight.numel()
    assert model.num_parameters() == hf.num_parameters() - unused
