"""Types of the optional C extension (``_speedups.c``): ``Tracker.log()``'s fast path."""

from typing import Any

def setup(
    globals: dict[str, Any],
    option: int,
    count: type,
    tracker_class: type,
    buffer_class: type,
    tap_class: type,
) -> None:
    """Give the extension ``steplog.tracker``'s globals (it calls their ``_now`` and
    ``_dumps``), orjson's option, ``itertools.count``, and the tracker, buffer and value
    tap classes, whose ``__slots__`` ``log()`` reads (once, at import)."""

def bind(cls: type, doc: str) -> Any:
    """Return ``log`` as a method descriptor of ``cls``, with ``doc`` as its docstring."""

def append(data: bytearray, line: bytes) -> None:
    """Append ``line`` as ``log()`` does (into the allocation ``emptied`` kept)."""

def emptied(data: bytearray) -> bool:
    """Empty ``data`` keeping its allocation; False (unchanged) while it is exported."""
