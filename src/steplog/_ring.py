"""A writer process fed through a shared-memory ring (``durability="process"``).

The logging process encodes each record into one JSON line and :meth:`ProcessWriter.put`
copies it into a ring of shared memory; a small child process (``_ringchild.py``, run
as ``python -I -S``: standard library only) reads the ring and appends the bytes to the
run file. A line that ``put()`` accepted survives a SIGKILL of the logging process: the
child notices that its parent is gone (end-of-file on the control socket), writes
everything that was published, appends a run-end record with status ``"killed"`` and
exits.

Protocol (``_ringchild.py``'s docstring has the details):

- Ring: one page of header, then ``capacity`` data bytes. ``tail`` counts the bytes
  ever published (written only here, under a lock the producer threads share), ``head``
  the bytes ever written to the file (written only by the child). Stream byte ``i``
  lives at data offset ``i % capacity``; a line may wrap around the end.
- Control channel (here → child), one end of a ``socketpair``: ``W`` wake, ``F`` flush
  request, ``C`` + length + end line to close; ack pipe (child → here): ``R`` once
  attached, ``A`` per flush request served. End-of-file on either tells one side that
  the other is gone. ``_ringcontrol.py`` holds this side of both.

Memory ordering: ``put()`` copies the line into the ring, *then* stores the new tail (an
aligned 8-byte word: one instruction, in separate C calls that a compiler cannot
reorder). On x86-64 (total store order) a child that reads that tail therefore sees the
whole line; and the child copies bytes out before it stores ``head``, so a producer
never overwrites bytes still to be written. Python cannot issue the barriers that
weaker memory models (ARM, POWER) need, so :meth:`ProcessWriter.supported` is False on
them.

Shared memory: a ``memfd_create`` region on Linux; elsewhere a temporary file (in
``/dev/shm`` when it exists) unlinked as soon as it is created. It never has a name once
``start()`` returns, so nothing is left in ``/dev/shm`` whatever happens to either
process, and ``multiprocessing.shared_memory`` (with its resource tracker) is not used.
``start()`` maps every page up front (``MAP_POPULATE``; ~25 ms for 64 MiB, while the
child starts) so that ``put()`` never takes a page fault.

Lifecycle: :meth:`ProcessWriter.start` creates the ring, the socket pair and the pipe,
starts the child (in its own session, stdin and stdout on ``/dev/null``, stderr
inherited for fatal errors) and waits for its ``R``. :meth:`~ProcessWriter.close` stops
new puts, sends ``C``, reaps the child and releases everything. If the child died on
its own, ``close()`` writes what it left in the ring itself: the file offset, which the
child's descriptor shares, says exactly how much it wrote, so no line is lost or written
twice. In a forked child of the logging process the caller must call
:meth:`~ProcessWriter.forget_after_fork` (``os.register_at_fork(after_in_child=...)``,
registered before ``start()``) so that the fork's copy of the control socket does not
hide the real parent's death from the writer.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ._ringcontrol import ControlChannel

__all__ = ["ProcessWriter"]

# Header layout in 8-byte words; keep in step with _ringchild.py.
_MAGIC = 0x31474E4952474C53  # b"SLGRING1", little-endian
_HEADER_BYTES = 4096
_W_MAGIC = 0
_W_TAIL = 8  # byte offset 64: its own cache line
_W_HEAD = 16  # byte offset 128
_W_ERRNO = 24
_W_ERRORS = 25

_CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ringchild.py")
_HAVE_MEMFD = hasattr(os, "memfd_create")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Stands in for the ring's data while there is none (put() never reaches it then).
_NO_RING = mmap.mmap(-1, mmap.PAGESIZE)


def _ring_fd(size: int) -> int:
    """A descriptor of ``size`` bytes of shared memory that has no name anywhere."""
    if _HAVE_MEMFD:
        fd = os.memfd_create("steplog-ring", os.MFD_CLOEXEC)
    else:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="steplog-ring-", dir=directory)
        os.unlink(path)  # the descriptors keep it; nothing is left if we die
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class ProcessWriter:
    """Parent side of the writer process.

    ``put()`` is safe to call from several threads at once; so are ``flush()``,
    ``used()``, ``wait_for_room()`` and ``wake()``. ``start()`` and ``close()`` are
    lifecycle calls for one thread.

    Args:
        fd: The run file, open for writing, already holding the run-start line and
            positioned at its end. The child gets its own copy of the descriptor; the
            caller keeps (and later closes) this one, and must not write to the file
            while the writer runs.
        run_id: The run's id, for the ``"killed"`` run-end record.
        capacity: Bytes the ring holds (rounded up to whole pages). The memory is
            allocated by ``start()``, up front.
        flush_interval: Longest time, in seconds, a published line waits in the ring
            before the child writes it without being woken.
    """

    def __init__(
        self,
        fd: int,
        *,
        run_id: str,
        capacity: int = 64 * 2**20,
        flush_interval: float = 0.1,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        page = mmap.PAGESIZE
        self._fd = fd
        self._run_id = run_id
        self._capacity = -(-capacity // page) * page
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._tail = 0
        # put() compares against this cached bound and reads the shared head only when
        # it is passed; -1 refuses every line (not started, closed, forgotten).
        self._limit = -1
        self._closed = False
        self._close_result: bool | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel = ControlChannel()  # the control socket and the ack pipe
        self._start_offset = 0
        #: close() wrote what the child had left (it had died, or it was stalled).
        self.salvaged = False
        self._data = _NO_RING
        self._header = _detached_header(0, 0)

    # -- lifecycle --------------------------------------------------------------------

    @staticmethod
    def supported() -> bool:
        """Whether the writer process can run here.

        It needs a POSIX system on x86-64 (whose store ordering the ring relies on),
        ``select.poll`` and a Python interpreter that can be started as
        ``sys.executable`` (not a frozen application).
        """
        return (
            os.name == "posix"
            and sys.maxsize > 2**32
            and os.uname().machine.lower() in ("x86_64", "amd64")
            and hasattr(select, "poll")
            and bool(sys.executable)
            and not getattr(sys, "frozen", False)
            and os.path.isfile(_CHILD_SCRIPT)
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the writer process and return once it is attached to the ring.

        Args:
            timeout: Seconds to wait for the child to be ready.

        Raises:
            RuntimeError: Already started, or the child exited or did not get ready in
                time (it is killed then; its own message, if any, is on stderr).
            OSError: The ring, the socket pair, the pipe or the process could not be
                created (``EBADF`` for a bad ``fd``).
        """
        if self._proc is not None or self._closed:
            raise RuntimeError("ProcessWriter.start() can be called only once")
        ring = _ring_fd(_HEADER_BYTES + self._capacity)
        try:
            self._start_offset = os.lseek(self._fd, 0, os.SEEK_CUR)  # EBADF: a bad fd
            header = memoryview(mmap.mmap(ring, _HEADER_BYTES)).cast("Q")
            header[_W_MAGIC] = _MAGIC
            channel = self._channel
            self._proc = _spawn(
                channel,
                (ring, self._fd),
                (str(self._capacity), repr(self._flush_interval), self._run_id),
            )
            # Allocating every page now (while the child's interpreter starts) costs
            # ~25 ms for 64 MiB and saves a page fault, ~4 µs, every 4 KiB of puts.
            self._data = mmap.mmap(
                ring, self._capacity, flags=mmap.MAP_SHARED | _POPULATE, offset=_HEADER_BYTES
            )
            _wait_ready(self._proc, channel.ack, timeout)
        except BaseException:
            self._abandon()
            raise
        finally:
            os.close(ring)  # the mappings keep the memory
        with self._lock:
            self._header = header  # keeps the header's mapping alive
            self._limit = self._capacity

    def _abandon(self) -> None:
        """Kill the child (if any) and close this side's descriptors."""
        self._limit = -1
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._channel.abandon()
        self._data = _NO_RING

    def close(self, end_line: bytes, timeout: float | None = None) -> bool:
        """Write everything put so far, then ``end_line``, and stop the writer process.

        Puts are refused from the moment this is called. If the child died on its own
        before or while closing, this process writes what it left (exactly the bytes it
        had not written) and ``end_line`` itself. Idempotent: later calls return the
        first call's result.

        Args:
            end_line: The run-end record, one line ending in ``b"\\n"``.
            timeout: Seconds to wait for the child; None waits as long as it takes.

        Returns:
            True if every put line and ``end_line`` are in the file; False if the child
            did not finish within ``timeout`` (it is killed then) or it was never started.
        """
        if self._close_result is not None:
            return self._close_result
        with self._lock:
            self._limit = -1  # no put() after this one
            self._closed = True
        proc = self._proc
        if proc is None:
            self._close_result = False
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        message = b"C" + len(end_line).to_bytes(8, "little") + end_line
        ok = self._channel.send_all(message, deadline, self._exited) and _wait(proc, deadline)
        if not ok:
            if proc.poll() is None and self._channel.broken:
                # Its end of the socket is closed, so it is exiting: let it finish.
                _wait(proc, deadline)
            if proc.poll() is None:  # out of time: stalled (a hung disk, SIGSTOP)
                proc.kill()
                proc.wait()
            # It is gone: it died on its own (a crash, the OOM killer, a write error it
            # gave up on) or it was stalled and is killed now. Finish its work here: the
            # file offset it shares says exactly what it wrote.
            ok = self._salvage(end_line)
            self.salvaged = True
        self._close_result = ok
        self._release(written_all=ok)
        return ok

    def take_over(self) -> int:
        """The writer process died: stop it being used and write what it left.

        Puts are refused from now on; the child is reaped (killed first if it still
        runs); every line it had not written yet is written from the ring, exactly (the
        shared file offset says where it stopped), and the ring is released. The caller
        then writes the file itself (the descriptor is its own, positioned at the end).

        Returns:
            Lines that could not be written (0 unless the file was written by someone
            else meanwhile, or a write failed).
        """
        with self._lock:
            self._limit = -1
            self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_result = False  # nothing to close any more
        if proc is None:
            return 0
        lost = 0
        if not self._salvage(b""):
            lost = self._unwritten_lines()
        self._release(written_all=lost == 0)
        return lost

    def _unwritten_lines(self) -> int:
        """Lines in the ring the child had not written (after a failed salvage)."""
        rest = self._unwritten()
        return rest.count(b"\n") if rest else 0

    def _unwritten(self) -> bytes | None:
        """The bytes in the ring the child had not written; None if the file does not
        add up (someone else wrote to it: do not guess)."""
        # The child's descriptor shares our file offset: it says how much it wrote.
        written = os.lseek(self._fd, 0, os.SEEK_CUR) - self._start_offset
        rest = self._tail - written
        if not 0 <= rest <= self._capacity:
            return None
        start = written % self._capacity
        stop = start + rest
        data = self._data
        if stop <= self._capacity:
            return data[start:stop]
        return data[start:] + data[: stop - self._capacity]

    @property
    def exit_status(self) -> int | None:
        """The writer process's exit status once it is reaped (negative: the signal that
        killed it); ``None`` while it runs or before it started."""
        return None if self._proc is None else self._proc.returncode

    def _exited(self) -> bool:
        """Whether the writer process was started and has exited (it is reaped)."""
        return self._proc is not None and self._proc.poll() is not None

    def _salvage(self, end_line: bytes) -> bool:
        """Write what a dead child left in the ring, then ``end_line``."""
        rest = self._unwritten()
        if rest is None:
            return False
        try:
            _write_all(self._fd, rest + end_line)
        except OSError:
            return False
        return True

    def _release(self, *, written_all: bool) -> None:
        """Close this side's descriptors and mappings (the child is reaped already)."""
        with self._lock:
            self._limit = -1
            # Readers in other threads may still hold the old header; swap in a private
            # one with the final counters rather than pull the mapping from under them.
            # The mappings go when the last reference does.
            head = self._tail if written_all else self._header[_W_HEAD]
            self._header = _detached_header(self._tail, head)
            self._data = _NO_RING
        self._channel.close()

    def forget_after_fork(self) -> None:
        """Drop this process's copies of the descriptors and mappings (in a forked child).

        Call it in the child of an ``os.fork()`` of the logging process, before anything
        else touches this object: the writer process then still sees end-of-file when
        the real parent dies, even while the fork lives. The ring itself is not touched;
        in the fork, ``put()`` refuses every line and the other methods do nothing.
        """
        # The fork has one thread; a lock held by a thread that no longer exists would
        # never be released, so start with fresh ones.
        self._lock = threading.Lock()
        self._limit = -1
        self._closed = True
        self._close_result = False
        self._header = _detached_header(self._tail, self._header[_W_HEAD])
        self._data = _NO_RING
        self._channel.forget_after_fork()
        # Keep the Popen object: it is not ours to wait for, and its finaliser stays
        # quiet about a process that is not our child.

    # -- hot path ---------------------------------------------------------------------

    def put(self, line: bytes) -> bool:
        """Copy one line into the ring and publish it.

        The line is published whole (the child never sees part of it) or not at all.

        Args:
            line: One encoded record, ending in ``b"\\n"``.

        Returns:
            True if the line is in the ring; False if there is no room for all of it
            (or the writer is not running), and nothing was written.
        """
        n = len(line)
        lock = self._lock
        # acquire/release in try/finally: ~80 ns cheaper than ``with`` on 3.11.
        lock.acquire()
        try:
            tail = self._tail
            end = tail + n
            if end > self._limit and not self._room_for(end):
                return False
            start = tail % self._capacity
            stop = start + n
            data = self._data
            if stop <= self._capacity:
                data[start:stop] = line
            else:
                split = self._capacity - start
                data[start:] = line[:split]
                data[: n - split] = line[split:]
            # Publish after the copy (see "Memory ordering" in the module docstring).
            self._tail = end
            self._header[_W_TAIL] = end
            return True
        finally:
            lock.release()

    def _room_for(self, end: int) -> bool:
        """Re-read the child's progress (the slow path of ``put``, under the lock)."""
        if self._closed or self._proc is None:
            return False
        self._limit = self._header[_W_HEAD] + self._capacity
        return end <= self._limit

    def used(self) -> int:
        """Bytes in the ring that the child has not written yet (a cheap snapshot)."""
        return max(self._tail - self._header[_W_HEAD], 0)

    def wait_for_room(self, nbytes: int, timeout: float) -> bool:
        """Wait until ``nbytes`` fit in the ring (for a blocking overflow policy).

        Polls every millisecond and wakes the child every 10 ms. Another thread may take
        the room first: call ``put()`` again and wait again if it returns False.

        Args:
            nbytes: Bytes needed.
            timeout: Seconds to wait at most.

        Returns:
            True when there is room; False on timeout, if the line can never fit
            (``nbytes`` > capacity), or if the writer is not started, is closed or its
            process died.
        """
        if nbytes > self._capacity or self._proc is None:
            return False
        deadline = time.monotonic() + timeout
        next_wake = 0.0
        while True:
            if self._closed:
                return False
            if self._tail - self._header[_W_HEAD] + nbytes <= self._capacity:
                return True
            now = time.monotonic()
            if now >= deadline or not self.alive():
                return False
            if now >= next_wake:
                self.wake()
                next_wake = now + 0.01
            time.sleep(0.001)

    def wake(self) -> None:
        """Ask the child to write now (one byte on the control socket; never blocks)."""
        self._channel.wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every line put before this call is written to the file.

        "Written" means the child's ``os.write`` returned (the bytes are in the page
        cache, safe from a crash of either process; no ``fsync``).

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            True when those lines are written; False on timeout, or if the child died
            or the writer was closed before they were.
        """
        target = self._tail
        if self._header[_W_HEAD] >= target:
            return True
        if self._closed:
            return False
        # (The header is read afresh: close() swaps in a private one.)
        return self._channel.flush(lambda: self._header[_W_HEAD] >= target, timeout, self._exited)

    # -- state ------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the writer process is running (False before start and after close,
        and once its end of the ack pipe was seen closed: it is exiting)."""
        proc = self._proc
        return (
            proc is not None and not self._closed and not self._channel.gone and proc.poll() is None
        )

    @property
    def pid(self) -> int | None:
        """The writer process's id (None before ``start()``)."""
        return None if self._proc is None else self._proc.pid

    @property
    def capacity(self) -> int:
        """Bytes the ring holds (``capacity`` rounded up to whole pages)."""
        return self._capacity

    def write_error(self) -> OSError | None:
        """The error of the child's last failed write, while it keeps retrying.

        The child keeps unwritten bytes in the ring and retries (the ring fills up and
        ``put()`` starts to refuse lines); this says why. None when the last write
        succeeded.
        """
        errno = self._header[_W_ERRNO]
        return OSError(errno, os.strerror(errno)) if errno else None


