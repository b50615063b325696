"""What the ends of a run file say, without reading it whole: its :class:`RunHeader`
(status, steps, last values: ``steplog ls``/``show``/``tail``), whether the process
that writes it still runs (:func:`writer_state`), and where ``init(resume=...)``
continues it (:func:`resume_point`, which holds the writer's lock while it looks).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import RunFileError
from .lock import LOCKS, holders, lock
from .records import RecordKind, int_of, kind_of, parse_line, tags_of, text_of
from .schema import INCOMPLETE, KILLED, RUNNING, is_step
from .snapshot import (
    TAIL_BYTES,
    RunSnapshot,
    last_resume,
    last_steps,
    last_summary,
    open_run,
    run_config,
)

__all__ = [
    "RESUME_WAIT",
    "ResumePoint",
    "RunHeader",
    "WriterState",
    "read_header",
    "resume_point",
    "writer_state",
]


class WriterState(enum.Enum):
    """Whether the process that writes a run is still running."""

    ALIVE = "alive"
    GONE = "gone"  # on this host, and no such process any more
    UNKNOWN = "unknown"  # written on another host (or without a pid): cannot tell


def writer_state(start: dict[str, Any]) -> WriterState:
    """The state of the process named in a run-start record."""
    pid = start.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return WriterState.UNKNOWN
    if start.get("host") != socket.gethostname():
        return WriterState.UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return WriterState.GONE
    except PermissionError:  # alive, owned by another user
        return WriterState.ALIVE
    return WriterState.ALIVE


@dataclasses.dataclass(frozen=True, slots=True)
class RunHeader:
    """What the first and last lines of a run file say, without reading the rest."""

    path: Path
    run_id: str
    experiment: str
    start_time: float
    status: str  # the end status, "running" (writer alive on this host) or "incomplete"
    steps: int  # last step + 1 (0 when no step was written yet)
    last_time: float  # end time, or the time of the last step written
    last: dict[str, Any]  # the data of the last step records, later ones winning
    config: dict[str, Any]  # the run-start record's (as it stands: run_config(snapshot))
    summary: dict[str, Any]
    stats: dict[str, Any] | None  # the run-end record's statistics
    host: str | None
    pid: int | None
    torn: bool  # the file ends in a line without its newline (killed or still writing)
    ended: bool  # the run-end record is there (of the last segment, in a resumed run)
    group: str | None = None
    tags: tuple[str, ...] = ()
    rank: int | None = None
    world_size: int | None = None
    segments: int = 1  # 1 + the resumes seen (only those in the tail and the last one)

    @property
    def duration(self) -> float:
        return max(0.0, self.last_time - self.start_time)


def read_header(snapshot: RunSnapshot, tail_bytes: int = TAIL_BYTES) -> RunHeader:
    """What the run-start line and the last ``tail_bytes`` of the snapshot say."""
    start = snapshot.start
    with open(snapshot.path, "rb") as f:
        offset = max(snapshot.body, snapshot.end - tail_bytes)
        f.seek(offset)
        tail = f.read(snapshot.end - offset)
    lines = tail.split(b"\n")
    if offset > snapshot.body:
        lines = lines[1:]  # the first piece starts mid-line
    end: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    last_step: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for line in reversed(lines):
        record = parse_line(line)
        if record is None:
            continue
        kind = kind_of(record)
        if kind is RecordKind.RUN_END:
            if end is None and resume is None:  # a resume after it reopened the run
                end = record
        elif kind is RecordKind.RESUME:
            if resume is None:  # the last one of the file: remember it for last_resume
                resume = snapshot.resume = record
                snapshot.resume_known = True
        elif kind is RecordKind.STEP and is_step(record):
            if last_step is None:
                last_step = record
            for key, value in record["data"].items():
                last.setdefault(key, value)
    if end is not None:
        status = str(end.get("status"))
        last_time = float(end.get("end_time") or start["start_time"])
    else:
        # Who writes the run now: its first process, or the one that resumed it last.
        alive = writer_state(start) is WriterState.ALIVE
        if not alive:
            if resume is None:
                resume = last_resume(snapshot)
            alive = resume is not None and writer_state(resume) is WriterState.ALIVE
        status = RUNNING if alive else INCOMPLETE
        last_time = float(last_step["time"]) if last_step else float(start["start_time"])
    return RunHeader(
        path=snapshot.path,
        run_id=str(start.get("run_id")),
        experiment=str(start.get("experiment")),
        start_time=float(start["start_time"]),
        status=status,
        steps=int(last_step["step"]) + 1 if last_step else 0,
        last_time=last_time,
        last=last,
        config=start.get("config") or {},
        summary=_summary(snapshot, end),
        stats=(end or {}).get("stats"),
        host=start.get("host"),
        pid=start.get("pid"),
        torn=snapshot.torn,
        ended=end is not None,
        group=text_of(start.get("group")),
        tags=tags_of(start.get("tags")),
        rank=int_of(start.get("rank")),
        world_size=int_of(start.get("world_size")),
        segments=1 + int_of((resume or {}).get("segment"), 0),
    )


def _summary(snapshot: RunSnapshot, end: dict[str, Any] | None) -> dict[str, Any]:
    """The run's summary as it stands: its last end's, unless that end could not know
    it (none yet, or a writer process's ``"killed"`` end): then the last one a segment
    ended with (searched for only then: an end a tracker wrote carries the summary on)."""
    if end is not None and (end.get("summary") or end.get("status") != KILLED):
        summary = end.get("summary")
        return summary if isinstance(summary, dict) else {}
    return last_summary(snapshot)


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where ``init(resume=...)`` continues a run file (see :func:`resume_point`).

    Attributes:
        path: The run file.
        start: Its run-start record.
        config: The run's config (the start record's, or the last resume's).
        summary: The summary of the run's last end that had one, or ``{}``.
        next_step: One past the last step in the file (0 if it has none).
        segment: The number the new segment gets.
        previous_status: How the last segment ended (``"incomplete"`` if it did not).
        size: The file's size when it was inspected: the JSONL backend refuses to
            continue a file that has changed since.
    """

    path: Path
    start: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    next_step: int
    segment: int
    previous_status: str
    size: int


#: How long ``init(resume=...)`` waits for the writer process of a killed run
#: (``durability="process"``) to finish draining it, in seconds.
RESUME_WAIT = 10.0


def resume_point(path: Path, *, wait: float = RESUME_WAIT) -> ResumePoint:
    """Inspect the run file at ``path`` for resuming it, holding its writer's lock
    (:mod:`steplog.runfile.lock`) while it does.

    A file whose lock is held by a process that is gone here (the writer process of a
    ``durability="process"`` run, still draining after its parent was killed) is waited
    for, up to ``wait`` seconds.

    Raises:
        RunFileError: The file is not a steplog run, or it is still being written.
        OSError: It cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if not lock(fd):
            _wait_for_writer(fd, path, wait)
        snapshot = open_run(path)  # as it is now that nobody writes it
        header = read_header(snapshot)
        if not LOCKS and header.status == RUNNING:  # pragma: no cover - not POSIX
            writer = last_resume(snapshot) or snapshot.start
            raise RunFileError(
                f"{path}: run {header.run_id} is still being written by process "
                f"{writer.get('pid')} on this host; resume it once that has ended"
            )
        steps = last_steps(snapshot, 1)
        resumed = last_resume(snapshot)
        return ResumePoint(
            path=path,
            start=snapshot.start,
            config=run_config(snapshot),
            summary=last_summary(snapshot),
            next_step=steps[0]["step"] + 1 if steps else 0,
            segment=int_of((resumed or {}).get("segment"), 0) + 1,
            previous_status=header.status if header.ended else INCOMPLETE,
            size=os.fstat(fd).st_size,
        )
    finally:
        os.close(fd)  # and the lock with it: the JSONL backend takes it again


def _wait_for_writer(fd: int, path: Path, wait: float) -> None:
    """Wait, up to ``wait`` seconds, for the run file's lock (open at ``fd``) to be free,
    and take it.

    Only the writer process of a killed ``durability="process"`` run, still draining
    it, is waited for. A live writer (another process, or this very one) is refused at
    once, and so is any other process that holds the lock (one that inherited the file
    from its writer): the error names it, with its command line.

    Raises:
        RunFileError: The file is still being written or held (or is not a run).
    """
    snapshot = open_run(path)
    writer = last_resume(snapshot) or snapshot.start
    run = f"{path}: run {snapshot.start.get('run_id')}"
    deadline = time.monotonic() + wait
    while not lock(fd):
        held = holders(path)
        if held == []:  # let go meanwhile: try again
            continue
        named = ", ".join(map(str, held or ()))
        if writer_state(writer) is WriterState.ALIVE:
            who = named or f"process {writer.get('pid')}"
            raise RunFileError(
                f"{run} is still being written by {who}; resume it once that has ended"
            )
        if held is not None and not any(h.writer_process for h in held):
            raise RunFileError(
                f"{run} is held by {named}, not by its writer (pid {writer.get('pid')}, "
                "gone): a process that inherited the run file from it keeps the "
                "writer's lock; end that process, then resume"
            )
        if time.monotonic() >= deadline:
            who = named or "its writer process"
            raise RunFileError(
                f"{run} is still being written by {who} after {wait:g} s; resume it once "
                "that has ended"
            )
        time.sleep(0.05)
