"""Crash durability: a process killed with SIGKILL keeps a readable, gap-free prefix."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import steplog
from steplog._ring import ProcessWriter

from conftest import CPU_TENSORS_AS_DEVICE, GateBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

FLUSH_INTERVAL = 0.1
#: What the promise allows on top of flush_interval on this 2-core machine: at full speed
#: the buffer also holds a backlog the worker has not reached yet.
MARGIN = 0.5

CHILD = """
import sys, time, steplog
tracker = steplog.Tracker(steplog.JsonlBackend(sys.argv[1]), experiment_name="kill",
                          flush_interval=float(sys.argv[2]))
tracker.init()
i = 0
while True:
    tracker.log({"i": i, "loss": 1.0 / (i + 1)})
    i += 1
    if i % 1000 == 0:
        print(i, time.time(), flush=True)   # "events 0..i-1 were logged by this time"
"""


def kill_once(tmp_path, run_for: float) -> tuple[int, float]:
    """Run a full-speed logger, SIGKILL it; return (events kept, loss window in s)."""
    root = tmp_path / f"k{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(FLUSH_INTERVAL)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # logging has started
    assert first
    time.sleep(run_for)
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # A line the kill cut short is ignored: the marks are only a lower bound.
    fields = [line.split() for line in (first + rest).splitlines()]
    progress = [(int(f[0]), float(f[1])) for f in fields if len(f) == 2]
    (path,) = root.rglob("*.jsonl")
    run = steplog.read_run(path)
    kept = len(run.records)
    assert run.history.get("i", []) == list(range(kept)), "the file must be a gap-free prefix"
    assert run.status == "incomplete"
    # The promise: every event logged more than flush_interval + MARGIN before the kill
    # is in the file. A mark (n, t) says events 0..n-1 were logged by time t.
    for n, t in progress:
        if killed_at - t > FLUSH_INTERVAL + MARGIN:
            assert kept >= n, f"events logged {killed_at - t:.3f} s before the kill are lost"
    # The first lost event (number `kept`) was logged after the latest mark at or below
    # `kept`: an upper bound on how old the loss is. With nothing kept, the first mark
    # (checked against the promise above) stands in for it.
    covered = [t for n, t in progress if n <= kept]
    lost_since = max(covered) if covered else progress[0][1]
    return kept, killed_at - lost_since


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_a_gap_free_prefix(tmp_path):
    """20 SIGKILLs: every file reads, is gap-free, and loses at most ~flush_interval."""
    rng = random.Random(1234)
    windows = []
    for _ in range(20):
        _, window = kill_once(tmp_path, rng.uniform(0.05, 0.6))
        windows.append(window)
    worst = max(windows)
    print(
        f"\nkills: 20, worst loss window {worst * 1000:.0f} ms, median "
        f"{sorted(windows)[10] * 1000:.0f} ms (flush_interval {FLUSH_INTERVAL * 1000:.0f} ms)"
    )
    assert worst <= FLUSH_INTERVAL + MARGIN


PROCESS_CHILD = """
import sys, steplog
tracker = steplog.Tracker(steplog.JsonlBackend(sys.argv[1]), experiment_name="kill",
                          durability="process")
info = tracker.init()
print("pid", tracker._run.writer.durability.pid, flush=True)
i = 0
while True:
    tracker.log({"i": i, "loss": 1.0 / (i + 1)})
    i += 1
    if i % 100 == 0:
        print(i, flush=True)   # "events 0..i-1 were logged"
