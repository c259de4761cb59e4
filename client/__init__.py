"""mtserve.client: gRPC clients (sync and asyncio) and the command-line tools. Never imports torch."""

from ._common import RetryPolicy
from .aio import AsyncTranslationClient
from .client import TranslationClient
from .types import ModelArchitecture, ModelInfo, PartialResult, TranslationError, TranslationResult

__all__ = [
    "AsyncTranslationClient",
    "ModelArchitecture",
    "ModelInfo",
    "PartialResult",
    "RetryPolicy",
    "TranslationClient",
    "TranslationError",
    "TranslationResult",
]
