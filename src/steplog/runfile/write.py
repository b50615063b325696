"""The write side of a run file: :class:`RunFile`, the one owner of its bytes.

A run file is created (a new run) or continued (a resumed run: the torn line a killed
writer left is cut off first), locked for as long as it is open (:mod:`.lock`), appended
to one batch per ``os.write``, cut back to its last whole line when a batch is given up,
and — with ``durability="process"`` — handed to a writer process, which then appends to
it until the run ends. Nothing else in steplog writes a run file's bytes:
:class:`steplog.JsonlBackend` is its configuration (where it goes, ``fsync``, the
largest event) and opens one per run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from ..errors import RunFileError
from .lock import holders, lock
from .snapshot import open_run

__all__ = ["RunFile"]

logger = logging.getLogger("steplog")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class WriterProcess(Protocol):
    """What :meth:`RunFile.hand_off` needs of the process it hands the file to."""

    def close(self, end_line: bytes, timeout: float | None = None) -> bool:
        """Write what it holds, then ``end_line``; whether it did."""

    def forget_after_fork(self) -> None:
        """Drop this process's copies of its channels (in a forked child)."""


_Process = TypeVar("_Process", bound=WriterProcess)


class RunFile:
    """One run's file, open for appending: made by :meth:`create` or :meth:`resume`.

    It holds the writer's lock (:func:`steplog.runfile.lock.lock`) until :meth:`close`,
    so no two processes append to one run. Every append is a single unbuffered
    ``os.write`` (finished if the system writes only part of it), so a killed process
    leaves every earlier batch whole and at most the last line torn.

    Attributes:
        path: The file.
        fsync: Whether every append is followed by an ``fsync``.
    """

    def __init__(self, path: Path, fd: int, size: int, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self._fd = fd
        self._size = size  # bytes in the file, as this process wrote them
        self._batch_start = size  # the size before the batch being appended
        self._unwritten: memoryview | None = None  # what a retry still has to write
        self._process: WriterProcess | None = None  # durability="process"

    @classmethod
    def create(cls, path: Path, *, fsync: bool = False) -> RunFile:
        """Create the file of a new run (it must not exist) and lock it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
        lock(fd)  # a new file: free
        return cls(path, fd, 0, fsync=fsync)

    @classmethod
    def resume(cls, path: Path, *, fsync: bool = False, expect_size: int | None = None) -> RunFile:
        """Continue the file of a run being resumed: lock it, cut off the line a killed
        writer left torn, end a whole last record that lacks its newline.

        Args:
            path: The run file.
            fsync: As for :meth:`create`.
            expect_size: The size the file had when the resume looked it up: it must
                still have it (nobody wrote since), else :class:`RunFileError`.

        Raises:
            RunFileError: Another process holds the file's lock, it changed since it was
                looked up, or it is not a run file.
        """
        fd = os.open(path, os.O_RDWR | _O_CLOEXEC)
        try:
            # The writer's lock: held until the file is closed, and by a writer process
            # while it drains, so no two processes append.
            if not lock(fd):
                held = ", ".join(map(str, holders(path) or ())) or "another process"
                raise RunFileError(f"{path} is being written by {held}")
            if expect_size is not None and os.fstat(fd).st_size != expect_size:
                raise RunFileError(f"{path} changed while its run was resumed")
            file = cls(path, fd, 0, fsync=fsync)
            file._cut_torn_tail()
        except BaseException:
            os.close(fd)
            raise
        return file

    def _cut_torn_tail(self) -> None:
        snapshot = open_run(self.path)  # RunFileError: not a run
        if snapshot.torn:
            logger.info(
                "steplog: resuming %s: cut off the torn last line (%d bytes)",
                self.path,
                os.fstat(self._fd).st_size - snapshot.end,
            )
        os.ftruncate(self._fd, snapshot.end)
        self._size = self._batch_start = snapshot.end
        os.lseek(self._fd, self._size, os.SEEK_SET)
        if os.pread(self._fd, 1, self._size - 1) != b"\n":
            self.append(b"\n")

    @property
    def size(self) -> int:
        """Bytes in the file as this process wrote them (not the writer process's)."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether the file was closed (or let go of in a forked child)."""
        return self._fd < 0

    def append(self, data: bytes | bytearray) -> None:
        """Append ``data`` in one ``os.write`` (finished if partial).

        If it raises (a full disk, a signal), call it again to retry: the retry writes
        the rest of the *first* ``data`` (whatever is passed), after the bytes that made
        it; or call :meth:`cut_back` to give the batch up.
        """
        if self._unwritten is None:
            self._unwritten = memoryview(data)
            self._batch_start = self._size
        view = self._unwritten
        # An unbuffered write may be partial (signals, a full disk); finish it.
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = self._unwritten = view[written:]
        self._unwritten = None
        if self.fsync:
            os.fsync(self._fd)

    def cut_back(self) -> int:
        """Give up the batch an :meth:`append` could not write in full; returns the
        lines of it kept.

        The file is cut back to the last whole line of what made it, so a reader sees
        whole lines only and the run statistics match the file.
        """
        view, self._unwritten = self._unwritten, None
        if view is None:
            return 0
        written = self._size - self._batch_start
        batch = view.obj
        kept = bytes(memoryview(batch)[:written]).rfind(b"\n") + 1
        if kept < written:
            os.ftruncate(self._fd, self._batch_start + kept)
            self._size = self._batch_start + kept
            os.lseek(self._fd, self._size, os.SEEK_SET)
        return bytes(memoryview(batch)[:kept]).count(b"\n")

    def hand_off(self, start: Callable[[int], _Process]) -> _Process:
        """Hand the file to a writer process (``durability="process"``).

        ``start(fd)`` starts it on the file's descriptor; from then on it appends, and
        :meth:`close` ends the run through it. Returns what ``start`` returned.
        """
        process = start(self._fd)
        self._process = process
        return process

    def take_back(self) -> None:
        """The writer process died and what it held was written out: this process
        appends from the file's end again."""
        self._process = None
        self._unwritten = None
        self._size = self._batch_start = os.lseek(self._fd, 0, os.SEEK_END)

    def close(self, last: bytes, timeout: float | None = None) -> None:
        """Append ``last`` (the run-end record) and close the file.

        Through the writer process when it has the file, given ``timeout`` seconds (30
        by default) before a stalled one is killed and what it left is written from
        here. A batch still half-written is left as it is. Closing twice does nothing.
        """
        if self._fd < 0:
            return
        try:
            self._unwritten = None
            process, self._process = self._process, None
            if process is None:
                self.append(last)
            elif not process.close(last, timeout=30.0 if timeout is None else timeout):
                raise OSError("the writer process did not finish the run file")
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copy of the file (and of the writer
        process's channels) without writing anything: the run stays the parent's, and
        so does the writer's lock."""
        process, self._process = self._process, None
        if process is not None:
            process.forget_after_fork()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"RunFile({str(self.path)!r}, size={self._size})"
