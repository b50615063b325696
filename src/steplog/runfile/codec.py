"""Turning logged values into JSON and back.

The fast path hands each record to :func:`orjson.dumps` unchanged. Everything that
path cannot represent faithfully is handled per record, and only when needed:

* NaN and ±infinity: orjson writes them as ``null``, which would silently erase a
  diverged loss. The encoded batch is scanned once for ``null``; only the lines that
  contain it are re-encoded with non-finite floats tagged as ``{"$float": "NaN"}``,
  ``{"$float": "Infinity"}`` or ``{"$float": "-Infinity"}``.
* Integers outside orjson's 64-bit range are tagged as ``{"$int": "<decimal digits>"}``.
* Non-string mapping keys are converted with ``str()`` (reported once per key type);
  one that would collide with another key gets its type added (``"1 (int)"``).
* Paths (``os.PathLike``) are stored as their string.
* ``set``/``frozenset`` become lists; numpy scalars and arrays become numbers and
  (nested) lists.
* Any other value orjson does not know is recorded as its ``repr()`` and reported once
  per type through :mod:`logging`.

:func:`decode` reverses the tags when a run is read back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .._options import MAX_DEPTH
from ..events import Event

__all__ = ["MAX_DEPTH", "ValueEncoder", "decode"]

logger = logging.getLogger("steplog")

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_NAN = {"$float": "NaN"}
_POS_INF = {"$float": "Infinity"}
_NEG_INF = {"$float": "-Infinity"}
_FLOAT_TAGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def has_null(line: bytes) -> bool:
    """Whether an orjson line holds a ``null`` (where orjson writes NaN and ±infinity).

    ``rpartition`` is the cheapest scan Python offers for this (measured on 3.11 against
    a compiled regex's ``search``, ``find``, ``count``, ``in`` and ``partition``: one
    C call that takes its argument as is, no match object); ``Tracker.log`` inlines
    the same expression.
    """
    return bool(line.rpartition(b"null")[1])


class ValueEncoder:
    """Encodes records to JSON lines, remembering which fallbacks it has reported.

    One encoder serves one run. ``log()`` uses it on the caller's thread for the events
    its fast path cannot encode, and the writer for the rest; its counters are only
    statistics, so concurrent use needs no lock.

    Attributes:
        fallbacks: Values that could not be stored as themselves (recorded as ``repr``,
            or a key converted with ``str``).
    """

    def __init__(self, *, max_event_bytes: int = 16 * 2**20) -> None:
        self.max_event_bytes = max_event_bytes
        self.fallbacks = 0
        self._reported: set[tuple[str, type]] = set()

    # -- encoding ---------------------------------------------------------------

    def encode_events(self, events: Sequence[Event]) -> bytes:
        """Encode events as JSON lines ``{"step": …, "time": …, "data": {…}}``.

        Returns:
            Every line, each terminated by ``\\n``.
        """
        encode_row = self.encode_row
        return b"".join([encode_row(step, time, data) for step, time, data in events])

    def encode_row(self, step: int, time: float, data: Mapping[str, Any]) -> bytes:
        """Encode one event as its JSON line; never raises.

        Values orjson cannot store as themselves take the documented fallbacks; NaN and
        ±infinity are tagged; a line longer than ``max_event_bytes`` becomes a marker.
        """
        record = {"step": step, "time": time, "data": data}
        try:
            line = orjson.dumps(record, default=self._default, option=_OPTIONS)
        except (orjson.JSONEncodeError, TypeError):
            line = self._encode_slow(record)
        else:
            # orjson writes NaN and infinities as null: only such lines pay for the walk.
            if has_null(line):
                line = self._encode_slow(record)
        if len(line) > self.max_event_bytes:
            return self.too_large(step, time, data, len(line))
        return line

    def unencodable(self, step: int, time: float, exc: BaseException) -> bytes:
        """The marker line recorded for an event that could not be encoded at all."""
        self._report("unencodable", dict, exc)
        marker = {"$unencodable": repr(exc)[:1_000]}
        return orjson.dumps({"step": step, "time": time, "data": marker}, option=_OPTIONS)

    def too_large(self, step: int, time: float, data: Mapping[str, Any], size: int) -> bytes:
        """The marker line recorded instead of an event that encodes to ``size`` bytes.

        It lists the event's keys, as many as fit in ``max_event_bytes`` (then
        ``keys_omitted`` counts the others): the marker itself is never too large.
        """
        self._report("size", dict, None, size=size)
        keys = [str(k) for k in data]
        marker: dict[str, Any] = {"bytes": size, "keys": keys}
        line = orjson.dumps({"step": step, "time": time, "data": {"$too_large": marker}})
        if len(line) + 1 > self.max_event_bytes:
            budget = self.max_event_bytes - len(line) + len(orjson.dumps(keys)) - 64
            kept: list[str] = []
            for key in keys:
                budget -= len(orjson.dumps(key)) + 1
                if budget < 0:
                    break
                kept.append(key)
            marker = {"bytes": size, "keys": kept, "keys_omitted": len(keys) - len(kept)}
        return orjson.dumps(
            {"step": step, "time": time, "data": {"$too_large": marker}}, option=_OPTIONS
        )

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode one record (a run-start or run-end record) as a JSON line."""
        try:
            line = orjson.dumps(record, default=self._default, option=_OPTIONS)
        except (orjson.JSONEncodeError, TypeError):
            return self._encode_slow(record)
        if b"null" in line:
            return self._encode_slow(record)
        return line

    def sanitize(self, value: Any) -> Any:
        """Return ``value`` rewritten into plain JSON types, with the documented tags."""
        return self._sanitize(value, 0, set())

    def _encode_slow(self, record: Any) -> bytes:
        try:
            return orjson.dumps(self.sanitize(record), option=_OPTIONS)
        except (orjson.JSONEncodeError, TypeError) as exc:  # pragma: no cover - defensive
            self._report("unencodable", type(record), exc)
            return orjson.dumps({"$repr": repr(record)[:10_000]}, option=_OPTIONS)

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        if isinstance(obj, os.PathLike):  # pathlib paths: the path, not its repr
            path = os.fspath(obj)
            return path if isinstance(path, str) else os.fsdecode(path)
        library = type(obj).__module__.partition(".")[0]
        if library == "numpy" and hasattr(obj, "tolist"):
            return obj.tolist()
        if library == "torch" and hasattr(obj, "detach"):
            # Only reached by values log() did not convert (e.g. inside a custom
            # object's fields): read it here, in the worker.
            return obj.detach().cpu().tolist()
        self._report("repr", type(obj))
        try:
            return repr(obj)
        except Exception as exc:  # one broken __repr__ must cost that value only
            self._report("unrepresentable", type(obj), exc)
            return f"<unrepresentable {type(obj).__qualname__}>"

    def _sanitize(self, obj: Any, depth: int, active: set[int]) -> Any:
        tp = type(obj)
        if tp is str or tp is bool or obj is None:
            return obj
        if tp is float:
            return obj if math.isfinite(obj) else _tag_float(obj)
        if tp is int:
            return obj if _INT_MIN <= obj <= _INT_MAX else {"$int": str(obj)}
        if depth >= MAX_DEPTH:
            self._report("depth", tp)
            return f"<nesting deeper than {MAX_DEPTH} levels>"
        if isinstance(obj, (Mapping, list, tuple, set, frozenset)):
            if id(obj) in active:
                self._report("circular", tp)
                return "<circular reference>"
            active.add(id(obj))
            try:
                # list(): one read of the container, so another thread changing it
                # meanwhile cannot make the walk raise (what it read is recorded).
                if isinstance(obj, Mapping):
                    items = list(obj.items())
                    keys = self._keys([k for k, _ in items])
                    return {
                        key: self._sanitize(v, depth + 1, active)
                        for key, (_, v) in zip(keys, items, strict=True)
                    }
                return [self._sanitize(v, depth + 1, active) for v in list(obj)]
            finally:
                active.discard(id(obj))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            # orjson encodes dataclasses natively, but their fields need the same care.
            fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
            return self._sanitize(fields, depth, active)
        if isinstance(obj, float):  # float subclasses, numpy.float64 among them
            return self._sanitize(float(obj), depth, active)
        if type(obj).__module__.partition(".")[0] == "numpy" and hasattr(obj, "tolist"):
            return self._sanitize(obj.tolist(), depth, active)
        try:  # types orjson serialises natively: datetime, UUID, enum, dataclass, …
            orjson.dumps(obj)
        except (orjson.JSONEncodeError, TypeError):
            return self._sanitize(self._default(obj), depth + 1, active)
        if isinstance(obj, int):  # int subclasses (IntEnum) may still be huge
            return self._sanitize(int(obj), depth, active)
        return obj

    def _keys(self, keys: list[Any]) -> list[str]:
        """Mapping keys as strings: ``str()`` of a non-string key, never colliding.

        A converted key that equals another key of the mapping (``{1: "a", "1": "b"}``)
        gets its type added (``"1 (int)"``), and a counter if that is taken too, so no
        value is silently lost; string keys keep their names.
        """
        if all(type(k) is str for k in keys):
            return keys
        taken = {k for k in keys if type(k) is str}
        names: list[str] = []
        for key in keys:
            if type(key) is str:
                names.append(key)
                continue
            self._report("key", type(key))
            name = str(key)
            if name in taken:
                self._report("collision", type(key))
                base = f"{name} ({type(key).__name__})"
                name, n = base, 1
                while name in taken:
                    n += 1
                    name = f"{base} #{n}"
            taken.add(name)
            names.append(name)
        return names

    def _report(
        self, kind: str, tp: type, exc: BaseException | None = None, *, size: int = 0
    ) -> None:
        self.fallbacks += 1
        if (kind, tp) in self._reported:
            return
        self._reported.add((kind, tp))
        name = f"{tp.__module__}.{tp.__qualname__}"
        if kind == "repr":
            msg = "steplog: values of type %s cannot be serialised; recording repr() instead"
        elif kind == "key":
            msg = "steplog: mapping keys of type %s are not strings; recording str(key) instead"
        elif kind == "collision":
            msg = (
                "steplog: a mapping key of type %s has the same str() as another key; "
                "recording it with its type added, e.g. '1 (int)'"
            )
        elif kind == "circular":
            msg = "steplog: a %s contains itself; recording '<circular reference>' there"
        elif kind == "size":
            logger.warning(
                "steplog: an event encodes to %d bytes, more than max_event_bytes=%d; "
                "recording its keys and size instead (reported once per run)",
                size,
                self.max_event_bytes,
            )
            return
        elif kind == "unrepresentable":
            msg = "steplog: repr() of a %s raised; recording a marker string instead"
        elif kind == "depth":
            msg = "steplog: a %s is nested too deeply; recording a marker string instead"
        else:
            msg = "steplog: a %s record could not be encoded; recording its repr()"
        logger.warning(msg + " (reported once per type)", name, exc_info=exc)


def _tag_float(value: float) -> dict[str, str]:
    if value != value:
        return _NAN
    return _POS_INF if value > 0 else _NEG_INF


def decode(value: Any) -> Any:
    """Reverse the encoding tags (``$float``, ``$int``) in a decoded JSON value."""
    if type(value) is dict:
        if len(value) == 1:
            if "$float" in value and value["$float"] in _FLOAT_TAGS:
                return _FLOAT_TAGS[value["$float"]]
            if "$int" in value and isinstance(value["$int"], str):
                try:
                    return int(value["$int"])
                except ValueError:
                    pass
        return {k: decode(v) for k, v in value.items()}
    if type(value) is list:
        return [decode(v) for v in value]
    return value