"""


def kill_process_mode_once(tmp_path, run_for: float) -> int:
    """SIGKILL a full-speed logger in process mode; return the events it had logged."""
    root = tmp_path / f"p{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROCESS_CHILD, str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    writer_pid = int(proc.stdout.readline().split()[1])
    assert proc.stdout.readline()  # logging has started
    time.sleep(run_for)
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    # A line the kill cut short is ignored: the last whole mark is a lower bound.
    marks = [int(line) for line in rest.splitlines() if line.isdigit()]
    logged = max(marks, default=100)
    (path,) = root.rglob("*.jsonl")
    deadline = time.monotonic() + 10
    while b'"type":"run_end"' not in path.read_bytes()[-2048:]:
        assert time.monotonic() < deadline, "the writer process did not close the run"
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while _running(writer_pid):
        assert time.monotonic() < deadline, "the writer process outlived its run"
        time.sleep(0.02)
    run = steplog.read_run(path)
    kept = len(run.records)
    assert run.history["i"] == list(range(kept)), "the file must be gap-free"
    assert kept >= logged, f"{logged - kept} of {logged} logged events lost"
    assert run.status == "killed"
    assert run.stats is not None and run.stats.written == kept
    return logged


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    not ProcessWriter.supported(), reason="durability='process' needs POSIX on x86-64"
)
def test_process_durability_loses_nothing_in_twenty_sigkills(tmp_path):
    """durability='process': 20 SIGKILLs at random moments lose not one logged event."""
    rng = random.Random(4321)
    logged = [kill_process_mode_once(tmp_path, rng.uniform(0.05, 0.4)) for _ in range(20)]
    print(f"\nkills: 20, events logged before the kill {min(logged)}…{max(logged)}, 0 lost")


def _process_mode_only():
    if not ProcessWriter.supported():
        pytest.skip("durability='process' needs POSIX on x86-64")


@pytest.mark.slow
def test_process_mode_with_tensor_rows_and_a_full_block_buffer_finishes(tmp_path):
    """Rows for the writer (device tensors) and a full 'block' buffer never deadlock the
    writer with a producer waiting for room (ring mode keeps lines behind rows)."""
    _process_mode_only()
    pytest.importorskip("torch")
    code = f"""
import torch, steplog
{CPU_TENSORS_AS_DEVICE}  # CPU tensors take the device path: rows the writer must read
t = steplog.Tracker(steplog.JsonlBackend({str(tmp_path)!r}), durability="process",
                    buffer_size=256, flush_interval=0.01)
t.init()
for i in range(4000):
    t.log({{"i": i, "x": torch.full((2,), float(i))}} if i % 2 == 0 else {{"i": i}})
s = t.finish()
print(s.logged, s.written, s.dropped)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4000", "4000", "0"]
    (path,) = tmp_path.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert run.history["i"] == list(range(4000))
    assert run.records[4].data["x"] == [4.0, 4.0]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_process_mode_counts_copies_other_backends_miss_as_their_drops(tmp_path, policy):
    """With another backend beside the ring, a copy it misses is its drop only: the run
    file has every event and the stats say so (logged == written + dropped per backend)."""
    _process_mode_only()
    jsonl = steplog.JsonlBackend(tmp_path)
    gate = GateBackend()
    gate.local = True  # an in-process sink: the writer hands it copies of the lines
    tracker = steplog.Tracker(jsonl, gate, durability="process", overflow=policy, buffer_size=16)
    tracker.init()
    for i in range(5_000):
        tracker.log({"i": i})
    gate.gate.set()
    stats = tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.history["i"] == list(range(5_000))
    assert stats.logged == stats.written == 5_000 and stats.dropped == 0
    for name, backend in stats.backends.items():
        assert backend.delivered + backend.failed + backend.dropped == 5_000, name
    assert stats.backends["gated"].dropped > 0
    assert len(gate.records) == stats.backends["gated"].delivered


