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

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._delivery import Delivery, RetryPolicy
from ._options import DEFAULT_BATCH_SIZE
from .backends.base import Backend, backend_name
from .errors import BackendOpenError
from .events import BackendStats, Event, RunEnd, RunInfo, RunStats
from .runfile.read import CorruptLineError, RunSnapshot, iter_lines, open_run, parse_record
from .runfile.schema import RESUME, RUN_END, run_info_of

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
    from .errors import RunFileError

    if not backends:
        raise ValueError("replay needs at least one backend")
    try:
        snapshot = open_run(Path(path))
    except ValueError as exc:  # not a steplog run
        raise RunFileError(str(exc)) from None
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
    from .errors import RunFileError

    if not backends:
        raise ValueError("replay needs at least one backend")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    info = run_info_of(snapshot.start)
    # Each backend's delivery (retries, breaker, counts) is the live run's, without
    # the live run's queue: the file is read at the pace of the slowest backend.
    runners = [
        Delivery(b, backend_name(b), retry=retry or RetryPolicy(), deadline=_no_deadline)
        for b in backends
    ]
    opened: list[Delivery] = []
    for runner in runners:
        try:
            await runner.backend.open(info)
        except Exception as exc:
            for other in opened:
                await _close(other, _end(info, "failed", {}, None, 0))
            raise BackendOpenError(
                f"could not open backend {runner.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        opened.append(runner)

    end: dict[str, Any] | None = None
    summary: dict[str, Any] = {}  # the last one a run end had (runfile.read.last_summary)
    logged = 0
    rows: list[tuple[int, float, dict[str, Any]]] = []
    for number, line in enumerate(iter_lines(snapshot), start=2):
        try:
            record = parse_record(line)
        except CorruptLineError as exc:
            if strict:
                for runner in runners:
                    await _close(runner, _end(info, "failed", {}, None, logged))
                raise RunFileError(f"{snapshot.path}:{number}: corrupt record ({exc})") from None
            snapshot.corrupt.add(number)
            continue
        if record is None:
            continue
        kind = record.get("type")
        if kind == RUN_END:
            end = record
            if record.get("summary"):  # a killed segment's end cannot know it
                summary = record["summary"]
            continue
        if kind == RESUME:
            end = None  # the run went on after that end: the last one counts
            continue
        if kind is not None:
            continue
        rows.append((record["step"], record["time"], record["data"]))
        logged += 1
        if len(rows) >= batch_size:
            await _deliver(runners, rows)
            rows = []
    if rows:
        await _deliver(runners, rows)
    status = str(end["status"]) if end else "unfinished"
    stats = (end or {}).get("stats")
    run_end = _end(info, status, summary, stats, logged, end.get("end_time") if end else None)
    for runner in runners:
        await _close(runner, run_end)
    return {r.name: r.stats(0) for r in runners}


async def _deliver(runners: Sequence[Delivery], rows: list[Any]) -> None:
    batch = [Event(step, time, data) for step, time, data in rows]
    for runner in runners:
        await runner.send(batch)


def _no_deadline() -> None:
    return None


async def _close(runner: Delivery, end: RunEnd) -> None:
    try:
        await runner.backend.close(end)
    except Exception as exc:
        runner.record_error("close", exc)


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
