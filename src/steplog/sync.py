"""Sync: stream a run file into a backend while another process still writes it, and
resume where an earlier sync stopped (``steplog sync``).

The path for clusters whose compute nodes have no network: the run is logged to a JSONL
file on a shared file system, and a sync on a login node follows the file and sends it
to MLflow (or any backend :func:`steplog.replay` takes) as it grows. It reads complete
lines only (the snapshot rule of :mod:`steplog.runfile.read`), closes the remote run
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
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from ._delivery import Delivery, RetryPolicy
from ._options import DEFAULT_BATCH_SIZE, positive_seconds
from .backends.base import Backend, backend_name
from .backends.memory import MemoryBackend
from .backends.mlflow import MlflowBackend
from .backends.null import NullBackend
from .backends.tensorboard import TensorBoardBackend
from .backends.wandb import WandbBackend
from .errors import BackendOpenError, RunFileError
from .events import BackendStats, Event, RunEnd, RunInfo
from .replay import _close, _end, _no_deadline
from .runfile.read import (
    WRITER_GONE_GRACE,
    CorruptLineError,
    RunSnapshot,
    WriterState,
    iter_lines,
    last_resume,
    line_number,
    open_run,
    parse_record,
    writer_state,
)
from .runfile.schema import RUN_END, run_info_of

__all__ = ["SyncResult", "SyncResume", "cursor_path", "resume_mode", "sync", "sync_async"]

#: Retries of a failed batch before a sync gives up and stops (about 1.5 minutes of
#: backoff: a server restart or a network blip, not an outage; a later sync resumes).
SYNC_RETRY = RetryPolicy(retries=8, backoff=0.5, max_backoff=30.0, breaker_after=0)

#: Seconds a sync that stops before the run's end waits for its backend to close.
CLOSE_TIMEOUT = 30.0

#: Version of the cursor file's layout.
CURSOR_VERSION = 1


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


def cursor_path(path: str | os.PathLike[str], backend: Backend) -> Path:
    """The cursor file of a sync of the run at ``path`` into ``backend``.

    ``<run>.jsonl.sync-<backend name>-<8 hex digits>.json`` next to the run: the digits
    name the target (the backend's ``repr``, and its ``experiment_name`` when it has one),
    so syncs of one run into two servers keep two cursors.
    """
    run = Path(path)
    digest = hashlib.sha256(_target(backend).encode()).hexdigest()[:8]
    return run.with_name(f"{run.name}.sync-{backend_name(backend)}-{digest}.json")


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
    snapshot = _snapshot(run)
    info = run_info_of(snapshot.start)
    name = backend_name(backend)
    where = Path(cursor) if cursor is not None else cursor_path(run, backend)
    found = _Cursor.load(where, info.run_id, snapshot)
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
    state = _Cursor(info.run_id, name, _target(backend), offset=snapshot.body)
    resend_from: int | None = None
    mode = resume if resume is not None else resume_mode(backend)
    if found is not None and found.events:
        if mode is SyncResume.REFUSE:
            raise BackendOpenError(
                f"cannot resume the sync of {run} into {name!r}: {found.events:,} events "
                "went there already, and reopening it would start a second run or fail; "
                f"delete that copy of the run and the cursor {where} to sync it again from "
                "the start"
            )
        if mode is SyncResume.CONTINUE:
            state.offset, state.events = found.offset, found.events
            state.last_step_at = resend_from = found.last_step_at
    state.save(where)  # now, so that a cursor that cannot be written stops us before open

    delivery = Delivery(backend, name, retry=retry or SYNC_RETRY, deadline=_no_deadline)
    try:
        await backend.open(info)
    except Exception as exc:
        raise BackendOpenError(
            f"could not open backend {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    job = _Sync(run, snapshot, info, delivery, state, where, batch_size=batch_size)
    job.pos = resend_from if resend_from is not None else state.offset
    try:
        outcome = await job.run(follow=follow, interval=interval, grace=grace)
    except BaseException:
        # Killed (Ctrl-C, cancelled) or failed: the cursor is the last acknowledged
        # batch's; the remote run is left unfinished for a later sync to go on with.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
            await _close(delivery, job.unfinished())
        raise
    if outcome is _Outcome.ENDED:
        status = job.end_status if state.ended else None
    else:
        errors = delivery.errors
        await _close(delivery, job.unfinished())
        status = "unfinished" if delivery.errors == errors else None
    return SyncResult(
        run_id=info.run_id,
        backend=name,
        cursor=where,
        synced=state.events,
        sent=job.sent,
        status=status,
        ended=state.ended,
        up_to_date=False,
        writer_gone=outcome is _Outcome.WRITER_GONE,
        delivery=delivery.stats(0),
        corrupt=tuple(sorted(job.corrupt)),
    )


class _Outcome(enum.Enum):
    ENDED = "ended"  # the run end was delivered (or its close failed: state.ended says)
    CAUGHT_UP = "caught up"  # not following: everything there was sent
    WRITER_GONE = "writer gone"
    GAVE_UP = "gave up"  # a batch was given up after retries


class _GaveUp(Exception):
    """Raised inside a sync when a batch was given up."""


class _Sync:
    """One sync's reading and sending: the file from ``pos`` on, into ``delivery``."""

    def __init__(
        self,
        path: Path,
        snapshot: RunSnapshot,
        info: RunInfo,
        delivery: Delivery,
        state: _Cursor,
        where: Path,
        *,
        batch_size: int,
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        self.info = info
        self.delivery = delivery
        self.state = state
        self.where = where
        self.batch_size = batch_size
        self.pos = state.offset  # the end of the last line read
        self.acked = state.offset  # lines before this were acknowledged by an earlier sync
        self.rows: list[Event] = []
        self.new = 0  # of the rows, the events no earlier sync acknowledged
        self.last_step_at: int | None = None  # where the last row's line starts
        self.sent = 0
        self.corrupt: set[int] = set()
        self.end_status: str | None = None  # the run's status, once its end was read
        self._resume: dict[str, Any] | None = None  # the last resume record seen
        self._resume_checked = 0  # the file was searched for resumes up to here

    async def run(self, *, follow: bool, interval: float, grace: float) -> _Outcome:
        snapshot = self.snapshot
        seen: int | None = None  # the file's size before the last snapshot
        # Since when the file has not grown: a writer killed long ago is given up at once.
        quiet_since = min(time.time(), os.stat(self.path).st_mtime)
        try:
            while True:
                if await self._read(snapshot):
                    return _Outcome.ENDED
                await self._flush(self.pos)
                if not follow:
                    return _Outcome.CAUGHT_UP
                while True:  # until the file has grown since the last snapshot
                    size = os.stat(self.path).st_size
                    if size != seen:
                        if seen is not None:
                            quiet_since = time.time()
                        seen = size
                        break
                    gone = self._writer_gone(snapshot)
                    if gone and time.time() - quiet_since >= grace:
                        return _Outcome.WRITER_GONE
                    await anyio.sleep(interval)
                snapshot = _snapshot(self.path)  # taken after the stat: holds `seen` bytes
                if snapshot.start.get("run_id") != self.info.run_id or snapshot.end < self.pos:
                    raise RunFileError(
                        f"{self.path} was replaced or cut short while it was being synced"
                    )
        except _GaveUp:
            return _Outcome.GAVE_UP

    def _writer_gone(self, snapshot: RunSnapshot) -> bool:
        """Whether the process writing the run is gone: the one that started it, or the
        one that resumed it last."""
        if writer_state(snapshot.start) is not WriterState.GONE:
            return False
        if self._resume_checked < snapshot.end:  # look for resumes once per new stretch
            part = dataclasses.replace(
                snapshot, body=max(snapshot.body, self._resume_checked), resume_known=False
            )
            self._resume = last_resume(part) or self._resume
            self._resume_checked = snapshot.end
        return self._resume is None or writer_state(self._resume) is WriterState.GONE

    async def _read(self, snapshot: RunSnapshot) -> bool:
        """Send the complete lines after ``pos``; whether the run end was among them
        (the last line read: a resumed run goes on after an earlier segment's end)."""
        ending: tuple[int, dict[str, Any]] | None = None
        for line in iter_lines(snapshot, start=self.pos):
            begin = self.pos
            self.pos = min(begin + len(line) + 1, snapshot.end)
            try:
                record = parse_record(line)
            except CorruptLineError:
                self.corrupt.add(line_number(self.path, begin))
                continue
            if record is None:
                continue
            kind = record.get("type")
            if kind == RUN_END:
                ending = (begin, record)
                continue
            ending = None
            if kind is not None:
                continue  # a resume record, or a record type of a newer minor version
            self.rows.append(Event(record["step"], record["time"], record["data"]))
            self.last_step_at = begin
            if begin >= self.acked:
                self.new += 1
            if len(self.rows) >= self.batch_size:
                await self._flush(self.pos)
        if ending is None:
            return False
        await self._flush(ending[0])
        await self._finish(ending[1])
        return True

    async def _flush(self, upto: int) -> None:
        """Send the rows; once the backend took them, move the cursor to ``upto``."""
        if not self.rows:
            return
        batch, self.rows = self.rows, []
        if not await self.delivery.send(batch):
            raise _GaveUp
        self.sent += len(batch)
        state = self.state
        state.events += self.new
        self.new = 0
        state.offset = max(state.offset, upto)
        state.last_step_at = self.last_step_at
        state.save(self.where)

    async def _finish(self, record: dict[str, Any]) -> None:
        """Close the backend with the run's end; the cursor says so once it is closed."""
        status = self.end_status = str(record.get("status"))
        errors = self.delivery.errors
        end = _end(
            self.info,
            status,
            record.get("summary") or {},
            record.get("stats"),
            self.state.events,
            record.get("end_time"),
        )
        await _close(self.delivery, end)
        if self.delivery.errors == errors:  # closed: a later sync has nothing to do
            self.state.offset = self.pos
            self.state.ended = True
            self.state.status = status
            self.state.save(self.where)

    def unfinished(self) -> RunEnd:
        """The end a sync that stops before the run's end closes the backend with."""
        return _end(self.info, "unfinished", {}, None, self.state.events)


@dataclasses.dataclass(slots=True)
class _Cursor:
    """Where a sync of one run into one target stands (the cursor file's content)."""

    run_id: str
    backend: str
    target: str
    offset: int  # after the last line the backend acknowledged
    events: int = 0  # step records acknowledged
    last_step_at: int | None = None  # where the last acknowledged step record starts
    ended: bool = False  # the run end was delivered and the backend closed with it
    status: str | None = None  # the run's status, once ended

    def save(self, path: Path) -> None:
        """Replace the cursor file by this state, atomically: a reader (or a sync that
        is killed meanwhile) sees the old cursor or the new one, never a mix."""
        data = {"cursor": CURSOR_VERSION, **dataclasses.asdict(self), "updated": time.time()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path, run_id: str, snapshot: RunSnapshot) -> _Cursor | None:
        """The cursor at ``path``, checked against the run; ``None`` if there is none.

        Raises:
            RunFileError: The file is not a cursor, or not one of this run file.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        again = f"delete it to sync {snapshot.path} again from the start"
        try:
            data = orjson.loads(raw)
            fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            cursor = cls(**fields)
            offsets = [cursor.offset, cursor.events]
            if cursor.last_step_at is not None:
                offsets.append(cursor.last_step_at)
            if data.get("cursor") != CURSOR_VERSION or not all(
                type(n) is int and n >= 0 for n in offsets
            ):
                raise ValueError
        except (orjson.JSONDecodeError, TypeError, ValueError):
            raise RunFileError(f"{path} is not a steplog sync cursor; {again}") from None
        if cursor.run_id != run_id:
            raise RunFileError(
                f"{path} is the sync cursor of run {cursor.run_id}, not of {run_id}; {again}"
            )
        if not _line_start(snapshot, cursor.offset, after=True) or not (
            cursor.last_step_at is None or _line_start(snapshot, cursor.last_step_at)
        ):
            raise RunFileError(
                f"{path} points into the middle of {snapshot.path} (was the run file "
                f"rewritten?); {again}"
            )
        return cursor


def _line_start(snapshot: RunSnapshot, offset: int, *, after: bool = False) -> bool:
    """Whether a line of the snapshot starts at ``offset`` (with ``after``: or a record
    ends there whose newline was not written yet when an earlier sync read it)."""
    if offset == snapshot.body:
        return True
    if not snapshot.body < offset <= snapshot.end:
        return False
    with open(snapshot.path, "rb") as f:
        f.seek(offset - 1)
        before, at = f.read(1), f.read(1)
    return before == b"\n" or (after and before == b"}" and at in (b"", b"\n"))


def _snapshot(path: Path) -> RunSnapshot:
    try:
        return open_run(path)
    except ValueError as exc:  # not a steplog run
        raise RunFileError(str(exc)) from None


def _target(backend: Backend) -> str:
    """What names where ``backend`` puts runs: its ``repr`` (which names the server or
    directory), and the experiment a remote run goes to when the ``repr`` does not say."""
    experiment = getattr(backend, "experiment_name", None)
    text = repr(backend)
    return f"{text} experiment={experiment}" if isinstance(experiment, str) else text
