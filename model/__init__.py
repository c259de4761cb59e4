"""mtserve.model: the Marian encoder-decoder network, its KV cache, tokenizer, checkpoints and search.

``Translator`` is imported lazily so that ``import mtserve.model.data`` and friends stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .translator import Translation, Translator

__all__ = ["Translation", "Translator"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import translator

        return getattr(translator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
