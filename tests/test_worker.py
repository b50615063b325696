"""Per-backend isolation: a slow or failing backend never stalls or loses data for others
(remote backends follow the run file through their lanes; local ones are fed in turn)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import steplog

from conftest import FailingBackend, GateBackend, stall_mid_drain, wait_until


def test_failing_backend_does_not_affect_the_others(caplog):
    """A backend raising on every write: the others get every event, errors are counted."""
    failing = FailingBackend()
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(failing, mem, batch_size=50, shutdown_timeout=0.3)
    tracker.init()
    with caplog.at_level(logging.WARNING, logger="steplog"):
        for i in range(1_000):
            tracker.log({"i": i})  # never raises
        stats = tracker.finish()
    assert [e.data["i"] for e in mem.records] == list(range(1_000))
    assert stats.backends["memory"].delivered == 1_000
    bad = stats.backends["failing"]
    assert bad.delivered == 0
    # Down to the end: behind, not lost (the run file has every event).
    assert (bad.failed, bad.missing) == (0, 1_000)
    assert bad.outages and bad.outages[-1][1] is None
    assert bad.errors == failing.attempts >= 1
    assert "injected write fault" in (bad.last_error or "")
    assert stats.backend_errors == bad.errors
    assert failing.closed == 1
    messages = [r.getMessage() for r in caplog.records if "failed to write" in r.getMessage()]
    assert 1 <= len(messages) <= 4  # logged at 1, 10, 100, … failures, not per batch


def test_stalled_backend_does_not_delay_the_others():
    """While one backend is stuck, another receives events within the flush interval."""
    gate = GateBackend()
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(gate, mem, flush_interval=0.02)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    assert wait_until(lambda: len(mem.records) == 100, timeout=2.0)
    assert gate.records == []
    gate.gate.set()
    stats = tracker.finish()
    assert len(gate.records) == 100
    assert stats.backends["gated"].delivered == 100


def test_open_failure_raises_at_init_and_closes_opened_backends():
    """A backend failing to open makes init() raise BackendOpenError; nothing stays running."""
    ok = FailingBackend()
    bad = FailingBackend(fail_open=True)
    tracker = steplog.Tracker(ok, bad)
    before = set(threading.enumerate())
    with pytest.raises(steplog.BackendOpenError, match="injected fault") as excinfo:
        tracker.init()
    assert isinstance(excinfo.value.__cause__, OSError)
    assert ok.closed == 1  # the backend that did open was closed again
    assert not tracker.active
    new_workers = [
        t for t in threading.enumerate() if t not in before and t.name.startswith("steplog-worker")
    ]
    assert new_workers == []
    with pytest.raises(steplog.InactiveRunError):
        tracker.log({"x": 1})


def test_close_failure_is_counted_not_raised():
    """A backend raising in close() is counted; finish() still returns stats."""
    failing = FailingBackend(fail_close=True, fail_first=0)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, failing)
    tracker.init()
    tracker.log({"a": 1})
    stats = tracker.finish()
    assert mem.status == "finished"
    assert "close" in (stats.backends["failing"].last_error or "")


def test_finish_with_timeout_abandons_a_stalled_backend_and_counts_its_events():
    """finish(timeout=...) returns even if a backend never finishes; its events count as
    missing (its lane's cursor says where the next one goes on)."""
    gate = GateBackend()
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(gate, mem)
    tracker.init()
    for i in range(10):
        tracker.log({"i": i})
    stats = tracker.finish(timeout=0.2)
    assert stats.backends["memory"].delivered == 10
    g = stats.backends["gated"]
    assert (g.delivered, g.failed, g.missing) == (0, 0, 10)
    gate.gate.set()


def test_finish_with_timeout_returns_when_a_stalled_backend_holds_up_the_block_policy():
    """Under "block", a stalled remote backend never holds the writer up (its lane reads
    the file) and cannot hang finish(timeout): the others get every event, its events
    are counted as missing, and the accounting stays exact."""
    gate = GateBackend()
    tracker, mem = stall_mid_drain(gate)
    started = time.monotonic()
    stats = tracker.finish(timeout=0.3)
    assert time.monotonic() - started < 5
    assert [e.data["i"] for e in mem.records] == list(range(10))
    g = stats.backends["gated"]
    assert (g.delivered, g.failed, g.dropped, g.missing) == (0, 0, 0, 10)
    assert stats.backends["memory"].delivered == 10
    gate.gate.set()
