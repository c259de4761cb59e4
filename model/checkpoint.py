"""Loading and saving Transformers-layout weights (model.safetensors or pytorch_model.bin) onto a device and dtype."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, ModelConfig
from .transformer import Transformer, position_table

log = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Names that hold the same tensor when embeddings are shared or tied; any one of them may be on disk.
_ALIASES = {
    "shared.weight": ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
    "encoder.embed_tokens.weight": ("shared.weight",),
    "decoder.embed_tokens.weight": ("shared.weight",),
    "lm_head.weight": ("decoder.embed_tokens.weight", "shared.weight"),
}


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message names the file and, where one is at fault, the tensor."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CheckpointError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} was asked for, but CUDA is not available on this machine")
    if resolved.type not in ("cpu", "cuda"):
        raise CheckpointError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return resolved


def cpu_has_fast_float16() -> bool:
    """Whether this CPU computes float16 natively (AVX512-FP16 or AMX): there float16 and bfloat16 run
    faster than float32 (2x here, on a Xeon with AMX); elsewhere torch emulates them, slowly."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_fp16", "amx_fp16"))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 on CPU (half-precision matmuls are slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(path: str | Path) -> ModelConfig:
    """The model directory exists and its config.json describes a model mtserve serves (before anything
    else of it is read, so that errors speak of the directory first)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (--model takes a model directory)")
    if not any(path.iterdir()):
        raise CheckpointError(f"{path}: the model directory is empty")
    try:
        return ModelConfig.from_dir(path)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors on disk, with Transformers' `model.` prefix removed."""
    safetensors_path, pytorch_path = path / SAFETENSORS_FILE, path / PYTORCH_FILE
    if safetensors_path.exists():
        file = safetensors_path
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
    elif pytorch_path.exists():
        file = pytorch_path
        try:
            # weights_only: a pickled checkpoint must never run code on load.
            tensors = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or unsafe pickle
            raise CheckpointError(f"{file}: not a readable PyTorch checkpoint ({exc})") from None
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{file}: holds a {type(tensors).__name__}, not a state dict")
    else:
        raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {PYTORCH_FILE} in the model directory")
    return {name.removeprefix("model."): tensor for name, tensor in tensors.items()}, file


def _has_distinct_embeddings(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> bool:
    """A shared vocabulary whose encoder and decoder tables differ on disk.

    Transformers 5 saves a shared-vocabulary model with tie_word_embeddings=False that way (and leaves
    shared.weight unused); older files hold one table under all three names.
    """
    encoder, decoder = tensors.get("encoder.embed_tokens.weight"), tensors.get("decoder.embed_tokens.weight")
    return (
        config.share_encoder_decoder_embeddings
        and encoder is not None
        and decoder is not None
        and not torch.equal(encoder, decoder)
    )


def _find(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    for candidate in (name, *_ALIASES.get(name, ())):
        if candidate in tensors:
            return tensors[candidate]
    return None


def load_model(
    path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"
) -> tuple[ModelConfig, Transformer]:
    """Read config.json and the weights of a model directory into a model in eval mode on `device`."""
    path = Path(path)
    config = check_model_dir(path)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    tensors, file = read_state_dict(path)

    structure = config
    if _has_distinct_embeddings(config, tensors):
        structure = dataclasses.replace(config, share_encoder_decoder_embeddings=False)
    with torch.device("meta"):
        model = Transformer(structure)
    model.config = config
    state: dict[str, torch.Tensor] = {}
    for name, expected in model.state_dict().items():
        tensor = _find(tensors, name)
        if tensor is None and name == "final_logits_bias":
            tensor = torch.zeros(expected.shape)  # optional in Transformers too
        if tensor is None:
            raise CheckpointError(f"{file}: tensor {name!r} is missing")
        if tuple(tensor.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected.shape)}"
            )
        if not tensor.is_floating_point():
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {tensor.dtype}, expected a float type")
        state[name] = tensor
    known = set(state) | {n for name in state for n in _ALIASES.get(name, ())}
    unexpected = sorted(n for n in tensors if n not in known and "embed_positions" not in n)
    if unexpected:
        log.warning("%s: ignoring %d tensors the model does not use: %s", file, len(unexpected), unexpected[:5])

    # Built on the meta device, so no time goes into a random initialisation that is overwritten at once.
    _materialize(model, target_device, target_dtype)
    if structure.tie_word_embeddings:
        # to_empty gives every module its own new parameter: re-tie so the table is held (and loaded) once.
        model.lm_head.weight = model.decoder.embed_tokens.weight
    model.load_state_dict(state, strict=True)
    # to_empty left the non-persistent position table uninitialised.
    model.positions = position_table(config).to(target_device, target_dtype)
    return config, model.eval()


def _materialize(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give every parameter and buffer of a model built on the meta device real, uninitialised storage (what
    ``Module.to_empty`` does, without the Python meta kernels it reaches for, whose import costs 66 MB of
    resident memory)."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is None or tensor.device.type != "meta":
                    continue
                kind = dtype if tensor.is_floating_point() else tensor.dtype
                fresh = torch.empty(tensor.shape, dtype=kind, device=device)
                store[name] = torch.nn.Parameter(fresh, tensor.requires_grad) if store is module._parameters else fresh
    for module in model.modules():  # tensors that stayed off the meta device (position tables) take the dtype
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                module._buffers[name] = buffer.to(device, dtype)


def save_model(
    model: Transformer, config: ModelConfig, path: str | Path, dtype: str | torch.dtype | None = None
) -> Path:
    """Write config.json and model.safetensors in the layout Transformers and CTranslate2 read.

    Tied tensors are written once under their Transformers name; `dtype` (e.g. float16) shrinks the file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cast = resolve_dtype(dtype, torch.device("cpu")) if dtype is not None else None
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied alias of a tensor already written
            continue
        seen.add(tensor.data_ptr())
        prefix = "" if name in ("lm_head.weight", "final_logits_bias") else "model."
        out = tensor.detach().to("cpu")
        tensors[prefix + name] = (out.to(cast) if cast is not None else out).contiguous()
    weights = path / SAFETENSORS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt"})
    # safetensors creates the file 0600; a model baked into an image must be readable by a non-root server.
    weights.chmod(0o644)
    (path / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def model_languages(path: Path) -> tuple[str, str]:
    """(source, target) language codes, from tokenizer_config.json (OPUS-MT's source_lang/target_lang)."""
    try:
        values = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "", ""
    return str(values.get("source_lang") or ""), str(values.get("target_lang") or "")
