"""How a run ends when the program does not end it: a dropped tracker, threads Python
still waits for, a backend that hangs in a thread call, Ctrl-C or SIGTERM during a slow
finish() (issue #13, items 2, 3, 5 and 6). Exit and signals are tried in real processes."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence

import anyio.to_thread
import pytest

import steplog
from steplog import Event, RunEnd

from conftest import run_script, wait_until


def only_run(root):
    (path,) = root.rglob("*.jsonl")
    return steplog.read_run(path)


# -- item 2: a tracker dropped with its run active ------------------------------------


@pytest.mark.slow
def test_function_that_forgets_finish_keeps_every_event(tmp_path):
    """A train() function that never calls finish(): its tracker is dropped on return
    and the process exits at once; the run is closed 'unfinished' with every event."""
    result = run_script(
        """
        import steplog

        def train():
            tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="fn")
            tracker.init()
            for i in range(5000):
                tracker.log({"i": i})

        train()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "was dropped without finish()" in result.stderr
    run = only_run(tmp_path / "runs")
    assert run.status == "unfinished"
    assert run.history["i"] == list(range(5000))
    assert run.stats is not None and run.stats.written == 5000


def test_rebinding_the_tracker_name_closes_the_old_run(tmp_path):
    """A notebook cell run twice rebinds `tracker`: the first run is ended at once (not
    only at exit), with every event and the summary gathered so far."""
    root = tmp_path / "runs"
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="nb")
    first = tracker.init()
    for i in range(5000):
        tracker.log({"i": i})
    tracker.summary["best"] = 0.25
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="nb")
    gc.collect()
    path = root / "nb" / f"{first.run_id}.jsonl"

    def ended():
        return path.read_bytes().rstrip().endswith(b"}") and b'"run_end"' in path.read_bytes()

    assert wait_until(ended, timeout=10)
    run = steplog.read_run(path)
    assert run.status == "unfinished"
    assert run.history["i"] == list(range(5000))
    assert run.summary == {"best": 0.25}
    tracker.init()  # the new tracker works as usual
    tracker.log({"i": 0})
    assert tracker.finish().written == 1


# -- item 3: runs in threads that Python waits for -------------------------------------


@pytest.mark.slow
def test_non_daemon_thread_keeps_logging_after_main_returns(tmp_path):
    """Python waits for non-daemon threads: a run they log to (made in the main thread)
    stays usable until they end, and a run they start after main returned works too."""
    result = run_script(
        """
        import threading, time, steplog

        tracker = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="main")
        tracker.init()

        def logs_on():
            for i in range(200):
                tracker.log({"i": i})
                time.sleep(0.002)
            tracker.finish({"done": True})

        def starts_later():
            time.sleep(0.3)  # main has returned by now
            late = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="late")
            late.init()
            for i in range(100):
                late.log({"i": i})
            late.finish()

        threading.Thread(target=logs_on).start()
        threading.Thread(target=starts_later).start()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Error" not in result.stderr, result.stderr
    main = only_run(tmp_path / "runs" / "main")
    assert main.status == "finished"
    assert main.history["i"] == list(range(200))
    assert main.summary == {"done": True}
    late = only_run(tmp_path / "runs" / "late")
    assert late.status == "finished"
    assert late.history["i"] == list(range(100))


@pytest.mark.slow
def test_run_left_unfinished_by_a_thread_is_closed_after_the_thread_ends(tmp_path):
    """A non-daemon thread that never finishes its run: closed 'unfinished' once Python
    has waited for the thread, with every event the thread logged after main returned."""
    result = run_script(
        """
        import threading, time, steplog

        tracker = steplog.Tracker(steplog.JsonlBackend("runs"))
        tracker.init()

        def logs_on():
            time.sleep(0.2)
            for i in range(1000):
                tracker.log({"i": i})

        threading.Thread(target=logs_on).start()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path / "runs")
    assert run.status == "unfinished"
    assert run.history["i"] == list(range(1000))


# -- item 5: a backend that hangs where it cannot be cancelled ---------------------------


class _Recorder(steplog.Backend):
    """A healthy async backend: records what it got and its run end."""

    def __init__(self) -> None:
        self.events = 0
        self.end: RunEnd | None = None

    async def open(self, run) -> None:
        pass

    async def write(self, events: Sequence[Event]) -> None:
        self.events += len(events)

    async def close(self, end: RunEnd) -> None:
        self.end = end


