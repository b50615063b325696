"""The writer's device read-back: rows ``log()`` left to it become lines.

``log()`` queues an event it cannot encode on the spot (tensors still on a device,
references kept with ``snapshot=False``) as a :data:`steplog._buffer.Row`. The writer
thread hands each batch's rows to :class:`Readback`, which reads every device value
back in one gathered copy per device (:func:`steplog._arrays.resolve`) and encodes the
rows; configs and summaries are converted the same way.
"""

from __future__ import annotations

from typing import Any

from ._arrays import (
    ResolveStats,
    convert_now,
    libraries_loaded,
    plain_types,
    pop_deferred,
    resolve,
    snapshot,
)
from ._buffer import LineBuffer
from .runfile.codec import ValueEncoder

__all__ = ["Readback"]


class Readback:
    """Reads a run's arrays and tensors back and encodes the rows that hold them.

    Args:
        encoder: The run's encoder.
        snapshot: Whether ``log()`` copied the values (else it queued references, and
            the arrays and tensors among them are found here).
        max_array_size: Arrays with more elements are recorded as a summary.

    Attributes:
        stats: Device synchronisations, copies and values changed after ``log()``.
    """

    def __init__(self, encoder: ValueEncoder, *, snapshot: bool, max_array_size: int) -> None:
        self.encoder = encoder
        self.snapshot = snapshot
        self.max_array_size = max_array_size
        self.stats = ResolveStats()

    @staticmethod
    def refresh_inspection(buffer: LineBuffer) -> None:
        """Tell ``log()`` whether to look for arrays and tensors (cheap; every wake-up)."""
        buffer.libraries = libraries_loaded()
        buffer.is_plain = plain_types().issuperset

    def encode_rows(self, items: list[Any]) -> list[Any]:
        """Read back and encode the rows among ``items`` (lines stay as they are)."""
        rows = [item for item in items if type(item) is tuple]
        if not rows:
            return items
        if not self.snapshot:
            # References were queued as they are: find the arrays and tensors now.
            is_plain = plain_types().issuperset
            for _, _, data in rows:
                if not is_plain(map(type, data.values())):
                    snapshot(data, max_array_size=self.max_array_size)
        placeholders = pop_deferred(rows)
        if placeholders:
            resolve(placeholders, self.stats, max_array_size=self.max_array_size)
        encode_row = self.encoder.encode_row
        return [encode_row(*item) if type(item) is tuple else item for item in items]

    def convert(self, values: dict[str, Any]) -> Any:
        """Arrays and tensors in a config or summary, as plain values."""
        if not libraries_loaded():
            return values
        return convert_now(values, self.stats, max_array_size=self.max_array_size)
