"""W&B's transaction log (``run-<id>.wandb``), read without syncing.

:func:`log_has_ended` tells :class:`steplog.WandbBackend` when W&B's service has
written a run's exit record; :func:`log_records` reads the log's framing (steplog's
tests read whole offline runs back with it, in ``tests/wandb_offline.py``). Internal:
W&B may change this format; ``wandb sync`` is the supported way to use offline runs.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from .._extras import require

__all__ = ["LOG_START", "log_has_ended", "log_records"]


_HEADER = struct.Struct("<IHB")
_BLOCK = 32 * 1024
#: Where the first record of a log starts (after its ``:W&B`` header).
LOG_START = 7


def log_records(data: bytes, position: int) -> Iterator[bytes]:
    """The records in ``data``, a log read from a block boundary, from ``position`` on.

    A record whose first chunk lies before ``data`` (read from a later block) is
    skipped; a torn tail (a writer killed, or still writing) ends the records.
    """
    pending: bytes | None = None
    while position + _HEADER.size <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER.size:
            position += left
            continue
        crc, length, kind = _HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            position += left
            continue
        chunk = data[position + _HEADER.size : position + _HEADER.size + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return
        position += _HEADER.size + length
        if kind == 1:  # full
            yield chunk
            pending = None
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3 and pending is not None:  # middle
            pending += chunk
        elif kind == 4 and pending is not None:  # last
            yield pending + chunk
            pending = None


def log_has_ended(path: Path) -> bool:
    """Whether the W&B transaction log at ``path`` holds its run's exit record.

    The exit record is the last one W&B writes, so only the last two blocks are read
    (it may start in the one before the last): the check costs the same for any run.
    """
    pb = require("wandb.proto.wandb_internal_pb2", "wandb", "WandbBackend")
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, (size // _BLOCK - 1) * _BLOCK)
        file.seek(start)
        data = file.read()
    for raw in log_records(data, LOG_START if start == 0 else 0):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False