class _HangsInThread(steplog.Backend):
    """Hangs inside a thread call (the W&B and trackio pattern), in write or close."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.release = threading.Event()

    async def open(self, run) -> None:
        pass

    async def write(self, events: Sequence[Event]) -> None:
        if self.where == "write":
            await anyio.to_thread.run_sync(self.release.wait)

    async def close(self, end: RunEnd) -> None:
        if self.where == "close":
            await anyio.to_thread.run_sync(self.release.wait)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["write", "close"])
def test_finish_timeout_holds_when_a_backend_hangs_in_a_thread_call(tmp_path, where):
    """finish(timeout=0.5) returns although a backend never returns from a thread call;
    the JSONL run and a healthy async backend get their run end with every event."""
    stuck, healthy = _HangsInThread(where), _Recorder()
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), stuck, healthy)
    tracker.init()
    for i in range(3000):
        tracker.log({"i": i})
    try:
        started = time.monotonic()
        stats = tracker.finish(timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        stuck.release.set()
    # Bounded: the deadline, one second of grace for closing, scheduling slack.
    assert elapsed < 5, elapsed
    assert healthy.end is not None and healthy.end.status == "finished"
    assert healthy.events == 3000
    name = "_hangsinthread"
    if where == "write":  # behind: the run file has them (the cursor says from where)
        assert (stats.backends[name].failed, stats.backends[name].missing) == (0, 3000)
    else:
        assert stats.backends[name].delivered == 3000
    assert "TimeoutError" in (stats.backends[name].last_error or "")
    run = only_run(tmp_path)
    assert run.status == "finished"
    assert len(run.records) == 3000


def test_a_backend_that_blocks_its_event_loop_cannot_hang_finish(tmp_path):
    """Blocking code in an async write() stalls the whole fan-out loop: finish still
    returns by its deadline and the JSONL run is complete."""

    class Blocks(_Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        async def write(self, events: Sequence[Event]) -> None:
            self.release.wait()

    blocks = Blocks()
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), blocks)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    try:
        started = time.monotonic()
        stats = tracker.finish(timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        blocks.release.set()
    assert elapsed < 6, elapsed
    assert stats.backends["blocks"].missing == 100
    run = only_run(tmp_path)
    assert run.status == "finished" and len(run.records) == 100


@pytest.mark.slow
def test_exit_with_a_backend_hanging_in_a_thread_call_closes_the_jsonl_run(tmp_path):
    """At exit, the same hang costs that backend only: the JSONL run gets its run end."""
    started = time.monotonic()
    result = run_script(
        """
        import threading, anyio.to_thread, steplog

        class Hangs(steplog.MemoryBackend):
            async def write(self, events):
                await anyio.to_thread.run_sync(threading.Event().wait)

        tracker = steplog.Tracker(steplog.JsonlBackend("runs"), Hangs(), shutdown_timeout=0.5)
        tracker.init()
        for i in range(500):
            tracker.log({"i": i})
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "undelivered events (hangs: 500 failed)" in result.stderr
    run = only_run(tmp_path / "runs")
    assert run.status == "unfinished"
    assert len(run.records) == 500


# -- item 6: Ctrl-C or SIGTERM while finish() is slow ----------------------------------

_SLOW_FINISH = """
import anyio, signal, steplog

# A process started in the background of a non-interactive shell (as CI may start
# this suite) inherits SIGINT ignored; Python then never raises KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)

class Slow(steplog.MemoryBackend):
    local = False  # a remote backend: its lane follows the run file

    async def write(self, events):
        # 0.5 ms per event however the events are batched (a backend that is behind is
        # caught up from the run file in large batches): 20 000 events take ~10 s.
        await anyio.sleep(0.0005 * len(events))
        await super().write(events)

tracker = steplog.Tracker(steplog.JsonlBackend("runs"), Slow(), batch_size=100)
tracker.init({"lr": 0.1})
for i in range(20_000):
    tracker.log({"i": i})
print("finishing", flush=True)
tracker.finish({"best": 1.5})
print("finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")]
)
def test_signal_during_a_slow_finish_still_writes_the_run_end(tmp_path, signum, status):
    """The slow backend needs ~10 s to catch up; a signal 0.5 s into finish() ends the
    run at once with the matching status, the summary, every event in the JSONL file,
    and the slow backend's shortfall counted."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_SLOW_FINISH))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "finishing"
        time.sleep(0.5)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "finished" not in out
    assert proc.returncode == -signum or (signum == signal.SIGINT and proc.returncode == 1), err
    run = only_run(tmp_path / "runs")
    assert run.status == status
    assert run.summary == {"best": 1.5}
    assert run.history["i"] == list(range(20_000))
    slow = run.stats.backends["slow"]
    assert slow.missing > 0 and slow.delivered + slow.missing == 20_000


# -- an uncaught exception ends the program -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("raises", "status"),
    [("ValueError('diverged')", "failed"), ("KeyboardInterrupt", "interrupted")],
)
def test_script_dying_of_an_uncaught_exception_records_it(tmp_path, raises, status):
    """A crash outside `with tracker.run()`: every event, status failed / interrupted."""
    result = run_script(
        f"""
        import steplog
        tracker = steplog.Tracker(steplog.JsonlBackend("runs"))
        tracker.init()
        for i in range(1000):
            tracker.log({{"i": i}})
        raise {raises}
        """,
        tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr  # the user's own traceback is still printed
    run = only_run(tmp_path / "runs")
    assert run.status == status
    assert run.history["i"] == list(range(1000))


@pytest.mark.slow
def test_thread_dying_of_an_exception_fails_the_run_it_started(tmp_path):
    """A thread that started a run and died of an exception: that run is 'failed'; the
    main thread's run, which ended normally but unfinished, stays 'unfinished'."""
    result = run_script(
        """
        import threading, steplog
        main = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="main")
        main.init()
        main.log({"i": 0})

        def work():
            mine = steplog.Tracker(steplog.JsonlBackend("runs"), experiment_name="worker")
            mine.init()
            for i in range(100):
                mine.log({"i": i})
            raise RuntimeError("worker crashed")

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "worker crashed" in result.stderr
    worker = only_run(tmp_path / "runs" / "worker")
    assert worker.status == "failed" and len(worker.records) == 100
    assert only_run(tmp_path / "runs" / "main").status == "unfinished"


def test_a_batch_that_lands_after_it_was_abandoned_is_counted_once(tmp_path):
    """finish(timeout) abandons a backend while a write is in flight; the write then
    succeeds after all (it shields itself from cancellation). Its events count as
    delivered, the rest as missing — never both (delivered + missing == logged)."""
    import anyio

    class Shielded(_Recorder):
        async def write(self, events: Sequence[Event]) -> None:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1.0)
            await super().write(events)

    backend = Shielded()
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), backend, batch_size=10)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    stats = tracker.finish(timeout=0.1)
    got = stats.backends["shielded"]
    assert got.delivered == backend.events > 0
    assert got.missing > 0 and got.delivered + got.missing == 100
