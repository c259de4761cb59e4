"""mtserve.model: the network (Marian and its relatives), its KV cache, search, tokenizer and checkpoints.

Nothing here knows about requests or serving: the engine core (mtserve.engine) drives these pieces, and
the offline ``Translator`` lives there too (``from mtserve.engine import Translator``).
"""

from __future__ import annotations

from pathlib import Path


def bundled_model_dir() -> Path:
    """The small German→English demo model shipped in the package (see its MODEL_CARD.md there)."""
    path = Path(__file__).resolve().parent / "default"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the bundled model is not installed at {path} (an install without package data?)")
    return path
