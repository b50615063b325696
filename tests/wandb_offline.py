"""Reading an offline W&B run directory back (``wandb/offline-run-*``), for the tests
and benchmarks that check what reached W&B.

Not part of steplog: W&B may change its transaction log, and ``wandb sync`` is the
supported way to use offline runs. The log's framing is read by
``steplog.backends._wandb_log.log_records`` (which ``WandbBackend`` uses to notice a
run's exit record); the records are parsed with W&B's own definitions.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steplog.backends._wandb_log import LOG_START, log_records

__all__ = ["OfflineRun", "read_offline_history", "read_offline_run"]


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
    blocks of CRC-checked chunks) is read by steplog's. History rows map keys to values,
    W&B's ``_step`` included; nested keys are joined with ``.``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

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


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    return log_records(data, LOG_START)
