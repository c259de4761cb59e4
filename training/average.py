"""Average the weights of Marian models of one architecture: checkpoint averaging, or a "model soup" of
runs fine-tuned from the same start (Wortsman et al., 2022), which is usually better than either run.

    python -m mtserve.training.average --out runs/soup --save-dtype float16 runs/a runs/b

The result is a Marian directory like the inputs: the averaged weights, and the first input's config,
tokenizer and generation files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mtserve.model.checkpoint import load_model, save_model

# Files of a Marian directory besides the weights and config.json, copied from the first input.
_COMPANIONS = ("source.spm", "target.spm", "vocab.json", "target_vocab.json", "tokenizer_config.json",
               "generation_config.json")


def average_models(paths: Sequence[str | Path], out: str | Path, dtype: str | None = None) -> Path:
    """Write the element-wise mean of the models at `paths` (same config.json) to `out`."""
    if len(paths) < 2:
        raise ValueError(f"average needs at least two models, got {len(paths)}")
    config, total = load_model(paths[0], device="cpu", dtype="float32")
    for path in paths[1:]:
        other_config, other = load_model(path, device="cpu", dtype="float32")
        if other_config.to_dict() != config.to_dict():
            raise ValueError(f"{path}: its config.json describes a different model than {paths[0]}")
        with torch.no_grad():
            for mine, theirs in zip(_weights(total), _weights(other), strict=True):
                mine.add_(theirs)
    with torch.no_grad():
        for tensor in _weights(total):
            tensor.div_(len(paths))
    out = Path(out)
    save_model(total, config, out, dtype=dtype)
    for name in _COMPANIONS:
        if (Path(paths[0]) / name).exists():
            shutil.copyfile(Path(paths[0]) / name, out / name)
    return out


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """What the checkpoint holds (parameters and persistent buffers), tied tensors once, in a fixed order."""
    tensors: dict[int, torch.Tensor] = {}
    for tensor in model.state_dict(keep_vars=True).values():
        tensors.setdefault(tensor.data_ptr(), tensor)
    return list(tensors.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtserve-average", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="Marian model directories (same architecture)")
    parser.add_argument("--out", required=True, type=Path, help="where the averaged model goes")
    parser.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="dtype of the written weights (default float32)")
    args = parser.parse_args(argv)
    print(average_models(args.models, args.out, args.save_dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
