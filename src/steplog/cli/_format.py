"""How the commands print values, durations, times and tables."""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

__all__ = ["cell", "clock", "count", "duration", "print_table"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def cell(value: Any, width: int = 24) -> str:
    """``value`` as one table cell of at most ``width`` characters."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        digits = str(abs(value))
        if len(digits) <= 15:
            return str(value)
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[0]}.{digits[1:6]}e+{len(digits) - 1}"  # beyond float range too
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (math.inf, -math.inf):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 07 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def clock(timestamp: float, *, ms: bool = False) -> str:
    """Local date and time, or with ``ms`` the time of day to the millisecond."""
    local = time.localtime(timestamp)
    if ms:
        return time.strftime("%H:%M:%S", local) + f".{int(timestamp % 1 * 1000):03d}"
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def print_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    """Print aligned columns; the columns numbered in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))
