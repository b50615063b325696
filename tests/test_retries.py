"""Backend faults: transient errors are retried in order; a dead remote backend's lane
waits for it (the file is its backlog); a refusing one is stopped at once."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

import steplog
from steplog import Event

from conftest import FailingBackend, GateBackend, SlowBackend

FAST = steplog.RetryPolicy(retries=3, backoff=0.001, breaker_after=3)


class FlakyBackend(steplog.MemoryBackend):
    """Fails the first ``failures`` attempts of every batch, then succeeds."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0
        self._failed_this_batch = 0

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self._failed_this_batch < self.failures:
            self._failed_this_batch += 1
            raise ConnectionResetError("flaky: injected transient fault")
        self._failed_this_batch = 0
        await super().write(events)


class RejectingBackend(FailingBackend):
    """Fails every write with an error retrying cannot fix."""

    async def write(self, events: Sequence[Event]) -> None:
        self.attempts += 1
        raise steplog.PermanentBackendError("400 Bad Request: injected")


def test_transient_errors_are_retried_without_reordering_or_duplicates():
    """Each batch fails twice then succeeds: every event arrives once, in order."""
    flaky = FlakyBackend(failures=2)
    tracker = steplog.Tracker(flaky, batch_size=10, retry=FAST)
    tracker.init()
    for i in range(200):
        tracker.log({"i": i})
    stats = tracker.finish()
    assert [e.data["i"] for e in flaky.records] == list(range(200))
    backend = stats.backends["flaky"]
    assert (backend.delivered, backend.failed, backend.dropped) == (200, 0, 0)
    assert backend.errors == flaky.calls - stats.batches  # every failed call is counted
    assert not backend.disabled


def test_a_dead_backend_is_probed_with_backoff_and_the_others_keep_everything():
    """A dead remote backend is retried, then its lane waits and probes with a growing
    pause (no call per batch); the others get every event; at the end its events are
    missing, not lost (the run file has them)."""
    dead = FailingBackend()
    mem = steplog.MemoryBackend()
    retry = steplog.RetryPolicy(retries=3, backoff=0.001, probe_backoff=0.05)
    tracker = steplog.Tracker(dead, mem, batch_size=10, retry=retry, shutdown_timeout=0.5)
    tracker.init()
    for i in range(500):
        tracker.log({"i": i})  # never raises
    time.sleep(0.3)
    stats = tracker.finish()
    assert [e.data["i"] for e in mem.records] == list(range(500))
    failed = stats.backends["failing"]
    assert not failed.disabled
    assert (failed.delivered, failed.failed, failed.missing) == (0, 0, 500)
    # A few probes of 1 + retries calls each over ~1 s, not one per batch (50 batches).
    assert dead.attempts < 10 * (retry.retries + 1)
    assert len(failed.outages) == 1
    assert dead.closed == 1


def test_permanent_backend_error_stops_the_backend_at_once():
    """PermanentBackendError (a 4xx) is not retried, and the backend gets nothing more:
    one call in all, its message kept (issue #15)."""
    rejecting = RejectingBackend()
    tracker = steplog.Tracker(rejecting, batch_size=10, retry=FAST)
    tracker.init()
    for batch in range(2):
        for i in range(10):
            tracker.log({"i": batch * 10 + i})
        tracker.flush()  # one batch per flush
    assert rejecting.attempts == 1
    stats = tracker.finish()
    got = stats.backends["rejecting"]
    assert got.failed == 20 and got.disabled
    assert "400 Bad Request: injected" in (got.last_error or "")


def test_strict_finish_raises_after_closing_everything(runs_root):
    """strict=True: finish() raises BackendFailedError naming the backend; runs are closed."""
    jsonl = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(
        jsonl, FailingBackend(), retry=FAST, strict=True, shutdown_timeout=0.2
    )
    tracker.init()
    tracker.log({"i": 1})
    match = "failing: 0 events failed, 1 not delivered"
    with pytest.raises(steplog.BackendFailedError, match=match) as excinfo:
        tracker.finish()
    assert excinfo.value.stats.backends["jsonl"].delivered == 1
    assert steplog.read_run(jsonl.path).status == "finished"
    assert not tracker.active


def test_strict_finish_returns_normally_when_nothing_was_lost():
    """strict=True does not raise for a clean run."""
    tracker = steplog.Tracker(steplog.MemoryBackend(), strict=True)
    tracker.init()
    tracker.log({"i": 1})
    assert tracker.finish().written == 1


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest"])
def test_accounting_invariant_holds_for_every_backend_under_faults(policy):
    """For each backend: logged == delivered + failed + dropped + missing, under every
    policy (remote backends' missing events are in the run file)."""
    dead = FailingBackend()
    flaky = FlakyBackend(failures=1)
    gate = GateBackend()
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(
        dead,
        flaky,
        gate,
        mem,
        buffer_size=64,
        batch_size=8,
        overflow=policy,
        retry=FAST,
        shutdown_timeout=0.3,
    )
    tracker.init()
    for i in range(3_000 if policy != "block" else 40):
        tracker.log({"i": i})
    gate.gate.set()
    stats = tracker.finish()
    for name, backend in stats.backends.items():
        total = backend.delivered + backend.failed + backend.dropped + backend.missing
        assert total == stats.logged, name
    assert stats.logged == stats.written + stats.dropped


@pytest.mark.slow
def test_a_100ms_per_write_backend_does_not_hold_up_the_loop_or_the_others():
    """A slow remote backend (100 ms a write) under drop_oldest: the loop never waits
    for it, the others get every event handed out, and the slow one sheds nothing: its
    lane reads the run file and sends it everything written, in order, by the end."""
    slow = SlowBackend(0.1)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(slow, mem, buffer_size=64, batch_size=16, overflow="drop_oldest")
    tracker.init()
    started = time.monotonic()
    for i in range(2_000):
        tracker.log({"i": i})  # never blocks under drop_oldest
        if i % 16 == 15:
            time.sleep(0.001)  # a loop doing work: the writer keeps up, the slow backend not
    logging = time.monotonic() - started
    stats = tracker.finish()
    m, s = stats.backends["memory"], stats.backends["slow"]
    assert m.delivered == stats.written == stats.logged - stats.dropped
    assert len(mem.records) == m.delivered
    assert (s.delivered, s.failed, s.missing) == (stats.written, 0, 0)
    assert [e.data["i"] for e in slow.records] == [e.data["i"] for e in mem.records]
    assert logging < 2_000 / 64 * 0.1  # far less than one slow write per batch
