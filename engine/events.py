"""What the engine core tells its callers about a text: one event type, with a finish reason when it ends."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Text


class FinishReason(str, enum.Enum):
    """Why a text left the engine. Exactly one event per text carries one."""

    FINISHED = "finished"  # its best hypothesis ended with </s>
    MAX_LENGTH = "max_length"  # its best hypothesis reached max_length (it may be cut short)
    CANCELLED = "cancelled"  # its caller went away
    DEADLINE = "deadline"  # its deadline passed, or could not be met (shed at admission)
    FAILED = "failed"  # a fault in a step it took part in, or a dead engine; ``error`` says which


@dataclass
class TextEvent:
    """Something that happened to one text in a step: tokens that became final, and/or its end."""

    text: Text
    #: Tokens that became final in this step (only for texts that asked to stream).
    new_token_ids: list[int] = field(default_factory=list)
    #: Its hypotheses, best first (model.search.Hypothesis), when it finished decoding.
    hypotheses: list[Any] | None = None
    finish_reason: FinishReason | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


__all__ = ["FinishReason", "TextEvent"]
