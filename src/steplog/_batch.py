"""The batches handed to backends: encoded lines, decoded only when read."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import orjson

from ._values import decode
from .events import Event

__all__ = ["LineBatch"]

_new_tuple = tuple.__new__


class LineBatch(Sequence[Event]):
    """One batch as handed to the backends: a read-only sequence of :class:`Event`.

    ``log()`` already encoded every event as a JSON line (the run file's record); a
    batch keeps those lines and decodes them only when a backend reads its events — all
    at once on iteration (one ``orjson.loads`` for the whole batch, shared by every
    backend that reads it), or one line for an index (a console that prints only the
    latest event decodes only that one). A backend that stores lines as they are (the
    JSONL file) reads :attr:`lines` and decodes nothing.

    Attributes:
        lines: The encoded events, in logging order, each ending in ``\\n``.
    """

    __slots__ = ("_events", "lines")

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self._events: list[Event] | None = None

    def _materialize(self) -> list[Event]:
        events = self._events
        if events is None:
            joined = b",".join(self.lines)
            records = orjson.loads(b"[" + joined + b"]")
            tagged = b'"$' in joined
            events = self._events = [_event(record, tagged) for record in records]
        return events

    def __len__(self) -> int:
        return len(self.lines)

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
        return f"<LineBatch of {len(self.lines)} events>"


def _event(record: dict[str, object], tagged: bool) -> Event:
    data = record["data"]
    return _new_tuple(Event, (record["step"], record["time"], decode(data) if tagged else data))


def events_of(batch: Sequence[Event]) -> Sequence[Event]:
    """The events of ``batch``, decoded once (for backends that read every event)."""
    return batch._materialize() if isinstance(batch, LineBatch) else batch
