"""Lanes: every remote backend follows the run file.

The run file is the log of record. A *lane* feeds one backend from it: it reads the
file from a durable per-backend :class:`Cursor`, in order, in batches, and moves the
cursor only once the backend acknowledged a batch. Live delivery, catch-up after an
outage, delivery after the logging process was killed, a resumed run, ``steplog sync``
and ``steplog replay`` are the same lane in different situations: what differs is who
drives it (:mod:`steplog._lanehost`: a thread or the delivery process) and when it
stops (at the run end, when the writer is gone, after one pass). A lane's
:class:`~steplog._lanereader.LaneReader` turns the file into points with checkpoints;
the :class:`Lane` sends them and moves the cursor.

A :class:`steplog.Sampled` backend is sampled *by its lane*, from the file, with a
:class:`~steplog.backends.sampled.WindowSampler`: the cursor stops at the start of a
window whose point is not sent yet, so re-reading after a crash or an outage gives the
same points (none twice, none merged, counts adding up to the events).

Exactly once: the one batch a lane can send twice is the one a crash caught between the
backend's acknowledgement and the cursor's update; MLflow (database store: one point per
key, step, time and value) and W&B (a step it already has is ignored) store it once.

The cursor file is ``<run>.jsonl.sync-<backend>-<8 hex>.json`` next to the run (the
digits name the target: the backend's ``repr`` and experiment), replaced atomically after
every acknowledged batch; a lane holds an ``flock`` on ``<cursor>.lock`` while it runs, so
two processes (a delivery process finishing a killed run in the background, the lane of
the resumed run, a ``steplog sync``) never feed one target from one run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ._delivery import Delivery, RetryPolicy
from ._lanereader import LaneReader
from .backends.base import Backend, backend_name
from .backends.sampled import Sampled
from .errors import RunFileError
from .events import BackendStats, Event, RunEnd, RunInfo, RunStats
from .runfile.lock import lock
from .runfile.schema import KILLED
from .runfile.snapshot import last_summary, open_run

__all__ = [
    "CURSOR_VERSION",
    "Cursor",
    "CursorLock",
    "DeliveryState",
    "Lane",
    "LaneProgress",
    "cursor_path",
    "delivery_states",
    "target_of",
]

logger = logging.getLogger("steplog")

#: Version of the cursor file's layout (1: ``steplog sync`` before lanes; still read).
CURSOR_VERSION = 2


def target_of(backend: Backend) -> str:
    """What names where ``backend`` puts runs: its ``repr`` (which names the server or
    directory), and the experiment a remote run goes to when the ``repr`` does not say."""
    inner = backend.backend if isinstance(backend, Sampled) else backend
    experiment = getattr(inner, "experiment_name", None)
    text = repr(backend)
    return f"{text} experiment={experiment}" if isinstance(experiment, str) else text


def cursor_path(path: str | os.PathLike[str], backend: Backend, *, name: str | None = None) -> Path:
    """The cursor file of the lane (or ``steplog sync``) of the run at ``path`` into
    ``backend``: ``<run>.jsonl.sync-<backend name>-<8 hex digits>.json`` next to the run;
    the digits name the target, so one run into two servers keeps two cursors (``name``:
    the backend's name in its tracker, which tells two equal backends apart)."""
    run = Path(path)
    digest = hashlib.sha256(target_of(backend).encode()).hexdigest()[:8]
    return run.with_name(f"{run.name}.sync-{name or backend_name(backend)}-{digest}.json")


@dataclasses.dataclass(slots=True)
class Cursor:
    """Where the delivery of one run into one target stands (the cursor file).

    Attributes:
        run_id: The run's id.
        backend: The backend's name.
        target: What names the target (:func:`target_of`).
        offset: Byte after the last line the backend acknowledged; a lane (or sync)
            goes on from here.
        events: Step records before ``offset``: the events the backend has (for a
            sampled backend, those its points cover).
        state: The sampler's state at ``offset`` (sampled backends).
        last_step_at: Where the last acknowledged step record starts.
        ended: The run end was delivered and the backend closed with it.
        status: The run's status, once ended.
        given_up: Why the lane stopped before the end (the backend refused the run);
            ``None`` while it goes on.
    """

    run_id: str
    backend: str
    target: str
    offset: int
    events: int = 0
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    last_step_at: int | None = None
    ended: bool = False
    status: str | None = None
    given_up: str | None = None

    def save(self, path: Path) -> None:
        """Replace the cursor file by this state, atomically: a reader (or a lane killed
        meanwhile) sees the old cursor or the new one, never a mix."""
        data = {"cursor": CURSOR_VERSION, **dataclasses.asdict(self), "updated": time.time()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(temporary, path)

    @classmethod
    def read(cls, path: Path) -> Cursor | None:
        """The cursor at ``path`` as it is, or ``None`` if there is none or it is not a
        cursor (for reports: :meth:`load` checks it against the run)."""
        try:
            return cls._parse(path.read_bytes())
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def _parse(cls, raw: bytes) -> Cursor:
        data = orjson.loads(raw)
        if data.get("cursor") not in (1, CURSOR_VERSION):
            raise ValueError("not a cursor")
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        cursor = cls(**fields)
        offsets = [cursor.offset, cursor.events]
        if cursor.last_step_at is not None:
            offsets.append(cursor.last_step_at)
        if not all(type(n) is int and n >= 0 for n in offsets):
            raise ValueError("bad offsets")
        if not isinstance(cursor.state, dict):
            raise ValueError("bad state")
        return cursor

    @classmethod
    def load(cls, path: Path, run_id: str, run: Path) -> Cursor | None:
        """The cursor at ``path``, checked against the run file ``run``; ``None`` if
        there is none.

        Raises:
            RunFileError: The file is not a cursor, or not one of this run file.
        """
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        again = f"delete it to send {run} again from the start"
        try:
            cursor = cls._parse(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            raise RunFileError(f"{path} is not a steplog sync cursor; {again}") from None
        if cursor.run_id != run_id:
            raise RunFileError(
                f"{path} is the sync cursor of run {cursor.run_id}, not of {run_id}; {again}"
            )
        if not _line_start(run, cursor.offset, after=True) or not (
            cursor.last_step_at is None or _line_start(run, cursor.last_step_at)
        ):
            raise RunFileError(
                f"{path} points into the middle of {run} (was the run file rewritten?); {again}"
            )
        return cursor


def _line_start(path: Path, offset: int, *, after: bool = False) -> bool:
    """Whether a line of the file starts at ``offset`` (with ``after``: or a record
    ends there whose newline was not written yet when an earlier reader read it)."""
    if offset == 0:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(offset - 1)
            before, at = f.read(1), f.read(1)
    except OSError:
        return False
    if before == b"":
        return False
    return before == b"\n" or (after and before == b"}" and at in (b"", b"\n"))


class CursorLock:
    """The ``flock`` a lane holds on ``<cursor>.lock`` while it feeds the target: one
    feeder per run and target, across processes (released with the process)."""

    def __init__(self, cursor: Path) -> None:
        self.path = cursor.with_name(cursor.name + ".lock")
        self._fd = -1

    def acquire(self) -> bool:
        """Take the lock without waiting; whether it was free."""
        if self._fd >= 0:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if not lock(fd):
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copy without releasing the parent's."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclasses.dataclass(slots=True)
class LaneProgress:
    """What one :meth:`Lane.pump` did."""

    sent: int = 0  # points the backend acknowledged
    down: bool = False  # the backend did not answer: an outage (try again later)
    ended: bool = False  # the run's end was delivered and the backend closed


class _Outages:
    """When a lane's backend did not answer: since when (:attr:`since`, ``None`` while
    it answers), and every outage's start and end (``None`` while it lasts)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None
        self.spans: list[list[float | None]] = []

    def down(self, error: str | None) -> None:
        """A write was not acknowledged after its retries: an outage starts (logged
        once), unless one goes on."""
        if self.since is None:
            self.since = time.time()
            self.spans.append([self.since, None])
            logger.warning(
                "steplog: backend %r is unreachable (%s); its lane waits and sends from the "
                "run file once it answers (nothing is lost, the logging loop is not slowed)",
                self.name,
                error,
            )

    def up(self) -> None:
        """A write was acknowledged: the outage, if one goes on, is over."""
        if self.since is not None:
            now = time.time()
            self.spans[-1][1] = now
            logger.warning(
                "steplog: backend %r is back after %.1f s; its lane catches up from the run file",
                self.name,
                now - self.since,
            )
            self.since = None


class Lane:
    """Feeds one backend from a run file, from its cursor on (see the module docstring):
    its :class:`~steplog._lanereader.LaneReader` (:attr:`reader`) turns the file into
    points with checkpoints; the lane sends them with retries, moves and saves the
    cursor on acknowledgement, waits out outages, and closes the backend at the run end.

    Driven by one task at a time: :meth:`open`, then :meth:`pump` whenever the file may
    have grown (``final=True`` once it will not grow any more), until a pump reports
    ``ended``; :meth:`abandon` closes the backend of a lane stopped before the end.

    Args:
        path: The run file.
        backend: The backend (a :class:`~steplog.Sampled` one is sampled by the lane).
        cursor: The cursor file; ``None`` keeps the cursor in memory only (a replay).
        name: The backend's name in statistics.
        batch_size: Most points per ``write``.
        retry: Retries of a failed write before the lane counts the backend as down and
            probes it again later (transient errors are never given up: the file is the
            backlog).
        deadline: The stop's deadline (``time.monotonic()`` seconds), or ``None``.
        strict: Raise :class:`~steplog.RunFileError` on a corrupt line (replay), once
            the points before it are sent, instead of skipping it (the reader's
            ``corrupt``).
        limit: Read the file up to this offset only (a replay of a snapshot).
        killed_status: The status a run without a run end is closed with when the file
            will not grow any more (``final``).
    """

    def __init__(
        self,
        path: Path,
        backend: Backend,
        *,
        cursor: Path | None,
        name: str | None = None,
        batch_size: int = 4096,
        retry: RetryPolicy | None = None,
        deadline: Callable[[], float | None] = lambda: None,
        strict: bool = False,
        limit: int | None = None,
        killed_status: str = KILLED,
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        sampled = backend if isinstance(backend, Sampled) else None
        #: The backend that gets the points (a Sampled backend's inner one).
        self.target: Backend = sampled.backend if sampled is not None else backend
        self.name = name or backend_name(backend)
        self.cursor_file = cursor
        self.batch_size = batch_size
        self.delivery = Delivery(
            self.target, self.name, retry=retry or RetryPolicy(), deadline=deadline
        )
        self.delivery.uses_breaker = False  # an outage pauses the lane: see pump()
        #: What the lane sends: the file from the cursor, as points with checkpoints.
        self.reader = LaneReader(self.path, sampled, strict=strict, limit=limit)
        #: The status a final pump closes a run with that has no run end.
        self.killed_status = killed_status
        self.lock = CursorLock(cursor) if cursor is not None else None
        self.cursor: Cursor | None = None
        self.run_id = ""
        #: The batch being sent (the outbox's head) and its checkpoint, until acknowledged.
        self._head: tuple[list[Event], tuple[int, int, Any]] | None = None
        self.opened = False
        self.closed = False
        self.events_at_open = 0  # the cursor's events when the lane opened
        self.outages = _Outages(self.name)
        self.refused = 0  # points of the outbox the backend refused (it then gives up)
        #: Set when the lane is abandoned (a deadline): no further batch is sent.
        self.stopping = False
        self._dirty = False

    # -- lifecycle ---------------------------------------------------------------

    def prepare(self, run_id: str, body: int, *, segment: int | None = None) -> None:
        """Load (or start) the cursor; ``body`` is where the run's first record after
        the run-start line begins; ``segment`` the number of the segment this process
        logs (``None``: count the whole file as this lane's)."""
        self.run_id = run_id
        found = None
        if self.cursor_file is not None:
            found = Cursor.load(self.cursor_file, run_id, self.path)
        if found is None:
            found = Cursor(run_id, self.name, target_of(self.backend), offset=body, events=0)
        found.backend = self.name
        found.given_up = None  # a new lane (process, sync) tries again
        self.cursor = found
        self.events_at_open = found.events
        self.reader.start(found.offset, found.events, found.state, segment=segment)

    def resend_last_step(self) -> None:
        """Send the last acknowledged step again first (an unsampled lane that goes on
        from a cursor, into a backend that asks for it: MLflow, which logs the summary at
        the run's last step and stores a point it has once)."""
        cursor = self.cursor
        if (
            self.reader.sampled is not None
            or not getattr(self.target, "resend_last_step", False)
            or cursor is None
            or cursor.ended
            or cursor.last_step_at is None
            or not cursor.events
        ):
            return
        self.reader.rewind(cursor.last_step_at, cursor.events)

    async def open(self, info: RunInfo) -> None:
        """Open the backend for the run (errors propagate: the caller reports them)."""
        await self.target.open(info)
        self.opened = True

    async def close(self, end: RunEnd, *, delivered_end: bool = True) -> None:
        """Close the backend with ``end`` (errors are counted); ``delivered_end``: it is
        the run's end (the cursor says so), not a lane stopped before it."""
        if self.closed or not self.opened:
            return
        self.closed = True
        try:
            await self.target.close(end)
        except Exception as exc:
            self.delivery.record_error("close", exc)
            delivered_end = False
        cursor = self.cursor
        if cursor is not None and delivered_end:
            cursor.ended = True
            cursor.status = end.status
        self._save(force=True)

    def save_cursor(self) -> None:
        """Write the cursor file as it stands (a lane that stops: its driver, before it
        releases the cursor's lock)."""
        self._save(force=True)

    # -- sending ----------------------------------------------------------------------

    async def pump(self, *, final: bool = False, complete: bool = False) -> LaneProgress:
        """Deliver what the file holds now; with ``final`` (it will not grow any more),
        also the run's end, and close the backend. ``complete``: a whole last record
        without its newline counts as complete (the snapshot rule of
        :mod:`steplog.runfile.snapshot`, for ``steplog sync``).

        Returns what happened: an outage stops the pump (``down``) with the points in
        the outbox, to be sent first by the next one.
        """
        progress = LaneProgress()
        if self.closed or self.cursor is None:
            progress.ended = self.closed
            return progress
        if self.cursor.given_up is not None:
            return progress
        reader = self.reader
        while True:
            if reader.outbox and not await self._send(progress):
                return progress
            if reader.fatal is not None:
                raise reader.fatal
            size = reader.size()
            if reader.read_to >= size or not reader.read(size, final=final or complete):
                break  # everything read, or only a line still being written is left
        self._advance_to_safe()
        if final or reader.end_record is not None:
            await self._end(progress, final=final)
        else:
            self._save()
        return progress

    async def _send(self, progress: LaneProgress) -> bool:
        """Send the outbox in batches; whether all of it was acknowledged.

        The batch at the head of the outbox is sent as the same object until the
        backend takes it, also after an outage: to the backend, every attempt is a retry
        of it (see ``Backend.write``), so one that stored part of it goes on after that
        part instead of storing it twice.
        """
        outbox = self.reader.outbox
        while outbox:
            if self.stopping:
                return False
            if self._head is None:
                batch = outbox[: self.batch_size]
                self._head = ([point for point, _ in batch], batch[-1][1])
            points, checkpoint = self._head
            if not await self.delivery.write_with_retries(points):
                if self.delivery.permanent_error:
                    self.refused = len(points)
                    self._give_up(self.delivery.last_error or "refused")
                else:
                    self.outages.down(self.delivery.last_error)
                progress.down = True
                return False
            self.outages.up()
            self._head = None
            self.delivery.delivered += len(points)
            progress.sent += len(points)
            del outbox[: len(points)]
            self._advance(checkpoint)
            if not outbox:
                self._advance_to_safe()
            self._save()
        return True

    def _advance(self, checkpoint: tuple[int, int, Any]) -> None:
        """Move the cursor to ``checkpoint`` (safe: every point before it is
        acknowledged); never back."""
        cursor = self.cursor
        if cursor is None:
            return
        offset, events, state = checkpoint
        if offset <= cursor.offset:
            return
        if type(state) is int:  # unsampled: where the last step record starts
            cursor.last_step_at = state
            state = {}
        cursor.offset, cursor.events, cursor.state = offset, events, state
        self._dirty = True

    def _advance_to_safe(self) -> None:
        """With nothing unacknowledged, the reader's safe checkpoint is safe."""
        safe = self.reader.safe()
        if safe is not None:
            self._advance(safe)

    def _save(self, *, force: bool = False) -> None:
        """Write the cursor file if it moved (after every acknowledged batch: a crash
        then re-sends at most that one batch)."""
        cursor = self.cursor
        if cursor is None or self.cursor_file is None or not (self._dirty or force):
            return
        cursor.save(self.cursor_file)
        self._dirty = False

    async def _end(self, progress: LaneProgress, *, final: bool) -> None:
        """Close the backend once the run's end is read (or, ``final``, the file ends
        without one: a killed run) and everything before it was acknowledged."""
        reader = self.reader
        if reader.outbox or reader.read_to < reader.size():
            return
        record = reader.end_record
        if record is None:
            if not final:
                return
            # Killed without a run end (thread durability): the segment ends here.
            reader.end_segment()
            if reader.outbox and not await self._send(progress):
                return
            record = {"status": self.killed_status, "summary": {}, "stats": None}
        self._advance_to_safe()
        self._save(force=True)
        status = str(record.get("status"))
        summary = record.get("summary") or {}
        if not summary:
            with contextlib.suppress(OSError, ValueError):
                summary = last_summary(open_run(self.path))
        stats = record.get("stats")
        end = RunEnd(
            run_id=self.run_id,
            end_time=float(record.get("end_time") or time.time()),
            status=status,  # type: ignore[arg-type]
            summary=summary,
            stats=RunStats.from_dict(stats) if isinstance(stats, dict) else RunStats(),
        )
        if self.cursor is not None and reader.end_record is not None:
            self.cursor.offset = max(self.cursor.offset, reader.end_at)
        await self.close(end)
        progress.ended = self.closed

    # -- outages and refusals ---------------------------------------------------------

    def discard(self) -> None:
        """Forget the points not acknowledged (a replay that stops on a dead backend)."""
        self.reader.outbox.clear()
        self._head = None

    def _give_up(self, reason: str) -> None:
        self.discard()
        if self.cursor is not None:
            self.cursor.given_up = reason
            self._save(force=True)

    def probe_delay(self, probes: int) -> float:
        """Seconds before probing a backend that is down again (the retry policy's)."""
        return self.delivery.retry.probe_delay(probes, self.delivery.retry_after)

    # -- reporting --------------------------------------------------------------------

    @property
    def down_since(self) -> float | None:
        """When the backend stopped answering; ``None`` while it answers."""
        return self.outages.since

    @property
    def given_up(self) -> str | None:
        return self.cursor.given_up if self.cursor is not None else None

    @property
    def delivered_events(self) -> int:
        """Events of the run the backend has (its cursor's)."""
        return self.cursor.events if self.cursor is not None else 0

    def caught_up(self) -> bool:
        """Whether everything read is acknowledged and nothing is left to read."""
        return self.reader.caught_up()

    def reached(self, offset: int) -> bool:
        """Whether the lane has read up to ``offset`` with nothing unacknowledged."""
        return self.reader.read_to >= offset and not self.reader.outbox

    def pending(self) -> int:
        """Points read and not acknowledged yet."""
        return len(self.reader.outbox)

    def stats(self, written: int, shared_drops: int) -> BackendStats:
        """This backend's counts for a run end of the segment that logged ``written``
        events: ``delivered`` of them, ``missing`` the rest (behind: the file has them,
        and the lane, the next resume or ``steplog sync`` delivers them) or ``failed``
        (the backend refused the run: :attr:`given_up`), ``caught_up`` earlier
        segments' events this lane delivered."""
        start = self.reader.segment_start_events
        total = self.delivered_events
        if start is None:
            delivered, earlier = 0, max(0, total - self.events_at_open)
        else:
            delivered = max(0, total - start)
            earlier = max(0, min(total, start) - self.events_at_open)
        delivered = min(delivered, written)
        outages = [list(o) for o in self.outages.spans]
        rest = max(0, written - delivered)
        refused = self.given_up is not None  # the backend refused the run: not retried
        return BackendStats(
            delivered=delivered,
            failed=rest if refused else 0,
            dropped=shared_drops,
            errors=self.delivery.errors,
            last_error=self.delivery.last_error,
            disabled=refused,
            caught_up=earlier,
            missing=0 if refused else rest,
            outages=outages,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one remote backend stands with a run (from its lane's cursor file)."""

    backend: str
    delivered: int  # events the backend has
    behind: int  # events of the file it does not have yet
    ended: bool  # the run end was delivered
    status: str | None
    given_up: str | None
    active: bool  # a lane (or sync) holds its cursor now
    cursor: Path

    def describe(self) -> str:
        """One line for ``steplog show``."""
        parts = [f"{self.backend}  {self.delivered:,} delivered"]
        if self.behind:
            parts.append(f"{self.behind:,} behind")
        else:
            parts.append("up to date")
        if self.ended:
            parts.append(f"run end delivered ({self.status})")
        if self.given_up:
            parts.append(f"given up: {self.given_up}")
        elif self.active:
            parts.append("being delivered now")
        elif self.behind or not self.ended:
            parts.append(
                f"`steplog sync {self.cursor.name.split('.sync-')[0]} --to …` sends the rest"
            )
        return " · ".join(parts)


def delivery_states(path: Path, events: int) -> list[DeliveryState]:
    """Every remote backend's delivery of the run at ``path`` (whose file holds
    ``events`` step records), one per cursor file next to it."""
    states = []
    for cursor_file in sorted(path.parent.glob(f"{path.name}.sync-*.json")):
        cursor = Cursor.read(cursor_file)
        if cursor is None:
            continue
        held = CursorLock(cursor_file)
        active = not held.acquire()
        held.release()
        states.append(
            DeliveryState(
                backend=cursor.backend,
                delivered=cursor.events,
                behind=max(0, events - cursor.events),
                ended=cursor.ended,
                status=cursor.status,
                given_up=cursor.given_up,
                active=active,
                cursor=cursor_file,
            )
        )
    return states
