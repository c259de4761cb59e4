"""mtserve.engine: the engine core that the server and the offline Translator share.

- ``scheduler``: who decodes in the next step; the one ledger of a model's KV rows (pure Python).
- ``batch``: the rows on the device, the encoder pass for newcomers, the decoder pass, row moves (torch).
- ``core``: ``EngineCore.step()``, scheduler and batch together, with faults kept to the texts they hit.
- ``translator``: the offline API, ``Translator.load(dir).translate(texts)``, on the same step.

The names below are imported lazily, so that ``import mtserve.engine.scheduler`` needs no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import EngineCore
    from .translator import Translation, Translator

__all__ = ["EngineCore", "Translation", "Translator"]

_HOMES = {"EngineCore": "core", "Translation": "translator", "Translator": "translator"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
