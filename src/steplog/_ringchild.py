"""The writer process: drains the shared-memory ring into the run file.

:class:`steplog._ring.ProcessWriter` runs this file as a script::

    python -I -S _ringchild.py CTL_FD ACK_FD RING_FD OUT_FD CAPACITY FLUSH_INTERVAL RUN_ID

It imports only the standard library (``json`` only when it writes a ``"killed"``
record), and must never import steplog, anyio or orjson: ``-I -S`` skips the
environment and ``site``, so it is ready in ~15 ms (~40 ms with ``site`` in an
environment with many ``.pth`` files).

Descriptors (passed with ``pass_fds``, under the numbers given in argv):

- ``CTL_FD``: this end of the control socket pair. The logging process holds the only
  other end, so end-of-file means it is gone (exited, or killed).
- ``ACK_FD``: write end of the acknowledgement pipe: ``R`` once attached, ``A`` per
  flush request served.
- ``RING_FD``: the ring's memory (a memfd on Linux, an unlinked file elsewhere); closed
  as soon as it is mapped.
- ``OUT_FD``: the run file. It shares its open file description, and so its offset,
  with the logging process's descriptor.

Ring layout (``_ring.py`` has the producer's side): one page of header, then
``CAPACITY`` data bytes. The header holds 64-bit counters, each on its own cache line:
``tail``, the bytes ever published (written only by the producer), and ``head``, the
bytes ever written to the file (written only here); plus the last write error. Stream
byte ``i`` lives at data offset ``i % CAPACITY``. The producer publishes whole lines
only (it copies a line, then stores the new tail), so ``[head, tail)`` always ends at a
line boundary.

Memory ordering, relying on x86-64's total store order: the producer's stores of a
line's bytes become visible before its store of the tail, so a tail read here covers
bytes that are already in place; and this process copies the bytes out before it
stores the new head, so the producer never overwrites bytes still to be written. Each
counter is an aligned 8-byte word, read or written with one instruction.
(``ProcessWriter.supported`` refuses weaker memory models.)

Control messages (logging process → here), one byte each but ``C``:

- ``W``: wake up and write now (otherwise the ring is drained every ``FLUSH_INTERVAL``).
- ``F``: flush: write everything published so far, then answer ``A``. (The producer
  stored its tail before it sent ``F``; the system call orders the two.)
- ``C`` + 8-byte little-endian length + that many bytes: close: write everything, then
  those bytes (the run-end line), then exit 0. The producer refuses puts before it
  sends ``C``, so "everything" is final.

Lifecycle: attach, answer ``R``, then loop: wait for the control socket (timeout
``FLUSH_INTERVAL``), drain what was published when it woke, answer flushes. On a close
request: drain, write the end line, exit 0. On end-of-file without a close request
(the parent is dead): drain, append one run-end record with status ``"killed"`` whose
``logged``/``written`` count the lines written from the ring, exit 0. SIGINT and SIGTERM
are ignored and the process runs in its own session, so a Ctrl-C or a scheduler's
SIGTERM to the job does not stop it before it drained; it leaves by itself within about
``FLUSH_INTERVAL`` plus the drain once its parent is gone.

Writes: partial writes are finished; Python retries ``EINTR`` itself; any other
``OSError`` (a full disk, a file size limit) keeps the unwritten bytes in the ring and
retries after a pause that doubles up to 1 s. ``head`` advances by exactly what
``os.write`` accepted, so no byte is written twice. The error number is kept in the
header while it lasts (``ProcessWriter.write_error``). After a close request or the
parent's death, writes that keep failing for ``_GIVE_UP_SECONDS`` end the process with
a message on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import signal
import sys
import time

# Header layout, in 8-byte words; keep in step with _ring.py.
MAGIC = 0x31474E4952474C53  # b"SLGRING1", little-endian
HEADER_BYTES = 4096
W_MAGIC = 0
W_TAIL = 8  # bytes ever published by the producer (byte offset 64)
W_HEAD = 16  # bytes ever written to the file by this process (byte offset 128)
W_ERRNO = 24  # errno of the last failed write, 0 once a write succeeds again
W_ERRORS = 25  # failed writes, in all

# One os.write() takes at most this much, so a producer waiting for room sees the
# ring empty a chunk at a time rather than only after a 64 MiB write.
CHUNK = 4 * 2**20
_GIVE_UP_SECONDS = 10.0
_MAX_PAUSE = 1.0


class RingReader:
    """Consumer side of the ring: copies published bytes out and writes them to a file.

    Args:
        ring_fd: Descriptor of the ring's memory (header page + data).
        out_fd: Descriptor of the run file.
        capacity: Size of the data area in bytes.
    """

    def __init__(self, ring_fd: int, out_fd: int, capacity: int) -> None:
        populate = getattr(mmap, "MAP_POPULATE", 0)
        self._header_map = mmap.mmap(ring_fd, HEADER_BYTES, flags=mmap.MAP_SHARED)
        # Mapping every page now costs a few ms here and saves a page fault per 4 KiB
        # drained later (the pages already exist: the producer allocated them).
        self._data = mmap.mmap(
            ring_fd, capacity, flags=mmap.MAP_SHARED | populate, offset=HEADER_BYTES
        )
        self._header = memoryview(self._header_map).cast("Q")
        if self._header[W_MAGIC] != MAGIC:
            raise RuntimeError("steplog writer: the ring has no valid header")
        self._out_fd = out_fd
        self._capacity = capacity
        self.head = self._header[W_HEAD]
        self.lines = 0  # newlines written from the ring: the event lines
        self.batches = 0
        self.failing_since: float | None = None
        self.pause = 0.0
        self._line_done = 0

    def pending(self) -> int:
        """Bytes published and not written yet."""
        return int(self._header[W_TAIL]) - self.head

    def drain(self) -> bool:
        """Write everything published before this call.

        Returns:
            True if it was all written; False if a write failed (the rest stays in the
            ring for the next call).
        """
        target = int(self._header[W_TAIL])
        wrote = False
        while self.head < target:
            head = self.head
            size = min(target - head, CHUNK)
            start = head % self._capacity
            stop = start + size
            if stop <= self._capacity:
                data = self._data[start:stop]
            else:
                data = self._data[start:] + self._data[: stop - self._capacity]
            if head + size < target:
                # Cut a capped chunk after its last newline so that each write adds whole
                # lines (a reader tailing the file sees fewer torn lines).
                cut = data.rfind(b"\n")
                if cut >= 0:
                    data = data[: cut + 1]
            written = self._write(data, count_lines=True)
            if written:
                wrote = True
            if written < len(data):
                break
        if wrote:
            self.batches += 1
        return self.head >= target

    def write_line(self, line: bytes) -> bool:
        """Write bytes that are not from the ring (the run-end line).

        A retry after a failure continues where the failed call stopped, so the line is
        never written twice.

        Returns:
            True once all of ``line`` is written.
        """
        self._line_done += self._write(line, self._line_done, count_lines=False)
        return self._line_done == len(line)

    @property
    def errno(self) -> int:
        """The error number of the last failed write (0 after a write succeeded)."""
        return int(self._header[W_ERRNO])

    def _write(self, data: bytes, done: int = 0, *, count_lines: bool) -> int:
        """Write ``data[done:]``, finishing partial writes.

        Returns:
            The number of bytes written before an error (all of them if none).
        """
        start = done
        total = len(data)
        view = memoryview(data)
        while done < total:
            try:
                # Python retries EINTR itself (PEP 475).
                written = os.write(self._out_fd, view[done:])
            except OSError as error:
                self._header[W_ERRNO] = error.errno or 0
                self._header[W_ERRORS] += 1
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self.pause = min(max(self.pause * 2, 0.01), _MAX_PAUSE)
                break
            if count_lines:
                # Count in the copy, over exactly the bytes the kernel took.
                self.lines += data.count(b"\n", done, done + written)
                self.head += written
                # The bytes are copied out and written: the producer may reuse them.
                self._header[W_HEAD] = self.head
            done += written
        else:
            if self.failing_since is not None:
                self._header[W_ERRNO] = 0
                self.failing_since = None
                self.pause = 0.0
        return done - start

    def close(self) -> None:
        """Unmap the ring."""
        self._header.release()
        self._header_map.close()
        self._data.close()


def _killed_record(run_id: str, reader: RingReader) -> bytes:
    """The run-end line written when the logging process died without closing."""
    import json  # only on this path: it is not needed to start

    lines = reader.lines
    record = {
        "type": "run_end",
        "run_id": run_id,
        "end_time": time.time(),
        "status": "killed",
        "summary": {},
        "stats": {
            "logged": lines,
            "written": lines,
            "dropped": 0,
            "batches": reader.batches,
            "backend_errors": 0,
            "max_buffer_depth": 0,
            "drain_seconds": 0.0,
            "device_syncs": 0,
            "backends": {},
        },
        "encoding_fallbacks": 0,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _send(fd: int, data: bytes) -> None:
    """Best-effort write to the ack pipe: full, or no reader left, is not an error.

    The parent checks ``head`` in the header after every acknowledgement and on its own
    timer, so a lost acknowledgement only delays it.
    """
    with contextlib.suppress(OSError):
        os.write(fd, data)


def serve(
    ctl_fd: int,
    ack_fd: int,
    reader: RingReader,
    flush_interval: float,
    run_id: str,
) -> int:
    """Run the writer loop until closed or orphaned; returns the exit status."""
    poller = select.poll()
    poller.register(ctl_fd, select.POLLIN)
    pending = bytearray()
    acks_owed = 0
    end_line: bytes | None = None
    orphaned = False
    finishing_since: float | None = None
    while True:
        if orphaned or end_line is not None:
            # Nothing more to read from the parent: finish and leave.
            if finishing_since is None:
                finishing_since = time.monotonic()
            if reader.drain():
                if end_line is None:
                    # Built once: a retried write must continue the same bytes.
                    end_line = _killed_record(run_id, reader)
                if reader.write_line(end_line):
                    return 0
            # Give up on writes that failed for that long since we began to finish.
            failing_since = max(reader.failing_since or time.monotonic(), finishing_since)
            if time.monotonic() - failing_since > _GIVE_UP_SECONDS:
                errno = reader.errno
                sys.stderr.write(
                    f"steplog writer: giving up after writes failed for "
                    f"{_GIVE_UP_SECONDS:.0f} s ({os.strerror(errno)}); "
                    f"{reader.pending()} bytes of run {run_id} were not written\n"
                )
                return 1
            time.sleep(reader.pause)
            continue
        timeout = flush_interval if reader.failing_since is None else reader.pause
        if poller.poll(max(int(timeout * 1000), 1)):
            try:
                chunk = os.read(ctl_fd, 65536)
            except OSError:  # a reset connection: the parent is gone just the same
                chunk = b""
            if not chunk:
                orphaned = True
            pending += chunk
            while pending:
                kind = pending[0]
                if kind == 0x57:  # W
                    del pending[0]
                elif kind == 0x46:  # F
                    acks_owed += 1
                    del pending[0]
                elif kind == 0x43:  # C
                    if len(pending) < 9:
                        break
                    size = int.from_bytes(pending[1:9], "little")
                    if len(pending) < 9 + size:
                        break
                    end_line = bytes(pending[9 : 9 + size])
                    del pending[: 9 + size]
                else:
                    sys.stderr.write(f"steplog writer: unknown control byte {kind:#x}\n")
                    del pending[0]
        if reader.drain() and acks_owed:
            _send(ack_fd, b"A" * acks_owed)
            acks_owed = 0


def main(argv: list[str]) -> int:
    """Entry point: parse argv, attach to the ring, say ready, serve."""
    # Before anything slow: a Ctrl-C or SIGTERM meant for the training job must not stop
    # us before we drained (we exit on our own once the parent is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if len(argv) != 7:
        sys.stderr.write("steplog writer: expected 7 arguments (internal use only)\n")
        return 2
    ctl_fd, ack_fd, ring_fd, out_fd, capacity = (int(value) for value in argv[:5])
    flush_interval = float(argv[5])
    run_id = argv[6]
    reader = RingReader(ring_fd, out_fd, capacity)
    os.close(ring_fd)  # the mappings keep the memory; the descriptor is not needed
    os.set_blocking(ack_fd, False)
    # If the parent died while we started, serve() sees end-of-file and ends the run.
    _send(ack_fd, b"R")
    try:
        return serve(ctl_fd, ack_fd, reader, flush_interval, run_id)
    finally:
        reader.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
