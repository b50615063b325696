"""Who writes a run file: its writer holds an exclusive ``flock`` on it.

A run file is written by one process at a time: the tracker's writer thread (the lock
goes with its descriptor, and with the process when it is killed) or, under
``durability="process"``, also the writer process, which inherits the descriptor and
so holds the lock until it has drained the ring and ended the run. ``init(resume=...)``
takes the lock before it continues a file, so two processes never append to one file,
and a process id reused by another process (a container's entrypoint is pid 1 on
every start) is never mistaken for a live writer. Where ``fcntl`` is missing
(Windows) there is no lock, and the resume check relies on process ids alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

__all__ = ["LOCKS", "Holder", "holders", "lock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

#: Whether this platform has run-file locks.
LOCKS = fcntl is not None


def lock(fd: int) -> bool:
    """Take the writer's lock on the run file open at ``fd`` without waiting; whether
    it was free (always ``True`` without ``fcntl``)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class Holder:
    """A process that holds a run file's lock (see :func:`holders`)."""

    pid: int
    command: str  # its command line ("" if it could not be read)

    @property
    def writer_process(self) -> bool:
        """Whether it is a steplog writer process (``durability="process"``), which
        drains and ends a killed run by itself."""
        return "_ringchild.py" in self.command

    def __str__(self) -> str:
        return f"process {self.pid} ({self.command or 'command line unknown'})"


_FLOCK_LINE = re.compile(rb"^lock:\s+\d+:\s+FLOCK\s", re.MULTILINE)


def holders(path: Path) -> list[Holder] | None:
    """The processes that hold the writer's lock on the file at ``path``, as far as this
    host can tell: those with a descriptor of it carrying an ``flock`` (Linux's
    ``/proc/PID/fdinfo``). ``None`` where that cannot be read (not Linux, no ``/proc``).

    For an error message: it names what actually keeps a run from being resumed — the
    recorded writer, its writer process, or a process that inherited the file (a fork
    made where steplog's fork hook could not run).
    """
    proc = Path("/proc")
    if not (proc / "self" / "fdinfo").is_dir():
        return None
    try:
        target = os.stat(path)
    except OSError:
        return None
    found: list[Holder] = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                    info = f.read()
            except OSError:
                continue
            if _FLOCK_LINE.search(info):
                found.append(Holder(pid, _command(pid)))
                break
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]
