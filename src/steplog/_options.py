"""The tracker's options: their defaults and their validation, written once."""

from __future__ import annotations

import enum
import math
from typing import Any, Literal

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BUFFER_BYTES",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_ARRAY_SIZE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "MAX_DEPTH",
    "OverflowPolicy",
    "overflow_policy",
    "positive_int",
    "positive_seconds",
]

#: Events held in memory at most.
DEFAULT_BUFFER_SIZE = 65_536
#: Bytes of encoded events held in memory at most.
DEFAULT_BUFFER_BYTES = 64 * 2**20
#: Events that wake the writer; also replay's batch size.
DEFAULT_BATCH_SIZE = 1_024
#: Seconds an event may wait in memory.
DEFAULT_FLUSH_INTERVAL = 0.1
#: Arrays and tensors with more elements are recorded as a summary.
DEFAULT_MAX_ARRAY_SIZE = 1_000
#: Seconds the exit hook waits for an unfinished run.
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
#: Nesting deeper than this is recorded as a marker string (orjson stops at 255).
MAX_DEPTH = 200


class OverflowPolicy(str, enum.Enum):
    """What ``log()`` does when the buffer is full (the plain strings work as well)."""

    #: Wait for the writer: nothing is lost.
    BLOCK = "block"
    #: Never wait: drop the oldest queued event (counted).
    DROP_OLDEST = "drop_oldest"
    #: Never wait: drop the new event (counted).
    DROP_NEWEST = "drop_newest"

    def __str__(self) -> str:
        return self.value


#: What ``overflow=`` accepts.
OverflowLike = OverflowPolicy | Literal["block", "drop_oldest", "drop_newest"]


def overflow_policy(value: Any) -> OverflowPolicy:
    """``value`` as an :class:`OverflowPolicy`, or a ValueError naming the choices."""
    try:
        return OverflowPolicy(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in OverflowPolicy)
        raise ValueError(f"overflow must be one of {choices}, got {value!r}") from None


def positive_int(name: str, value: Any) -> int:
    """``value`` as a plain int if it is an int >= 1 (not a bool; an ``IntEnum`` member or
    another int subclass is its value), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_seconds(name: str, value: Any) -> float:
    """``value`` as float seconds if it is a finite number > 0, else a ValueError."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)
