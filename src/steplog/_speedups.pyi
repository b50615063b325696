"""Types of the optional C extension (``_speedups.c``): ``Tracker.log()``'s fast path
and the value watchers' batch checks."""

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

def finite_range(values: list[Any]) -> tuple[float, float] | None:
    """``(min(values), max(values))`` when ``values`` is a non-empty list of finite
    floats, else None."""

def diverging(
    series: list[Any], window: int, first: float, best: float, factor: float
) -> tuple[list[bool] | None, float] | None:
    """``diverging()``'s outcome for each window of ``series`` (``first``: the first
    window's ``sum()``) and the lowest mean after them; the outcomes are None where no
    mean is over ``factor`` x the lowest so far. None when a value is not a finite float
    or a sum not finite."""
