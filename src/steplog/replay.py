"""Replay: send a run recorded in a JSONL file into other backends, later.

The offline-first path: log to the local file on a cluster without network, then
``steplog replay`` the runs into MLflow, W&B, TensorBoard or trackio from a machine that
has it. Works for finished runs and for crashed ones (a torn last line is skipped; a
run without a run-end record is closed as ``"unfinished"``). The file is read up to
the end of its last complete line when the replay starts.

What re-running a replay does depends on the backend (see docs/backends.md): MLflow
reuses the MLflow run tagged with the same steplog run id and stores no point twice;
TensorBoard rewrites its event file; W&B targets the same run id (offline: a second
offline-run directory); trackio adds a second run of the same name; JSONL refuses to
overwrite an existing run file.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._delivery import RetryPolicy
from ._lane import Lane
from ._options import DEFAULT_BATCH_SIZE
from .backends.base import Backend
from .errors import BackendOpenError, RunFileError
from .events import BackendStats, RunEnd, RunInfo, RunStats
from .runfile.schema import run_info_of
from .runfile.snapshot import RunSnapshot, iter_lines, line_number, open_run, run_config

__all__ = ["replay", "replay_async"]


def replay(
    path: str | os.PathLike[str],
    *backends: Backend,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy | None = None,
) -> dict[str, BackendStats]:
    """Send the run in ``path`` to ``backends``; returns delivery counts per backend.

    Each backend is opened with the run's original id, experiment, config and start
    time, gets the step records in batches of ``batch_size`` in file order (failed
    writes retried per ``retry``), and is closed with the recorded status, summary and
    statistics.

    Raises:
        FileNotFoundError, steplog.RunFileError: ``path`` is not a readable run, or a
            line before its last one is corrupt (as for :func:`steplog.read_run`; the
            backends are then closed as ``"failed"``).
        steplog.BackendOpenError: A backend could not be opened (the others that were
            opened are closed again, as ``"failed"``).
    """
    return anyio.run(
        lambda: replay_async(path, *backends, batch_size=batch_size, retry=retry),
        backend="asyncio",
    )


async def replay_async(
    path: str | os.PathLike[str],
    *backends: Backend,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy | None = None,
) -> dict[str, BackendStats]:
    """:func:`replay` for callers already inside an event loop."""
    if not backends:
        raise ValueError("replay needs at least one backend")
    snapshot = open_run(Path(path))
    return await _replay(snapshot, backends, batch_size=batch_size, retry=retry, strict=True)


def _replay_snapshot(snapshot: RunSnapshot, *backends: Backend) -> dict[str, BackendStats]:
    """Replay for the command line: corrupt lines are skipped, their numbers collected in
    ``snapshot.corrupt`` (the command warns), as the other commands do."""
    return anyio.run(
        lambda: _replay(
            snapshot, backends, batch_size=DEFAULT_BATCH_SIZE, retry=None, strict=False
        ),
        backend="asyncio",
    )


async def _replay(
    snapshot: RunSnapshot,
    backends: Sequence[Backend],
    *,
    batch_size: int,
    retry: RetryPolicy | None,
    strict: bool,
) -> dict[str, BackendStats]:
    if not backends:
        raise ValueError("replay needs at least one backend")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    info = dataclasses.replace(run_info_of(snapshot.start), config=run_config(snapshot))
    # One lane per backend, without a cursor: the file as it was when the replay began,
    # read at the pace of the slowest backend.
    lanes = [
        Lane(
            snapshot.path,
            backend,
            cursor=None,
            batch_size=batch_size,
            retry=retry or RetryPolicy(),
            strict=strict,
            limit=snapshot.end,
            killed_status="unfinished",
        )
        for backend in backends
    ]
    for lane in lanes:
        lane.prepare(info.run_id, snapshot.body)
    opened: list[Lane] = []
    for lane in lanes:
        try:
            await lane.open(info)
        except Exception as exc:
            for other in opened:
                await other.close(_end(info, "failed", {}, None, 0), delivered_end=False)
            raise BackendOpenError(
                f"could not open backend {lane.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        opened.append(lane)
    failed: dict[str, int] = {}
    for lane in lanes:
        try:
            progress = await lane.pump(final=True, complete=True)
        except RunFileError:
            for other in lanes:
                events = other.delivered_events
                await other.close(_end(info, "failed", {}, None, events), delivered_end=False)
            raise
        if not progress.ended:
            # Down after its retries, or it refused the run: what it did not get is
            # counted as failed; it is closed with the run's end all the same.
            failed[lane.name] = _events_after(snapshot, lane)
            lane.discard()
            await lane.close(_end(info, "unfinished", {}, None, lane.delivered_events))
    snapshot.corrupt.update(_line_numbers(snapshot.path, lanes[0].reader.corrupt))
    return {
        lane.name: BackendStats(
            delivered=lane.delivered_events,
            failed=failed.get(lane.name, 0),
            errors=lane.delivery.errors,
            last_error=lane.delivery.last_error,
            disabled=lane.given_up is not None,
        )
        for lane in lanes
    }


def _events_after(snapshot: RunSnapshot, lane: Lane) -> int:
    """Step records of the snapshot the lane's backend does not have."""
    cursor = lane.cursor
    start = cursor.offset if cursor is not None else snapshot.body
    events = 0
    for line in iter_lines(snapshot, start=start):
        if line.startswith(b'{"step"'):
            events += 1
    return events


def _line_numbers(path: Path, offsets: set[int]) -> set[int]:
    return {line_number(path, at) for at in offsets}


def _end(
    info: RunInfo,
    status: str,
    summary: dict[str, Any],
    stats: dict[str, Any] | None,
    logged: int,
    end_time: float | None = None,
) -> RunEnd:
    recorded = RunStats.from_dict(stats) if stats else RunStats(logged=logged, written=logged)
    return RunEnd(
        run_id=info.run_id,
        end_time=float(end_time) if end_time is not None else time.time(),
        status=status,  # type: ignore[arg-type]
        summary=summary,
        stats=recorded,
    )
