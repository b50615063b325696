"""The batches handed to backends: encoded lines, decoded only when read."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import orjson

from .events import Event
from .runfile.codec import decode

__all__ = ["EventBatch"]

_new_tuple = tuple.__new__


class EventBatch(Sequence[Event]):
    """What a backend's ``write`` receives: a read-only sequence of :class:`Event`.

    Public as ``steplog.EventBatch``; a backend may also be handed a plain list of
    events (``steplog.replay``, tests), so use only the ``Sequence`` interface unless
    ``isinstance(events, steplog.EventBatch)``.

    ``log()`` already encoded every event as a JSON line (the run file's record); a
    batch keeps those lines, joined, and decodes them only when a backend reads its
    events — all at once on iteration (one ``orjson.loads`` for the whole batch, shared
    by every backend that reads it), or one line for an index (a console that prints
    only the latest event decodes only that one). A backend that stores lines as they
    are (the JSONL file) reads :attr:`data` and decodes nothing.

    Attributes:
        data: The encoded events, in logging order, each line ending in ``\\n``: the
            run file's step records, as a backend writing JSON lines can store them.
    """

    __slots__ = ("_count", "_events", "_lines", "data")

    def __init__(self, data: bytes | bytearray, count: int) -> None:
        self.data = data
        self._count = count
        self._lines: list[bytes] | None = None
        self._events: list[Event] | None = None

    @property
    def lines(self) -> list[bytes]:
        """The encoded events one by one, each a JSON line (split on first use)."""
        lines = self._lines
        if lines is None:
            # orjson escapes control characters inside strings: a raw line break only
            # ever ends a record.
            lines = self._lines = bytes(self.data).splitlines(keepends=True)
        return lines

    def _materialize(self) -> list[Event]:
        events = self._events
        if events is None:
            data = bytes(self.data)
            records = orjson.loads(b"[" + data[:-1].replace(b"\n", b",") + b"]")
            tagged = b'"$' in data
            events = self._events = [_event(record, tagged) for record in records]
        return events

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if self._events is None and isinstance(index, int):
            line = self.lines[index]
            return _event(orjson.loads(line), b'"$' in line)
        return self._materialize()[index]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._materialize())

    def __repr__(self) -> str:
        return f"<EventBatch of {self._count} events>"


def _event(record: dict[str, object], tagged: bool) -> Event:
    data = record["data"]
    return _new_tuple(Event, (record["step"], record["time"], decode(data) if tagged else data))


def events_of(batch: Sequence[Event]) -> Sequence[Event]:
    """The events of ``batch``, decoded once (for backends that read every event)."""
    return batch._materialize() if isinstance(batch, EventBatch) else batch
