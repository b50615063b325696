"""Remote backends that heal: every remote backend follows the run file through its lane
(issue #23), so one that is down, or too slow, gets every event from the file once it
answers, in order and exactly once, with memory bounded and the loop never waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

import steplog
from steplog import Event

from conftest import run_steplog

FAST = steplog.RetryPolicy(
    retries=1, backoff=0.005, max_backoff=0.01, probe_backoff=0.05, max_probe_backoff=0.2
)


class Switchable(steplog.MemoryBackend):
    """A remote backend (a memory backend that is not local) that raises
    ConnectionError while ``down`` is set."""

    local = False

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.calls = 0
        self.refused = 0
        self.call_times: list[float] = []

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.call_times.append(time.monotonic())
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("server unreachable (injected)")
        await super().write(events)


def log_for(tracker: steplog.Tracker, seconds: float, until=None, step: int = 0) -> int:
    """Log steps from ``step`` for ``seconds`` and until ``until()`` holds (if given);
    returns the next step."""
    start = time.monotonic()
    while time.monotonic() - start < seconds or (until is not None and not until()):
        tracker.log({"i": step, "loss": 1.0 / (step + 1)}, step=step)
        step += 1
        if step % 200 == 0:
            time.sleep(0.001)  # a loop that does some work between steps
    return step


def test_an_outage_in_the_middle_is_caught_up_from_the_file_exactly_once(tmp_path):
    """Down for a stretch in the middle of a run: afterwards the backend holds every
    step once, in order; the stats say how many came from the file and when it was out."""
    remote = Switchable()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, remote, retry=FAST, batch_size=256)
    tracker.init()
    # Up until the backend has some events; down for >= 0.6 s and until a write was
    # refused; up again for 0.4 s (phases by what happened, not by the clock alone, so
    # a loaded machine cannot skip one).
    step = log_for(tracker, 0.3, until=lambda: remote.records)
    remote.down.set()
    step = log_for(tracker, 0.6, until=lambda: remote.refused, step=step)
    remote.down.clear()
    logged = log_for(tracker, 0.4, step=step)
    stats = tracker.finish()
    got = stats.backends["switchable"]
    assert [e.step for e in remote.records] == list(range(logged))
    assert [e.data["i"] for e in remote.records] == list(range(logged))
    assert got.delivered == logged and got.failed == got.missing == 0
    assert len(got.outages) >= 1 and all(end is not None for _, end in got.outages)
    assert len(steplog.read_run(jsonl.path).records) == logged
    # The run file records the outages too, for `steplog show`.
    recorded = steplog.read_run(jsonl.path).stats.backends["switchable"]
    assert recorded.outages == got.outages


def test_a_backend_still_down_at_the_end_is_behind_and_caught_up_by_a_sync(tmp_path):
    """Down from some point to the end: finish() waits shutdown_timeout for it, then
    returns with what it missed counted as missing (not failed: the file has it, and
    the cursor says where it stopped), the outage without an end; a later
    `steplog.sync` from that cursor delivers the rest, exactly once."""
    from steplog.sync import sync

    remote = Switchable()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, remote, retry=FAST, shutdown_timeout=0.5)
    tracker.init()
    step = log_for(tracker, 0.3, until=lambda: remote.records)
    remote.down.set()
    logged = log_for(tracker, 0.5, until=lambda: remote.refused, step=step)
    started = time.monotonic()
    stats = tracker.finish()
    assert time.monotonic() - started < 5
    got = stats.backends["switchable"]
    assert [e.step for e in remote.records] == list(range(len(remote.records)))
    assert got.delivered == len(remote.records) > 0
    assert got.missing == logged - got.delivered > 0 and got.failed == 0
    assert got.outages and got.outages[-1][1] is None
    remote.down.clear()
    result = sync(jsonl.path, remote)
    assert result.ended and result.status == "finished"
    assert [e.step for e in remote.records] == list(range(logged))


@pytest.mark.slow
def test_a_slow_backend_never_holds_the_loop_up_and_gets_everything(tmp_path):
    """A backend that takes nothing while the loop runs (the slowest there is), a small
    buffer, policy 'block': the loop logs all its events anyway (the writer never waits
    for that backend); the backend then gets every event, in order, from the file."""
    stalled = steplog.testing.GatedBackend()
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path), stalled, buffer_size=1024, batch_size=64
    )
    tracker.init()
    # Without the file, 'block' paces this loop to the backend: it would wait for the
    # gate for good. Opened after a minute, the test fails below instead of hanging.
    fallback = threading.Timer(60, stalled.gate.set)
    fallback.start()
    for i in range(50_000):
        tracker.log({"i": i})
    held = not stalled.gate.is_set() and not stalled.records
    stalled.gate.set()
    fallback.cancel()
    stats = tracker.finish()
    assert held  # the whole loop ran while the backend took nothing
    got = stats.backends["gated"]
    assert [e.data["i"] for e in stalled.records] == list(range(50_000))
    assert got.delivered == 50_000


def test_without_a_jsonl_backend_a_run_file_is_kept_anyway(tmp_path, monkeypatch):
    """A tracker given only a remote backend keeps a run file in the default run
    directory ($STEPLOG_ROOT), which the backend follows: down for a while, it misses
    nothing."""
    monkeypatch.setenv("STEPLOG_ROOT", str(tmp_path / "default"))
    remote = Switchable()
    tracker = steplog.Tracker(remote, retry=FAST, batch_size=32, flush_interval=0.01)
    info = tracker.init()
    remote.down.set()
    for i in range(300):
        tracker.log({"i": i})
    time.sleep(0.2)
    remote.down.clear()
    for i in range(300, 600):
        tracker.log({"i": i})
    stats = tracker.finish()
    got = stats.backends["switchable"]
    assert [e.data["i"] for e in remote.records] == list(range(600))
    assert (got.delivered, got.failed, got.missing) == (600, 0, 0)
    path = tmp_path / "default" / "default" / f"{info.run_id}.jsonl"
    assert len(steplog.read_run(path).records) == 600


def test_retry_after_is_honoured(tmp_path):
    """A server asking to wait 0.3 s (Retry-After) is not called again sooner."""

    class Busy(steplog.MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        async def write(self, events: Sequence[Event]) -> None:
            self.times.append(time.monotonic())
            if len(self.times) <= 3:
                error = steplog.MlflowError("HTTP 503")
                error.retry_after = 0.3
                raise error
            await super().write(events)

    busy = Busy()
    tracker = steplog.Tracker(busy, retry=steplog.RetryPolicy(retries=5, backoff=0.001))
    tracker.init()
    tracker.log({"i": 0})
    stats = tracker.finish()
    gaps = [b - a for a, b in zip(busy.times, busy.times[1:], strict=False)]
    assert len(busy.times) == 4 and min(gaps) >= 0.29, gaps
    assert stats.backends["busy"].delivered == 1


def test_steplog_show_reports_outages_and_catch_up(tmp_path):
    """`steplog show` prints, per backend, what came from the file and the outages."""

    remote = Switchable()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, remote, retry=FAST)
    tracker.init()
    remote.down.set()
    for i in range(500):
        tracker.log({"i": i})
    tracker.flush()
    time.sleep(0.2)
    remote.down.clear()
    stats = tracker.finish()
    assert stats.backends["switchable"].delivered == 500
    shown = run_steplog("show", str(jsonl.path))
    assert shown.returncode == 0, shown.stderr
    assert "switchable  500 delivered" in shown.stdout
    assert "1 outage: +" in shown.stdout


def test_flush_waits_for_a_slow_backend_to_catch_up_but_not_for_an_outage(tmp_path):
    """flush() still means 'written by every backend' for a backend that is only
    behind (it is caught up first); for one that is down it does not wait."""
    slow = steplog.testing.SlowBackend(0.01)
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), slow, buffer_size=256, batch_size=32)
    tracker.init()
    for i in range(5_000):
        tracker.log({"i": i})
    tracker.flush()
    assert len(slow.records) == 5_000  # all of it, most from the file
    tracker.finish()

    remote = Switchable()
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), remote, retry=FAST)
    tracker.init()
    remote.down.set()
    tracker.log({"i": 0})
    started = time.monotonic()
    tracker.flush()  # returns: the outage is not waited for
    assert time.monotonic() - started < 5
    remote.down.clear()
    assert tracker.finish().backends["switchable"].delivered == 1


def test_an_outage_that_starts_while_behind_loses_nothing(tmp_path):
    """Down from the start with a small buffer and a loop faster than the writer: the
    backend is first behind (its backlog full, later batches left in the file), then its
    first batch fails. The outage's gap must cover the failed batch, the queue and what
    was left in the file (it used to restart at the failed batch: 1 058 of 20 000)."""
    remote = Switchable()
    remote.down.set()
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path), remote, retry=FAST, batch_size=64, buffer_size=1024
    )
    tracker.init()
    for i in range(20_000):
        tracker.log({"i": i}, step=i)
        if i == 10_000:
            remote.down.clear()
    time.sleep(1.0)  # back: the probe and the catch-up happen before finish()
    stats = tracker.finish()
    got = stats.backends["switchable"]
    assert [e.step for e in remote.records] == list(range(20_000))
    assert got.delivered == 20_000 and got.failed == got.missing == 0
