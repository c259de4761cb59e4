"""Reading a tokenizer's files, with errors that name the file: shared by every family's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sentencepiece


def load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing tokenizer file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt: {e}") from e


def load_json_object(path: Path) -> dict[str, Any]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is corrupt: expected a JSON object")
    return data


def load_spm(path: Path) -> sentencepiece.SentencePieceProcessor:
    if not path.is_file():
        raise FileNotFoundError(f"missing tokenizer file {path}")
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path} is not a valid SentencePiece model: {e}") from e
    return sp