BIG_EVENT = """
import sys, steplog
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), durability="process", buffer_bytes=2**20,
    overflow=sys.argv[2],
)
tracker.init()
tracker.log({"i": 0})
tracker.log({"i": 1, "big": "x" * 2**21})  # twice the ring (1 MiB)
tracker.log({"i": 2})
stats = tracker.finish()
print(stats.logged, stats.written, stats.dropped)
"""


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest"])
def test_process_mode_records_an_event_larger_than_its_ring_as_too_large(tmp_path, policy):
    """durability='process': an event the writer process's ring cannot hold is recorded
    as the too-large marker (keys and size) and counted, under every policy (before:
    log() hung forever under block, and the event vanished under the drop policies)."""
    _process_mode_only()
    done = subprocess.run(
        [sys.executable, "-c", BIG_EVENT, str(tmp_path), policy],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "3", "0"]
    assert "more than max_event_bytes=1048576" in done.stderr
    (path,) = tmp_path.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert [e.step for e in run.records] == [0, 1, 2]
    marker = run.records[1].data["$too_large"]
    assert marker["keys"] == ["i", "big"] and marker["bytes"] > 2**21
    assert run.status == "finished"


WRITER_DIES = """
import sys, steplog
root, others, buffer_bytes = sys.argv[1], sys.argv[2] == "others", int(sys.argv[3])
backends = [steplog.JsonlBackend(root)] + ([steplog.MemoryBackend()] if others else [])
tracker = steplog.Tracker(
    *backends, durability="process", overflow="block", buffer_bytes=buffer_bytes,
    buffer_size=1024,
)
tracker.init()
for i in range(1_000):
    tracker.log({"i": i, "loss": 1.0 / (i + 1)})
tracker.flush()
print("ready", flush=True)
sys.stdin.readline()  # the test kills the writer process, before or while we go on
for i in range(1_000, 100_000):
    tracker.log({"i": i, "loss": 1.0 / (i + 1)})
stats = tracker.finish()
print(stats.logged, stats.written, stats.dropped, stats.writer_takeover, flush=True)
for name, b in stats.backends.items():
    print(name, b.delivered, b.failed, b.dropped, flush=True)
if others:
    print("memory-records", len(backends[1].records), flush=True)
"""


def _writer_process_of(pid: int) -> int:
    """The steplog writer process started by the process ``pid``."""
    found = subprocess.run(
        ["pgrep", "-P", str(pid), "-f", "_ringchild.py"], capture_output=True, text=True
    )
    (child,) = found.stdout.split()
    return int(child)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("others", "buffer_bytes", "kill_while_logging"),
    [
        ("file", 64 * 2**20, False),
        ("others", 64 * 2**20, False),
        ("file", 2**16, True),  # a 64 KiB ring: producers find it full, its writer dead
        ("others", 2**16, True),
    ],
)
def test_the_logging_process_takes_over_when_its_writer_process_dies(
    tmp_path, others, buffer_bytes, kill_while_logging
):
    """durability='process': SIGKILL the writer process (as the OOM killer would) after
    1 000 events and log 99 000 more under 'block': nothing is lost — the logging
    process writes what the ring held and then the file itself — it warns once, the
    file holds an alert record saying so and the stats say writer_takeover (before:
    86 981 events counted as dropped, silently, and the run recorded 'finished')."""
    _process_mode_only()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_DIES, str(tmp_path), others, str(buffer_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    writer = _writer_process_of(proc.pid)
    if kill_while_logging:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.01)
    os.kill(writer, signal.SIGKILL)
    if not kill_while_logging:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["100000", "100000", "0", "True"], err
    counts = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert counts["jsonl"] == ["100000", "0", "0"]
    if others == "others":
        assert counts["memory"][0] == counts["memory-records"][0]
        delivered, failed, dropped = map(int, counts["memory"])
        assert delivered + failed + dropped == 100_000
    assert err.count("the writer process died (killed by SIGKILL)") == 1, err
    (path,) = tmp_path.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert run.history["i"] == list(range(100_000))  # every event once, in order
    assert run.status == "finished"
    assert run.stats is not None and run.stats.writer_takeover
    assert [a.watcher for a in run.alerts] == ["writer_process"]
    assert "SIGKILL" in run.alerts[0].message


