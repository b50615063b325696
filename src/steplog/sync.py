"""Sync: stream a run file into a backend while another process still writes it, and
resume where an earlier sync stopped (``steplog sync``).

The path for clusters whose compute nodes have no network: the run is logged to a JSONL
file on a shared file system, and a sync on a login node follows the file and sends it
to MLflow (or any backend :func:`steplog.replay` takes) as it grows. It reads complete
lines only (the snapshot rule of :mod:`steplog.runfile.snapshot`), closes the remote run
with the run's status and summary when the run-end record arrives, and with ``follow``
stops, like ``steplog tail -f``, when the writer process is gone from this host and the
file has been quiet for a while.

The cursor. After every batch the backend acknowledged, the sync replaces a small JSON
file next to the run (:func:`cursor_path`) by a new one (a temporary file, then
``os.replace``): the byte offset after the last line acknowledged, the events sent, and
whether the run's end was delivered. A sync killed at any moment leaves the cursor of the
last acknowledged batch; the next sync of the run into the same target resumes after it,
as :class:`SyncResume` says for that backend. A run whose end was delivered is not sent
again.

Exactly once. The one batch a sync can send twice is the one a kill caught between the
backend's acknowledgement and the cursor's replacement; a sync that resumes also sends
the last acknowledged step again, so that the backend knows the run's last step (MLflow
logs the summary at it). Both are stored once by a backend that continues a remote run
(:attr:`SyncResume.CONTINUE`): MLflow with a database store keeps one point per key,
step, time and value.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from pathlib import Path

import anyio

from ._delivery import RetryPolicy
from ._lane import Cursor, Lane, cursor_path
from ._options import DEFAULT_BATCH_SIZE, positive_seconds
from .backends.base import Backend, backend_name
from .backends.memory import MemoryBackend
from .backends.mlflow import MlflowBackend
from .backends.null import NullBackend
from .backends.tensorboard import TensorBoardBackend
from .backends.wandb import WandbBackend
from .errors import BackendOpenError, RunFileError
from .events import BackendStats, RunEnd, RunInfo, RunStats
from .runfile.follow import WRITER_GONE_GRACE, WriterWatch
from .runfile.schema import run_info_of
from .runfile.snapshot import RunSnapshot, line_number, open_run, run_config

__all__ = ["SyncResult", "SyncResume", "cursor_path", "resume_mode", "sync", "sync_async"]

#: Retries of a failed batch before a sync gives up and stops (about 1.5 minutes of
#: backoff: a server restart or a network blip, not an outage; a later sync resumes).
SYNC_RETRY = RetryPolicy(retries=8, backoff=0.5, max_backoff=30.0, breaker_after=0)

#: Seconds a sync that stops before the run's end waits for its backend to close.
CLOSE_TIMEOUT = 30.0


class SyncResume(enum.Enum):
    """What a sync does when it finds the cursor of an earlier one that stopped before
    the run's end (see :func:`resume_mode`)."""

    #: Reopening the backend continues the same remote run, and a point sent again is
    #: stored once (MLflow; W&B online): send what follows the cursor.
    CONTINUE = "continue"
    #: Reopening the backend starts its copy of the run over (TensorBoard rewrites its
    #: event file, W&B offline writes a new run directory, memory forgets): send the run
    #: again from its first line.
    REWRITE = "rewrite"
    #: Reopening the backend would start a second run (trackio, MLflow with
    #: ``resume=False``) or fails (JSONL refuses an existing file): refuse to resume.
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did.

    Attributes:
        run_id: The run's id.
        backend: The backend's name.
        cursor: The cursor file.
        synced: Events of the run the backend has acknowledged, by this sync and earlier
            ones (the cursor's count).
        sent: Events this sync sent (the last acknowledged step again when it resumed,
            the whole run again for a :attr:`SyncResume.REWRITE` backend).
        status: The status this sync closed the remote run with: the run's own once its
            end was delivered, ``"unfinished"`` when the sync stopped before the run's
            end; ``None`` if closing failed (``delivery.last_error`` says why) or the
            backend was not opened (``up_to_date``).
        ended: Whether the backend has the run's end (this sync or an earlier one
            delivered it and closed the remote run with it).
        up_to_date: The cursor already had the run's end: nothing was sent.
        writer_gone: ``follow`` stopped because the writer process is gone from this
            host and the run has no run-end record.
        delivery: The backend's delivery counts in this sync; ``failed`` is not 0 when
            a batch was given up after retries (the sync then stops, and its cursor stays
            before that batch).
        corrupt: Numbers of the corrupt lines skipped (from 1).
    """

    run_id: str
    backend: str
    cursor: Path
    synced: int
    sent: int
    status: str | None
    ended: bool
    up_to_date: bool
    writer_gone: bool
    delivery: BackendStats
    corrupt: tuple[int, ...] = ()


def resume_mode(backend: Backend) -> SyncResume:
    """How a sync into ``backend`` resumes after an earlier one stopped.

    MLflow (with ``resume=True``, the default: the run is found again by its steplog
    id) and W&B online (``resume="allow"`` on a run id derived from steplog's; without
    ``step_metric``, W&B ignores a step it already has) continue the remote run.
    TensorBoard, W&B offline or disabled, memory and null start it over. Any other
    backend (trackio, JSONL, a wrapper such as ``Sampled``, one of your own) is not
    resumed unless the sync is told how (``resume=``).
    """
    if isinstance(backend, MlflowBackend):
        return SyncResume.CONTINUE if backend.resume else SyncResume.REFUSE
    if isinstance(backend, WandbBackend):
        if backend.step_metric:  # every event is a new W&B row: a step sent twice doubles
            return SyncResume.REFUSE
        mode = backend.mode or os.environ.get("WANDB_MODE") or "online"
        return SyncResume.CONTINUE if mode in ("online", "run") else SyncResume.REWRITE
    if isinstance(backend, (TensorBoardBackend, MemoryBackend, NullBackend)):
        return SyncResume.REWRITE
    return SyncResume.REFUSE


def sync(
    path: str | os.PathLike[str],
    backend: Backend,
    *,
    follow: bool = False,
    interval: float = 0.5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy | None = None,
    cursor: str | os.PathLike[str] | None = None,
    resume: SyncResume | None = None,
    grace: float = WRITER_GONE_GRACE,
) -> SyncResult:
    """Send the run in ``path`` to ``backend`` from where an earlier sync stopped.

    The backend is opened with the run's original id, experiment, config and start
    time, and gets the step records after the cursor in batches of at most
    ``batch_size``; the cursor moves after each batch the backend took. When the
    run-end record comes, the backend is closed with the run's status, summary and
    statistics, and the cursor says so: a later sync sends nothing. When the sync
    stops before the run's end (without ``follow``: once it has sent what the file
    holds; a batch given up; the writer gone; Ctrl-C or cancellation), the backend is
    closed as ``"unfinished"`` (MLflow: KILLED, tag ``steplog.status`` ``unfinished``)
    and the next sync reopens the remote run and goes on.

    Args:
        path: The run file.
        backend: Where to send it.
        follow: Keep following the file as it grows, until its run end arrives or its
            writer is gone from this host and the file has not grown for ``grace``
            seconds.
        interval: Seconds between two looks at a followed file.
        batch_size: Most events per batch.
        retry: How a failed batch is retried; default :data:`SYNC_RETRY`. A batch
            given up stops the sync.
        cursor: The cursor file; default :func:`cursor_path`.
        resume: How to resume an earlier sync; default :func:`resume_mode`.
        grace: Seconds a followed file whose writer is gone may stay quiet.

    Raises:
        FileNotFoundError, steplog.RunFileError: ``path`` is not a readable run; the
            cursor is not one, or belongs to another run or a different file.
        steplog.BackendOpenError: The backend could not be opened, or cannot resume
            (:attr:`SyncResume.REFUSE`) the sync an earlier one began.
    """
    return anyio.run(
        lambda: sync_async(
            path,
            backend,
            follow=follow,
            interval=interval,
            batch_size=batch_size,
            retry=retry,
            cursor=cursor,
            resume=resume,
            grace=grace,
        ),
        backend="asyncio",
    )


async def sync_async(
    path: str | os.PathLike[str],
    backend: Backend,
    *,
    follow: bool = False,
    interval: float = 0.5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy | None = None,
    cursor: str | os.PathLike[str] | None = None,
    resume: SyncResume | None = None,
    grace: float = WRITER_GONE_GRACE,
) -> SyncResult:
    """:func:`sync` for callers already inside an event loop."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    interval = positive_seconds("interval", interval)
    run = Path(path)
    snapshot = open_run(run)
    info = run_info_of(snapshot.start)
    name = backend_name(backend)
    where = Path(cursor) if cursor is not None else cursor_path(run, backend)
    lane = Lane(run, backend, cursor=where, name=name, batch_size=batch_size,
                retry=retry or SYNC_RETRY)  # fmt: skip
    assert lane.lock is not None
    if not lane.lock.acquire():
        raise RunFileError(
            f"the run {run} is being sent to {name!r} already (by its delivery process, "
            f"or another sync: the lock {lane.lock.path} is held); try again once it is done"
        )
    try:
        return await _sync_locked(
            lane, snapshot, info, where, follow=follow, interval=interval, grace=grace,
            resume=resume,
        )  # fmt: skip
    finally:
        lane.lock.release()


