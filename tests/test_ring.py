"""The writer process over a shared-memory ring (``durability="process"``).

Real processes, real files: each test starts the child writer, and the crash tests run a
logging process as a script and SIGKILL it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import steplog
from steplog import _ring
from steplog._ring import ProcessWriter

pytestmark = pytest.mark.skipif(
    not ProcessWriter.supported(), reason="the writer process needs POSIX on x86-64"
)

RUN_START = {
    "type": "run_start",
    "schema": 1,
    "run_id": "ring-run",
    "experiment": "ring",
    "start_time": 0.0,
    "config": {},
}
END_LINE = b'{"type":"run_end","status":"finished"}\n'


def _shm_entries() -> set[str]:
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return set()
    return {name for name in names if name.startswith(("steplog", "psm_"))}


def _ring_mappings() -> int:
    """Mappings of ring memory in this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return sum("steplog-ring" in line for line in maps)
    except OSError:
        return 0


def _open_fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def _no_shared_memory_left() -> Iterator[None]:
    """Nothing is left in /dev/shm by any test, whatever happened to the processes."""
    before = _shm_entries()
    yield
    assert _shm_entries() <= before


def _open_run(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, json.dumps(RUN_START).encode() + b"\n")
    return fd


def _put(writer: ProcessWriter, line: bytes) -> None:
    while not writer.put(line):
        writer.wake()
        assert writer.wait_for_room(len(line), 10.0)


def _lines(path: Path) -> list[bytes]:
    """The file's lines; fails on a torn last line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    return data[:-1].split(b"\n")


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie that no one has reaped yet counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_round_trip_from_four_threads(tmp_path: Path) -> None:
    """100 000 lines put from 4 threads arrive whole, once each, in each thread's order;
    flush() from every thread covers that thread's earlier lines; close() appends the end
    line and releases the ring's memory and descriptors."""
    path = tmp_path / "run.jsonl"
    fds_before = _open_fds()
    maps_before = _ring_mappings()
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=256 * 1024)
    writer.start()
    assert writer.alive()
    per_thread = 25_000
    failures: list[str] = []

    def produce(thread: int) -> None:
        for i in range(per_thread):
            line = b'{"t":%d,"i":%d,"pad":"%s"}\n' % (thread, i, b"p" * (i % 97))
            _put(writer, line)
            if i % 1000 == 999:
                writer.wake()
            if i % 5000 == 4999:
                if not writer.flush(timeout=10):
                    failures.append(f"flush timed out in thread {thread}")
                elif line not in path.read_bytes():
                    failures.append(f"thread {thread}: line {i} missing after flush")

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert writer.close(END_LINE, timeout=10)
    os.close(fd)
    assert not writer.alive()
    assert _ring_mappings() == maps_before
    assert _open_fds() == fds_before

    lines = _lines(path)
    assert json.loads(lines[0]) == RUN_START
    assert lines[-1] == END_LINE[:-1]
    seen: dict[int, list[int]] = {t: [] for t in range(4)}
    for line in lines[1:-1]:
        record = json.loads(line)
        seen[record["t"]].append(record["i"])
    for t in range(4):
        assert seen[t] == list(range(per_thread))


def test_ring_smaller_than_the_data(tmp_path: Path) -> None:
    """5 MB of lines through a 64 KiB ring with wait_for_room() lose nothing: lines that
    wrap around the ring's end arrive whole."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=64 * 1024, flush_interval=0.01)
    writer.start()
    rng = random.Random(7)
    expected = []
    total = 0
    while total < 5_000_000:
        line = b'{"n":%d,"pad":"%s"}\n' % (len(expected), b"q" * rng.randrange(0, 2000))
        expected.append(line[:-1])
        total += len(line)
        _put(writer, line)
    assert writer.flush(timeout=10)
    assert writer.used() == 0
    assert writer.close(END_LINE, timeout=10)
    os.close(fd)
    assert _lines(path)[1:] == [*expected, END_LINE[:-1]]


def test_put_refuses_a_line_that_does_not_fit(tmp_path: Path) -> None:
    """put() returns False when the ring is full and writes nothing of that line; a line
    larger than the ring is refused and wait_for_room() says at once that it never fits."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    # A long flush interval and no wake-ups: the child leaves the ring alone.
    writer = ProcessWriter(fd, run_id="ring-run", capacity=4096, flush_interval=60)
    writer.start()
    assert writer.capacity == 4096
    accepted = []
    for i in range(1000):
        line = b'{"i":%d,"pad":"%s"}\n' % (i, b"r" * 40)
        if not writer.put(line):
            break
        accepted.append(line)
    used = writer.used()
    assert used == sum(map(len, accepted))
    assert 4096 - len(line) < used <= 4096
    assert not writer.put(line)
    assert writer.used() == used
    huge = b"h" * 5000 + b"\n"
    assert not writer.put(huge)
    started = time.monotonic()
    assert not writer.wait_for_room(len(huge), timeout=5)
    assert time.monotonic() - started < 1
    assert writer.close(END_LINE, timeout=10)
    os.close(fd)
    assert _lines(path)[1:] == [line[:-1] for line in accepted] + [END_LINE[:-1]]


