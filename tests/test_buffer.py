"""Overflow policies and wake-up behaviour of the bounded buffer."""

from __future__ import annotations

import threading

import pytest

import steplog
from steplog._buffer import LineBuffer

from conftest import GateBackend, SlowBackend, wait_until


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drop_policies_account_exactly_with_a_stalled_backend(policy):
    """With a stalled backend, drops are counted exactly: logged == written + dropped."""
    gate = GateBackend()
    tracker = steplog.Tracker(gate, buffer_size=100, batch_size=10, overflow=policy)
    tracker.init()
    for i in range(5_000):
        tracker.log({"i": i})
    gate.gate.set()
    stats = tracker.finish()
    assert stats.logged == 5_000
    assert stats.dropped > 0
    assert stats.written + stats.dropped == stats.logged
    backend = stats.backends["gated"]
    assert backend.delivered + backend.failed + backend.dropped == stats.logged
    assert len(gate.records) == backend.delivered
    steps = [e.step for e in gate.records]
    assert steps == sorted(steps)  # order kept, gaps only where drops happened
    if policy == "drop_oldest":
        assert steps[-1] == 4_999  # the newest event survives
    else:
        assert steps[0] == 0  # the oldest events survive


def start_producer(
    tracker: steplog.Tracker, count: int
) -> tuple[threading.Thread, threading.Event]:
    """Log ``count`` events from a new thread; the event is set once all were logged."""
    done = threading.Event()

    def produce() -> None:
        for i in range(count):
            tracker.log({"i": i})
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    return thread, done


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drop_policies_never_block_the_caller(policy):
    """drop_* policies return at once even while the backend is stalled."""
    gate = GateBackend()
    tracker = steplog.Tracker(gate, buffer_size=10, batch_size=5, overflow=policy)
    tracker.init()
    thread, done = start_producer(tracker, 20_000)
    assert done.wait(10), "log() blocked under a drop policy"
    gate.gate.set()
    thread.join()
    stats = tracker.finish()
    assert stats.written + stats.dropped == stats.logged == 20_000


def test_block_policy_is_lossless_with_a_slow_backend():
    """With 'block', a slow backend slows the producer down but nothing is lost."""
    slow = SlowBackend(0.002)
    tracker = steplog.Tracker(slow, buffer_size=64, batch_size=16, overflow="block")
    tracker.init()
    for i in range(3_000):
        tracker.log({"i": i})
    stats = tracker.finish()
    assert stats.dropped == 0
    assert stats.logged == stats.written == 3_000
    assert [e.data["i"] for e in slow.records] == list(range(3_000))
    assert stats.max_buffer_depth <= 64


def test_block_policy_blocks_until_the_backend_makes_progress():
    """A producer on a full 'block' buffer waits, and resumes once the writer drains
    (here held up by a stalled in-process sink; a remote backend never holds the
    writer up: its lane reads the run file)."""
    gate = LocalGate()
    tracker = steplog.Tracker(gate, buffer_size=8, batch_size=4, overflow="block")
    tracker.init()
    thread, done = start_producer(tracker, 200)
    assert not done.wait(0.3), "the producer should be blocked by the stalled backend"
    gate.gate.set()
    assert done.wait(10)
    thread.join()
    stats = tracker.finish()
    assert stats.dropped == 0
    assert [e.data["i"] for e in gate.records] == list(range(200))


class LocalGate(GateBackend):
    """A stalled in-process sink: the writer feeds it itself (``local``)."""

    local = True


def put(buffer: LineBuffer, line: bytes) -> None:
    """What Tracker.log does with an encoded line."""
    buffer.put(line)


def test_worker_is_woken_at_most_once_per_batch():
    """Producers wake the writer once per batch_size events, not once per event."""
    wakes = []
    buffer = LineBuffer(1_000_000, wake_at=100, policy="block")
    buffer.connect(lambda: wakes.append(1), lambda: True)
    for _ in range(10_000):
        put(buffer, b"{}\n")
    assert len(wakes) == 1  # disarmed until the writer drains
    for _ in range(5):
        buffer.rearm()
        buffer.take()
        for _ in range(150):
            put(buffer, b"{}\n")
    assert len(wakes) == 6


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_byte_budget_bounds_the_buffer_and_drops_whole_lines(policy):
    """Long lines hit the byte budget before the count; drops remove whole lines."""
    buffer = LineBuffer(1_000, wake_at=10, policy=policy, byte_budget=10_000)
    lines = [b'{"i":%d,"pad":"%s"}\n' % (i, b"x" * 980) for i in range(50)]
    for line in lines:
        put(buffer, line)
    items, count = buffer.take()
    data = b"".join(items)
    assert len(data) <= 10_000
    kept = data.splitlines(keepends=True)
    assert count == len(kept) == 50 - buffer.dropped
    assert all(line in lines for line in kept)  # never a torn line
    expected = lines[-count:] if policy == "drop_oldest" else lines[:count]
    assert kept == expected


def test_block_policy_waits_for_room_in_the_byte_budget():
    """Under 'block', a producer over the byte budget waits until the writer takes."""
    buffer = LineBuffer(1_000, wake_at=1_000, policy="block", byte_budget=4_000)
    line = b"x" * 999 + b"\n"
    for _ in range(4):
        put(buffer, line)
    done = threading.Event()
    producer = threading.Thread(target=lambda: (put(buffer, line), done.set()))
    producer.start()
    assert not done.wait(0.2), "the fifth line must wait for room"
    _, count = buffer.take()
    assert count == 4
    assert done.wait(5)
    producer.join()
    assert buffer.take()[1] == 1


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest"])
def test_an_ended_buffer_turns_every_producer_away_the_waiting_one_too(policy):
    """Once the writer ends the buffer (the run is ending; its last take comes next), a
    producer waiting for room and every later put raise InactiveRunError: nothing is
    queued or counted after the last take, so it holds every event counted."""
    buffer = LineBuffer(2, wake_at=2, policy=policy)
    put(buffer, b"1\n")
    put(buffer, b"2\n")
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def waiting() -> None:
        try:
            put(buffer, b"3\n")
        except steplog.InactiveRunError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)
        done.set()

    if policy == "block":
        producer = threading.Thread(target=waiting)
        producer.start()
        assert not done.wait(0.2), "the third line must wait for room"
        buffer.end()
        assert done.wait(5)
        producer.join()
        assert len(outcome) == 1 and isinstance(outcome[0], steplog.InactiveRunError)
    else:
        buffer.end()
    with pytest.raises(steplog.InactiveRunError, match="not recorded"):
        put(buffer, b"4\n")
    with pytest.raises(steplog.InactiveRunError):
        buffer.put_row((5, 0.0, {"x": 5}))
    items, count = buffer.take()
    assert (b"".join(items), count, buffer.dropped) == (b"1\n2\n", 2, 0)


def test_a_line_longer_than_the_budget_still_fits_an_empty_buffer():
    """One line larger than the whole byte budget is queued, not dropped or blocked."""
    buffer = LineBuffer(10, wake_at=10, policy="drop_newest", byte_budget=1_000)
    put(buffer, b"y" * 5_000 + b"\n")
    assert buffer.take()[1] == 1
    assert buffer.dropped == 0


def test_events_wait_at_most_about_flush_interval_before_reaching_backends():
    """A single event (far below batch_size) reaches the backend within ~flush_interval."""
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(mem, flush_interval=0.05)
    tracker.init()
    tracker.log({"x": 1})
    assert wait_until(lambda: len(mem.records) == 1, timeout=2.0)
    tracker.finish()