async def _sync_locked(
    lane: Lane,
    snapshot: RunSnapshot,
    info: RunInfo,
    where: Path,
    *,
    follow: bool,
    interval: float,
    grace: float,
    resume: SyncResume | None,
) -> SyncResult:
    run, name = lane.path, lane.name
    found = Cursor.load(where, info.run_id, run)
    if found is not None and found.ended and found.offset >= snapshot.end:
        return SyncResult(
            run_id=info.run_id,
            backend=name,
            cursor=where,
            synced=found.events,
            sent=0,
            status=None,
            ended=True,
            up_to_date=True,
            writer_gone=False,
            delivery=BackendStats(),
        )
    mode = resume if resume is not None else resume_mode(lane.backend)
    if found is not None and found.events and not found.ended:
        if mode is SyncResume.REFUSE:
            raise BackendOpenError(
                f"cannot resume the sync of {run} into {name!r}: {found.events:,} events "
                "went there already, and reopening it would start a second run or fail; "
                f"delete that copy of the run and the cursor {where} to sync it again from "
                "the start"
            )
        if mode is SyncResume.REWRITE:
            where.unlink()  # reopening starts the copy over: send the run again
    lane.prepare(info.run_id, snapshot.body)
    assert lane.cursor is not None
    lane.cursor.save(where)  # now: a cursor that cannot be written stops us before open
    lane.resend_last_step()
    config = run_config(snapshot)
    try:
        await lane.open(dataclasses.replace(info, config=config))
    except Exception as exc:
        raise BackendOpenError(
            f"could not open backend {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    sent = 0
    writer_gone = False
    try:
        watch = WriterWatch(run, grace=grace)  # the writer: looked up in the file
        while True:
            progress = await lane.pump(complete=True)
            sent += progress.sent
            if progress.ended or progress.down or lane.given_up is not None:
                break
            if not follow:
                break
            while True:  # until the file grows, the run ends or its writer is gone
                if watch.grew():
                    break
                if watch.gone():
                    writer_gone = True
                    break
                await anyio.sleep(interval)
            if writer_gone:
                progress = await lane.pump(complete=True)
                sent += progress.sent
                break
    except BaseException:
        # Killed (Ctrl-C, cancelled) or failed: the cursor is the last acknowledged
        # batch's; the remote run is left unfinished for a later sync to go on with.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
            await lane.close(_unfinished(info, lane), delivered_end=False)
        raise
    cursor = lane.cursor
    status: str | None
    if lane.closed and cursor.ended:
        status = cursor.status
    else:
        errors = lane.delivery.errors
        await lane.close(_unfinished(info, lane), delivered_end=False)
        status = "unfinished" if lane.delivery.errors == errors else None
    delivery = lane.delivery
    return SyncResult(
        run_id=info.run_id,
        backend=name,
        cursor=where,
        synced=cursor.events,
        sent=sent,
        status=status,
        ended=cursor.ended,
        up_to_date=False,
        writer_gone=writer_gone,
        delivery=BackendStats(
            delivered=delivery.delivered,
            failed=lane.pending() if lane.down_since is not None else lane.refused,
            errors=delivery.errors,
            last_error=delivery.last_error,
        ),
        corrupt=tuple(sorted(line_number(run, at) for at in lane.reader.corrupt)),
    )


def _unfinished(info: RunInfo, lane: Lane) -> RunEnd:
    """The end a sync that stops before the run's end closes the backend with."""
    events = lane.cursor.events if lane.cursor is not None else 0
    return RunEnd(
        info.run_id, time.time(), "unfinished", {}, RunStats(logged=events, written=events)
    )