def test_lifecycle_misuse_is_refused(tmp_path: Path) -> None:
    """put() before start() and after close() returns False; start() twice raises;
    close() is idempotent; a bad descriptor fails start() with OSError and leaves no
    process or descriptor behind."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run")
    assert writer.pid is None
    assert not writer.alive()
    assert not writer.put(b"{}\n")
    writer.start()
    with pytest.raises(RuntimeError, match="only once"):
        writer.start()
    assert writer.put(b'{"a":1}\n')
    assert writer.close(END_LINE, timeout=10)
    assert writer.close(b"ignored\n", timeout=10)
    assert not writer.put(b'{"a":2}\n')
    assert writer.flush(timeout=1)  # nothing put since
    assert writer.used() == 0
    os.close(fd)
    assert _lines(path)[1:] == [b'{"a":1}', END_LINE[:-1]]

    never_started = ProcessWriter(fd, run_id="ring-run")
    assert not never_started.close(END_LINE)

    fds_before = _open_fds()
    bad = ProcessWriter(999_999, run_id="ring-run")  # not an open descriptor
    with pytest.raises(OSError, match="Bad file descriptor"):
        bad.start()
    assert bad.pid is None
    assert _open_fds() == fds_before


_LOGGER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from steplog._ring import ProcessWriter

    path, start_line = sys.argv[1], sys.argv[2].encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, start_line + b"\\n")
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 18, flush_interval=0.05)
    writer.start()
    print(writer.pid, flush=True)
    put = writer.put
    i = 0
    while True:
        line = b'{"step":%d,"time":0.0,"data":{"seq":%d,"pad":"%s"}}\\n' % (
            i, i, b"x" * (i % 61))
        if not put(line):
            writer.wake()
            writer.wait_for_room(len(line), 10.0)
            continue
        i += 1
        if i % 1000 == 0:
            writer.wake()
            print(i, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_of_the_logging_process_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the logging process at a random moment (5 times): every line it put is
    in the file, whole, once, in order, followed by a run-end record with status
    "killed" that counts them; the writer process exits within a few seconds."""
    script = tmp_path / "logger.py"
    script.write_text(_LOGGER_SCRIPT)
    rng = random.Random(20261130)
    for attempt in range(5):
        path = tmp_path / f"run{attempt}.jsonl"
        progress = tmp_path / f"progress{attempt}.txt"
        with progress.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(path), json.dumps(RUN_START)], stdout=out
            )
        try:
            deadline = time.monotonic() + 20
            while progress.read_bytes().count(b"\n") < 2:  # writer pid + one count
                assert proc.poll() is None, "the logging script failed"
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.kill()
            proc.wait()
        reports = progress.read_bytes().split(b"\n")
        writer_pid = int(reports[0])
        complete = [int(r) for r in reports[1:-1]]  # the last one may be torn
        assert _wait_gone(writer_pid, timeout=5), f"attempt {attempt}: writer still running"

        lines = _lines(path)
        events = lines[1:-1]
        assert len(events) >= complete[-1]
        # Byte for byte: whole, once each, in order.
        assert events == [
            b'{"step":%d,"time":0.0,"data":{"seq":%d,"pad":"%s"}}' % (i, i, b"x" * (i % 61))
            for i in range(len(events))
        ]
        end = json.loads(lines[-1])
        assert end["type"] == "run_end"
        assert end["status"] == "killed"
        assert end["run_id"] == "ring-run"
        assert end["stats"]["logged"] == end["stats"]["written"] == len(events)
        if attempt == 0:  # steplog's own reader takes the file (once: it is slow-ish)
            run = steplog.read_run(path)
            assert run.status == "killed"
            assert len(run.records) == len(events)
            assert run.stats is not None
            assert run.stats.written == len(events)
            assert not run.torn


_FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from steplog._ring import ProcessWriter

    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, sys.argv[2].encode() + b"\\n")
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16, flush_interval=0.05)
    writer.start()
    if sys.argv[3] == "forget":
        os.register_at_fork(after_in_child=writer.forget_after_fork)
    for i in range(1000):
        while not writer.put(b'{"step":%d,"time":0.0,"data":{}}\\n' % i):
            writer.wait_for_room(100, 10.0)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(writer.pid, child, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("forget", [True, False], ids=["forget_after_fork", "no_forget"])
def test_a_fork_does_not_keep_the_writer_alive(tmp_path: Path, forget: bool) -> None:
    """A fork of the logging process that called forget_after_fork() (through
    os.register_at_fork) does not keep the writer process alive once the logging
    process is SIGKILLed; without that call, the fork's copy of the control pipe would
    keep it waiting until the fork exits."""
    script = tmp_path / "forker.py"
    script.write_text(_FORK_SCRIPT)
    path = tmp_path / "run.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), json.dumps(RUN_START), "forget" if forget else ""],
        stdout=subprocess.PIPE,
    )
    fork_pid = None
    try:
        assert proc.stdout is not None
        writer_pid, fork_pid = map(int, proc.stdout.readline().split())
        proc.kill()
        proc.wait()
        if forget:
            assert _wait_gone(writer_pid, timeout=5)
            assert not _gone(fork_pid)
        else:
            time.sleep(1)
            assert not _gone(writer_pid)
            os.kill(fork_pid, signal.SIGKILL)
            assert _wait_gone(writer_pid, timeout=5)
    finally:
        proc.kill()
        proc.wait()
        if fork_pid is not None and not _gone(fork_pid):
            os.kill(fork_pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
    lines = _lines(path)
    assert [json.loads(line)["step"] for line in lines[1:-1]] == list(range(1000))
    assert json.loads(lines[-1])["status"] == "killed"


def test_writer_ignores_sigint_and_sigterm(tmp_path: Path) -> None:
    """SIGINT and SIGTERM (a Ctrl-C, a scheduler's SIGTERM) do not stop the writer process,
    which runs in its own session; it keeps writing and closes normally."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run")
    writer.start()
    assert writer.pid is not None
    assert os.getsid(writer.pid) != os.getsid(0)
    os.kill(writer.pid, signal.SIGINT)
    os.kill(writer.pid, signal.SIGTERM)
    time.sleep(0.2)
    assert writer.alive()
    assert writer.put(b'{"a":1}\n')
    assert writer.flush(timeout=5)
    assert writer.close(END_LINE, timeout=5)
    os.close(fd)
    assert _lines(path)[1:] == [b'{"a":1}', END_LINE[:-1]]


def test_a_dead_writer_is_replaced_by_close(tmp_path: Path) -> None:
    """If the writer process dies on its own, wait_for_room() returns False and close()
    writes what it left in the ring and the end line itself: every line once."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16, flush_interval=60)
    writer.start()
    lines = [b'{"i":%d}\n' % i for i in range(1500)]
    for line in lines[:1000]:
        _put(writer, line)
    assert writer.flush(timeout=5)
    for line in lines[1000:1400]:
        assert writer.put(line)  # left in the ring: no wake-up, a long flush interval
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while writer.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for line in lines[1400:]:
        assert writer.put(line)
    assert not writer.wait_for_room(writer.capacity, timeout=5)
    assert not writer.flush(timeout=5)
    assert writer.close(END_LINE, timeout=5)
    os.close(fd)
    assert _lines(path)[1:] == [line[:-1] for line in lines] + [END_LINE[:-1]]


def test_close_times_out_and_kills_a_stuck_writer(tmp_path: Path) -> None:
    """A writer that cannot make progress (here: stopped with SIGSTOP) makes flush()
    return False at its timeout; close() kills and reaps it at its timeout and writes
    what it left, the end line included, from this process."""
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run")
    writer.start()
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    assert writer.put(b'{"a":1}\n')
    assert not writer.flush(timeout=0.3)
    started = time.monotonic()
    assert writer.close(END_LINE, timeout=0.3)
    assert time.monotonic() - started < 3
    assert _gone(pid)
    assert writer.salvaged
    assert writer.close(END_LINE)  # idempotent: the first call's result
    os.close(fd)
    assert path.read_bytes().endswith(b'{"a":1}\n' + END_LINE)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd_create: Linux")
def test_write_errors_keep_the_bytes_until_writes_succeed(tmp_path: Path) -> None:
    """A write that fails (here: a file size limit on the writer process, EFBIG, first a
    partial write) keeps the rest in the ring and retries: write_error() says why, and
    once writing works again every line is there exactly once."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run", flush_interval=0.02)
    writer.start()
    assert writer.pid is not None
    soft, hard = resource.prlimit(writer.pid, resource.RLIMIT_FSIZE)
    limit = os.fstat(fd).st_size + 10_007  # in the middle of a line
    resource.prlimit(writer.pid, resource.RLIMIT_FSIZE, (limit, hard))
    lines = [b'{"i":%d,"pad":"%s"}\n' % (i, b"e" * 80) for i in range(300)]
    for line in lines:
        assert writer.put(line)
    assert not writer.flush(timeout=0.5)
    error = writer.write_error()
    assert error is not None
    assert error.errno == errno.EFBIG
    assert os.fstat(fd).st_size == limit
    resource.prlimit(writer.pid, resource.RLIMIT_FSIZE, (soft, hard))
    assert writer.flush(timeout=5)
    assert writer.write_error() is None
    assert writer.close(END_LINE, timeout=5)
    os.close(fd)
    assert _lines(path)[1:] == [line[:-1] for line in lines] + [END_LINE[:-1]]


def test_without_memfd_nothing_is_left_in_dev_shm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where memfd_create is missing (macOS, BSDs) the ring is an unlinked file: nothing
    has a name in /dev/shm (or the temp directory) even while the writer runs."""
    monkeypatch.setattr(_ring, "_HAVE_MEMFD", False)
    path = tmp_path / "run.jsonl"
    fd = _open_run(path)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16)
    writer.start()
    assert not [name for name in _shm_entries() if name.startswith("steplog")]
    for i in range(5000):
        _put(writer, b'{"i":%d}\n' % i)
    assert writer.close(END_LINE, timeout=10)
    os.close(fd)
    assert len(_lines(path)) == 5002


