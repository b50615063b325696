"""Types of the optional C extension (``_speedups.c``): ``Tracker.log()``'s fast path."""

from collections.abc import Callable
from typing import Any

def setup(dumps: Callable[..., bytes], option: int, now: Callable[[], float], count: type) -> None:
    """Give the extension the functions ``log()`` calls (once, at import)."""

def bind(cls: type, doc: str) -> Any:
    """Return ``log`` as a method descriptor of ``cls``, with ``doc`` as its docstring."""

def has_null(line: bytes | bytearray) -> bool:
    """Whether ``b"null"`` occurs in ``line``."""

def append(data: bytearray, line: bytes) -> None:
    """Append ``line`` as ``log()`` does (into the allocation ``emptied`` kept)."""

def emptied(data: bytearray) -> bool:
    """Empty ``data`` keeping its allocation; False (unchanged) while it is exported."""