def _spawn(
    channel: ControlChannel, fds: tuple[int, int], args: tuple[str, str, str]
) -> subprocess.Popen[bytes]:
    """Create the control socket and the ack pipe into ``channel`` and start the writer
    process with their other ends, then ``fds`` (the ring, the run file), then ``args``
    (capacity, flush interval, run id) on its command line."""
    child_fds: list[int] = []
    channel.ack, ack_w = os.pipe()
    try:
        # A socket pair rather than a pipe: send(MSG_NOSIGNAL) to a dead child fails
        # with EPIPE instead of raising SIGPIPE, which kills programs that restored its
        # default action.
        channel.ctl, ctl_child = socket.socketpair()
        with ctl_child:
            # Copies numbered 3 or above: the child gets /dev/null on 0-2, which would
            # replace a descriptor passed there (a daemon with its stdio closed gets
            # its new descriptors there).
            for fd in (ctl_child.fileno(), ack_w, *fds):
                child_fds.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _CHILD_SCRIPT, *map(str, child_fds), *args],
            pass_fds=child_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C or a SIGTERM to the job's process group does
            # not reach it; it leaves by itself once this process is gone.
            start_new_session=True,
        )
    finally:
        # The child has its own copies; end-of-file on the control socket and the ack
        # pipe must depend on the child alone.
        os.close(ack_w)
        for fd in child_fds:
            os.close(fd)
    channel.ctl.setblocking(False)
    return proc


def _detached_header(tail: int, head: int) -> memoryview:
    """A private header holding final counters, for when there is no ring."""
    header = memoryview(bytearray(_HEADER_BYTES)).cast("Q")
    header[_W_TAIL] = tail
    header[_W_HEAD] = head
    return header


def _wait(proc: subprocess.Popen[bytes], deadline: float | None) -> bool:
    """Wait for ``proc`` to exit with status 0 before ``deadline``."""
    try:
        proc.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` all of ``data``, finishing partial writes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _wait_ready(proc: subprocess.Popen[bytes], ack: int, timeout: float) -> None:
    """Wait for the child's ``R`` on the ack pipe.

    Raises:
        RuntimeError: The child exited first, or ``timeout`` passed.
    """
    poller = select.poll()
    poller.register(ack, select.POLLIN)
    if poller.poll(max(timeout * 1000, 0)):
        if os.read(ack, 1) == b"R":
            return
        code = proc.wait()
        raise RuntimeError(
            f"steplog writer process exited with status {code} before it was ready "
            "(its message, if any, is on stderr)"
        )
    raise RuntimeError(f"steplog writer process was not ready within {timeout} s")