_SIGPIPE_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from steplog._ring import ProcessWriter

    # Some programs restore SIGPIPE's default, which kills them on a write to a pipe
    # whose reader is gone.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16)
    writer.start()
    os.kill(writer.pid, signal.SIGKILL)
    while writer.alive():
        time.sleep(0.01)
    writer.put(b"{}\\n")
    for _ in range(100):
        writer.wake()
    print(writer.flush(timeout=1), writer.close(b"end\\n", timeout=1), flush=True)
    """
)


def test_a_dead_writer_does_not_raise_sigpipe(tmp_path: Path) -> None:
    """In a program that restored SIGPIPE's default action, wake(), flush() and close()
    after the writer process died do not kill the program."""
    script = tmp_path / "sigpipe.py"
    script.write_text(_SIGPIPE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run.jsonl")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"False True\n"
    assert (tmp_path / "run.jsonl").read_bytes() == b"{}\nend\n"


_NO_STDIO_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from steplog._ring import ProcessWriter

    path = sys.argv[1]
    for fd in (0, 1, 2):
        os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # gets 0
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16)
    writer.start()  # its socket and pipe get 1 and 2
    for i in range(100):
        writer.put(b'{"i":%d}\\n' % i)
    sys.exit(0 if fd == 0 and writer.close(b"end\\n", timeout=10) else 1)
    """
)


def test_a_process_without_stdio(tmp_path: Path) -> None:
    """A process with stdin, stdout and stderr closed (a daemon), whose run file and
    pipes get descriptors 0-2, still has its lines written to the run file."""
    script = tmp_path / "daemon.py"
    script.write_text(_NO_STDIO_SCRIPT)
    path = tmp_path / "run.jsonl"
    done = subprocess.run([sys.executable, str(script), str(path)], timeout=30, check=False)
    assert done.returncode == 0
    assert _lines(path) == [b'{"i":%d}' % i for i in range(100)] + [b"end"]


_EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from steplog._ring import ProcessWriter

    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    writer = ProcessWriter(fd, run_id="ring-run", capacity=1 << 16, flush_interval=60)
    writer.start()
    for i in range(10):
        writer.put(b'{"i":%d}\\n' % i)
    print(writer.pid, flush=True)
    os._exit(0)  # no close(), no interpreter shutdown
    """
)


def test_exit_without_close_ends_the_run_as_killed(tmp_path: Path) -> None:
    """A logging process that exits without close() does not keep its stdout pipe open
    through the writer process; the writer writes what was put, a "killed" run-end
    record, and exits."""
    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    path = tmp_path / "run.jsonl"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, timeout=30, check=True
    )
    assert time.monotonic() - started < 10
    assert _wait_gone(int(done.stdout), timeout=5)
    lines = _lines(path)
    assert lines[:-1] == [b'{"i":%d}' % i for i in range(10)]
    end = json.loads(lines[-1])
    assert end["status"] == "killed"
    assert end["stats"]["logged"] == 10
