"""W&B's transaction log (``run-<id>.wandb``), read without syncing.

:func:`log_has_ended` tells :class:`steplog.WandbBackend` when W&B's service has
written a run's exit record; :func:`read_offline_run` reads a whole offline run back
(steplog's tests and benchmarks check what reached W&B with it). Internal: W&B may
change this format; ``wandb sync`` is the supported way to use offline runs.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._extras import require

__all__ = ["OfflineRun", "log_has_ended", "read_offline_history", "read_offline_run"]


@dataclasses.dataclass
class OfflineRun:
    """What an offline W&B run directory holds: history rows, summary and config.

    ``exit_code`` is the run's exit code (0: finished), or ``None`` when the log has no
    exit record: the run is still being written, or its writer was killed (``wandb
    sync`` marks such a run failed).
    """

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]
    exit_code: int | None = None


def read_offline_run(run_dir: str | os.PathLike[str]) -> OfflineRun:
    """Read an offline W&B run directory (``wandb/offline-run-*``).

    Parses the run's transaction log (``run-<id>.wandb``) with W&B's own record
    definitions (``wandb.proto.wandb_internal_pb2``). wandb ≥ 0.20 no longer ships a
    Python reader for these files, so the framing (W&B's LevelDB-style log: 32 KiB
    blocks of CRC-checked chunks) is read here. History rows map keys to values, W&B's
    ``_step`` included; nested keys are joined with ``.``.
    """
    pb = require("wandb.proto.wandb_internal_pb2", "wandb", "read_offline_run")
    run = OfflineRun([], {}, {})
    for path in sorted(glob.glob(os.path.join(os.fspath(run_dir), "*.wandb"))):
        for raw in _records(Path(path)):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                run.history.append(_items(record.history.item))
            elif kind == "summary":
                run.summary.update(_items(record.summary.update))
                for item in record.summary.remove:
                    run.summary.pop(item.key or ".".join(item.nested_key), None)
            elif kind == "run":
                run.config.update(_items(record.run.config.update))
            elif kind == "config":
                run.config.update(_items(record.config.update))
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def read_offline_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The history rows of an offline W&B run directory (see :func:`read_offline_run`)."""
    return read_offline_run(run_dir).history


def _items(items: Any) -> dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


_HEADER = struct.Struct("<IHB")
_BLOCK = 32 * 1024


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    return _records_from(data, 7)


def _records_from(data: bytes, position: int) -> Iterator[bytes]:
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
    for raw in _records_from(data, 7 if start == 0 else 0):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False
