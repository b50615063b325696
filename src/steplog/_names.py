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


def new_run_id() -> str:
    """Return a new run id: UTC start time, process id and random suffix.

    Ids sort by start time and differ between processes that start the same second.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
