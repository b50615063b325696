"""Interpreter exit: unfinished runs are drained and closed, and exit never hangs."""

from __future__ import annotations

import time

import pytest

import steplog

from conftest import run_script


def only_run(tmp_path):
    (path,) = (tmp_path / "runs").rglob("*.jsonl")
    return steplog.read_run(path)


def test_process_exiting_without_finish_records_unfinished_and_keeps_every_event(tmp_path):
    """A script that never calls finish(): atexit drains it, status 'unfinished', nothing lost."""
    result = run_script(
        """
        import steplog
        tracker = steplog.Tracker(experiment_name="exit")
        tracker.init({"a": 1})
        for i in range(50_000):
            tracker.log({"i": i, "loss": 1 / (i + 1)})
        print("loop done")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "was not finished" in result.stderr
    run = only_run(tmp_path)
    assert run.status == "unfinished"
    assert run.history["i"] == list(range(50_000))
    assert run.stats is not None and run.stats.logged == run.stats.written == 50_000


@pytest.mark.slow
def test_uncaught_exception_still_drains_the_run(tmp_path):
    """A script dying of an exception keeps its events and records 'unfinished'."""
    result = run_script(
        """
        import steplog
        tracker = steplog.Tracker()
        tracker.init()
        for i in range(1000):
            tracker.log({"i": i})
        raise SystemExit("optimizer crashed")
        """,
        tmp_path,
    )
    assert result.returncode == 1
    run = only_run(tmp_path)
    assert run.status == "unfinished"
    assert len(run.records) == 1000


@pytest.mark.slow
def test_async_tracker_left_unfinished_is_drained_at_exit(tmp_path):
    """An AsyncTracker whose event loop ended without finish() is still drained at exit."""
    result = run_script(
        """
        import asyncio, steplog
        tracker = steplog.AsyncTracker()
        async def main():
            await tracker.init()
            for i in range(2000):
                tracker.log({"i": i})
        asyncio.run(main())
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    assert run.status == "unfinished"
    assert run.history["i"] == list(range(2000))


@pytest.mark.slow
def test_exit_with_a_stalled_backend_is_bounded_by_shutdown_timeout(tmp_path):
    """A backend that never returns cannot hang exit: it is abandoned and reported."""
    started = time.monotonic()
    result = run_script(
        """
        import asyncio, steplog

        class Stuck(steplog.MemoryBackend):
            async def write(self, events):
                await asyncio.sleep(3600)

        tracker = steplog.Tracker(steplog.JsonlBackend("runs"), Stuck(), shutdown_timeout=0.5)
        tracker.init()
        for i in range(100):
            tracker.log({"i": i})
        """,
        tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30
    assert "undelivered events (stuck: 100 failed)" in result.stderr
    run = only_run(tmp_path)
    assert run.status == "unfinished"
    assert len(run.records) == 100