def _writer_process_pid() -> int:
    return _writer_process_of(os.getpid())


@pytest.mark.slow
def test_a_flush_racing_the_writer_process_s_death_writes_everything_and_never_raises(
    tmp_path,
):
    """flush() right after the writer process was SIGKILLed: the take-over writes what
    its ring held and the flush returns (before: WorkerError 'did not confirm the flush'
    in about half the tries, which killed programs that did not expect it)."""
    _process_mode_only()
    for attempt in range(8):
        jsonl = steplog.JsonlBackend(tmp_path / f"a{attempt}")
        tracker = steplog.Tracker(jsonl, durability="process", flush_interval=0.05)
        tracker.init()
        for i in range(2_000):
            tracker.log({"i": i})
        os.kill(_writer_process_pid(), signal.SIGKILL)
        tracker.flush()  # must not raise
        stats = tracker.finish()
        assert stats.writer_takeover
        assert steplog.read_run(jsonl.path).history["i"] == list(range(2_000))


@pytest.mark.slow
@pytest.mark.parametrize("flush_first", [False, True])
def test_finish_timeout_holds_with_a_stalled_writer_process(tmp_path, flush_first, caplog):
    """The writer process stalls (SIGSTOP; a write hung on a dead NFS server looks the
    same): finish(timeout=2) returns by its deadline, the stalled process is killed and
    what it left is written from here, the run end included; the stats say so (before:
    30 s, 100 of 200 events lost while the stats said 200 delivered; after a timed-out
    flush(), finish(timeout=2) never returned)."""
    _process_mode_only()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, durability="process")
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    tracker.flush()
    writer = _writer_process_pid()
    os.kill(writer, signal.SIGSTOP)
    try:
        for i in range(100, 200):
            tracker.log({"i": i})
        if flush_first:
            with pytest.raises(steplog.FlushTimeoutError):
                tracker.flush(timeout=1)
        started = time.monotonic()
        stats = tracker.finish(timeout=2)
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer, signal.SIGCONT)
    assert took < 6, took
    run = steplog.read_run(jsonl.path)
    assert run.history["i"] == list(range(200)) and run.status == "finished"
    assert stats.writer_takeover
    assert stats.backends["jsonl"].delivered == 200


@pytest.mark.slow
def test_a_writer_process_killed_just_before_finish_is_recorded(tmp_path, caplog):
    """The writer process killed just before finish(): every event and the run end are
    written from here, and that is said (a warning, writer_takeover) as for a death
    mid-run (before: silently, in half the tries)."""
    _process_mode_only()
    for attempt in range(5):
        jsonl = steplog.JsonlBackend(tmp_path / f"a{attempt}")
        tracker = steplog.Tracker(jsonl, durability="process")
        tracker.init()
        for i in range(2_000):
            tracker.log({"i": i})
        os.kill(_writer_process_pid(), signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="steplog"):
            stats = tracker.finish()
        assert stats.writer_takeover
        assert "writer process" in caplog.text
        caplog.clear()
        run = steplog.read_run(jsonl.path)
        assert run.history["i"] == list(range(2_000)) and run.status == "finished"


def test_process_durability_without_a_run_file_is_written_by_the_writer_thread(caplog):
    """durability='process' with no JSONL backend: the strategy falls back to the writer
    thread once, at the run's start, with one warning; every event still arrives."""
    memory = steplog.MemoryBackend()
    tracker = steplog.Tracker(memory, durability="process")
    with caplog.at_level(logging.WARNING, logger="steplog"):
        tracker.init()
        for i in range(100):
            tracker.log({"i": i})
        stats = tracker.finish()
    assert (stats.logged, stats.written, stats.dropped) == (100, 100, 0)
    assert [e.data["i"] for e in memory.records] == list(range(100))
    warnings = [r for r in caplog.records if "needs a JsonlBackend" in r.getMessage()]
    assert len(warnings) == 1
    assert not stats.writer_takeover
