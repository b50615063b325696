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

import os
from pathlib import Path

__all__ = ["LOCKS", "lock", "locked"]

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


def locked(path: Path) -> bool:
    """Whether a writer holds the run file at ``path`` now."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return not lock(fd)
    finally:
        os.close(fd)  # releases the lock, if this took it
