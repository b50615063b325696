"""Run ids and the names that become path components."""

from __future__ import annotations

import os
import secrets
import time

__all__ = ["check_name", "new_run_id"]

_FORBIDDEN = frozenset('/\\\0:*?"<>|')


def check_name(value: str, *, what: str) -> str:
    """Return ``value`` if it is safe as a single path component, else raise.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is empty, ``.``/``..``, too long, or contains a path
            separator, a NUL byte or another character that is not portable in file names.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    bad = sorted({c for c in value if c in _FORBIDDEN or ord(c) < 32})
    if not value or value in {".", ".."} or bad or len(value) > 200 or value != value.strip():
        detail = f" (contains {', '.join(repr(c) for c in bad)})" if bad else ""
        raise ValueError(
            f"{what} {value!r} cannot be used as a directory or file name{detail}; use "
            "1-200 characters without path separators, NUL or control characters, "
            "and without leading or trailing spaces"
        )
    return value


_last_micros = 0


def new_run_id() -> str:
    """Return a new run id: UTC start time to the microsecond, process id, random suffix.

    ``20261126-101500-123456-4242-a1b2c3``. Ids sort by start time, also when runs start
    within the same second; ids from one process strictly increase, and ids of
    processes starting in the same microsecond still differ. (Earlier versions wrote
    ``20261126-101500-4242-a1b2c3``, without the microseconds: such ids sort among the
    newer ones by their second, and are read like any other.)
    """
    global _last_micros
    # Strictly increasing within the process even when the clock does not tick between
    # two calls (or steps back). Two threads racing here can at worst share a
    # microsecond: their ids still differ by the random suffix.
    micros = max(time.time_ns() // 1000, _last_micros + 1)
    _last_micros = micros
    seconds, fraction = divmod(micros, 1_000_000)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds))
    return f"{stamp}-{fraction:06d}-{os.getpid()}-{secrets.token_hex(3)}"
