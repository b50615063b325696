"""The lock-free fast path of ``log()`` (issue #26): nothing lost, duplicated or torn.

``Tracker.log`` appends to the buffer without its lock; ``LineBuffer``'s docstring
argues why that is safe with the GIL. These tests pin the argument's premise (no
signal handler, hence no thread switch, runs inside the region), the exact overflow
semantics against a reference model, and the whole path under threads and re-entrant
signal handlers, for every overflow policy with a tiny buffer.
"""

from __future__ import annotations

import contextlib
import dis
import itertools
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steplog
from steplog import _buffer
from steplog._buffer import LineBuffer
from steplog.tracker import _TrackerBase

POLICIES = ["block", "drop_oldest", "drop_newest"]
needs_timer = pytest.mark.skipif(
    not hasattr(signal, "setitimer") or not hasattr(signal, "pthread_sigmask"),
    reason="needs signal.setitimer and signal.pthread_sigmask (POSIX)",
)
needs_gil = pytest.mark.skipif(
    not _buffer.LOCK_FREE, reason="a build without the GIL takes the locked path"
)


@contextlib.contextmanager
def _alarms_to_this_thread_only() -> Iterator[None]:
    """Threads started inside (the writer, producers) block SIGALRM, so the timer's
    signals all reach this thread: one delivered late to another thread would be run,
    after the test restored the previous handler (pytest-timeout's), by that handler —
    a false "Timeout" failure."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})


@contextlib.contextmanager
def _alarm_every(interval: float, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Run ``handler`` on SIGALRM every ``interval`` seconds inside the block.

    On the way out no SIGALRM of this timer may reach the handler restored after it
    (pytest-timeout's, whose run is a false "Timeout" failure). A signal can still be
    on its way when the timer stops: pending in the kernel for a thread not yet
    scheduled (one started by an earlier test, e.g. tqdm's monitor, does not block
    it), or received, with its Python handler run later in this thread, at a check
    that 3.12 on makes at a function's start rather than after every C call. So a
    handler that does nothing takes over for a while (10 ms, time for the kernel to
    deliver what is pending), the check at the start of
    :func:`_run_received_signals` runs it for what was received, and only then is the
    previous handler put back. (Not SIG_IGN: CPython reports a signal received while a
    Python handler was set and run after SIG_IGN replaced it as an unraisable error,
    a failure under ``-W error``.)
    """
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, _late_alarm)
        time.sleep(0.01)
        _run_received_signals()
        signal.signal(signal.SIGALRM, previous)


def _late_alarm(signum: int, frame: Any) -> None:
    """A SIGALRM of a timer already stopped: nothing to do."""


def _run_received_signals() -> None:
    """Nothing: calling it runs the handlers of signals already received."""


def _region(code: object) -> tuple[int, int]:
    """Offsets of ``log()``'s lock-free region: the load of ``buffer.count`` for the
    limit check, and the return after the append. The append is an in-place
    concatenation (``buffer.data += line``: one ``BINARY_OP``, no call), so nothing in
    between checks for handlers; the next check is in the caller, after ``log()``
    returns."""
    instructions = list(dis.get_instructions(code))  # type: ignore[arg-type]
    append = next(i for i in instructions if i.opname == "STORE_ATTR" and i.argval == "data")
    start = min(
        i.offset for i in instructions if i.opname.startswith("LOAD_") and i.argval == "count"
    )
    end = min(
        i.offset
        for i in instructions
        if i.offset > append.offset and i.opname.startswith("RETURN_")
    )
    return start, end


@needs_timer
@needs_gil
@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython's eval loop")
def test_no_signal_handler_runs_inside_the_lock_free_region(monkeypatch):
    """A signal timer firing thousands of times during log() never runs its handler
    between the fast path's limit check and its return (the premise of the lock-free
    argument: CPython runs handlers, and switches threads, at the same points), while
    it does run at log()'s other calls; one that runs as the next log() starts finds
    the previous line appended."""
    # The writer takes nothing during the loop (no batch, no interval): a line logged
    # is at the end of buffer.data until the next log().
    tracker = steplog.Tracker(
        steplog.NullBackend(), buffer_size=2_000_000, batch_size=2_000_000, flush_interval=1e6
    )
    with _alarms_to_this_thread_only():
        tracker.init()
    code = steplog.Tracker._log_py.__code__
    monkeypatch.setattr(_TrackerBase, "log", _TrackerBase._log_py)
    start, end = _region(code)
    seen: Counter[int] = Counter()
    appended: list[bool] = []  # at the next log()'s start: was the last line appended?
    last = [b""]  # how the line log() wrote last ends

    def handler(signum: int, frame: object) -> None:
        if frame is None or frame.f_code is not code:  # type: ignore[attr-defined]
            return
        offset = frame.f_lasti  # type: ignore[attr-defined]
        seen[offset] += 1
        if offset == 0 and last[0]:
            appended.append(tracker._buffer.data.endswith(last[0]))  # type: ignore[union-attr]

    with _alarm_every(1e-5, handler):
        for i in range(300_000):
            tracker.log({"loss": 0.5, "i": i, "s": "abc"})
            last[0] = b'"data":{"loss":0.5,"i":%d,"s":"abc"}}\n' % i
            if len(appended) >= 1_000:
                break
    tracker.finish()
    assert sum(seen.values()) > 100, "the timer hardly ever fired inside log()"
    # (Python 3.10 also checks at a conditional jump when it is taken: there the check
    # failed and log() leaves the region for the locked path, so a handler is harmless.)
    leaving = {
        i.offset
        for i in dis.get_instructions(code)
        if "JUMP_IF" in i.opname and not start <= i.argval <= end
    }
    inside = {
        offset: n for offset, n in seen.items() if start <= offset <= end and offset not in leaving
    }
    assert not inside, f"handlers ran inside the region [{start}, {end}]: {inside}"
    assert all(appended)
    if sys.version_info >= (3, 11):  # (3.10 does not check at a function's start)
        assert appended


@needs_timer
@needs_gil
def test_signal_handlers_see_each_line_counted_and_appended_together(log_impl):
    """Wherever a signal handler runs while log() is called (either implementation:
    the compiled one runs no handler until it returns), outside the steps under the
    buffer's lock, the buffer's count and its lines agree: no handler ever sees a line
    counted and not appended, or the reverse."""
    tracker = steplog.Tracker(
        steplog.NullBackend(), buffer_size=2_000_000, batch_size=2_000_000, flush_interval=1e6
    )
    with _alarms_to_this_thread_only():
        tracker.init()
    buffer = tracker._buffer
    assert buffer is not None
    checked = [0, len(buffer.data), buffer.count]  # handler runs, bytes seen, count seen
    bad: list[tuple[int, int]] = []

    busy: list[int] = []  # handlers nest (at the checks after this one's calls): skip

    def handler(signum: int, frame: object) -> None:
        # Skipped while a step under the buffer's lock is under way (it closed the fast
        # path: limit 0): such a step (put_slow, every few thousand events here) may be
        # interrupted between its append and its count, by design (the lock and
        # LineBuffer._nested make a handler's own log() safe there).
        if busy or buffer.limit == 0:
            return
        busy.append(1)
        try:
            _, seen_bytes, seen_count = checked
            data, count = buffer.data, buffer.count
            lines = data.count(b"\n", seen_bytes)
            if lines != count - seen_count:
                bad.append((lines, count - seen_count))
            checked[:] = [checked[0] + 1, len(data), count]
        finally:
            busy.clear()

    with _alarm_every(1e-5, handler):
        for i in range(200_000):
            tracker.log({"loss": 0.5, "i": i, "s": "abc"})
            if checked[0] >= 2_000:
                break
    tracker.finish()
    assert checked[0] > 100, "the timer hardly ever fired"
    assert not bad, f"a handler saw lines and count disagree: {bad[:5]}"


class Model:
    """The overflow policies as documented, one event at a time (the reference)."""

    def __init__(self, capacity: int, budget: int, policy: str) -> None:
        self.capacity, self.budget, self.policy = capacity, budget, policy
        self.lines: list[bytes] = []
        self.dropped = 0

    def full(self, size: int) -> bool:
        queued = sum(map(len, self.lines))
        return len(self.lines) >= self.capacity or (
            size > 0 and queued > 0 and queued + size > self.budget
        )

    def put(self, line: bytes) -> None:
        if self.full(len(line)):
            if self.policy == "drop_newest":
                self.dropped += 1
                return
            while self.lines and self.full(len(line)):
                self.lines.pop(0)
                self.dropped += 1
        self.lines.append(line)

    def take(self) -> list[bytes]:
        lines, self.lines = self.lines, []
        return lines


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(["drop_oldest", "drop_newest"]),
    capacity=st.integers(1, 40),
    wake_at=st.integers(1, 40),
    budget=st.integers(1, 3_000),
    ops=st.lists(st.one_of(st.integers(0, 400), st.sampled_from(["take", "rearm"])), max_size=300),
)
def test_fast_path_keeps_the_exact_policy_semantics(policy, capacity, wake_at, budget, ops):
    """Whatever the sizes, limits and takes, the buffer (fast path included) keeps,
    drops and counts exactly what the documented policy does, line by line."""
    wakes = []
    buffer = LineBuffer(capacity, wake_at=wake_at, policy=policy, byte_budget=budget)
    buffer.connect(lambda: wakes.append(1), lambda: True)
    model = Model(capacity, budget, policy)
    seq = 0
    for op in ops:
        if op == "take":
            items, count = buffer.take()
            got = b"".join(items).splitlines(keepends=True)
            assert got == model.take()
            assert count == len(got)
        elif op == "rearm":
            buffer.rearm()
        else:
            line = b'{"i":%d,"p":"%s"}\n' % (seq, b"x" * op)
            seq += 1
            buffer.put(line)
            model.put(line)
            assert buffer.count == len(model.lines)
            assert buffer.dropped == model.dropped
    items, count = buffer.take()
    assert b"".join(items).splitlines(keepends=True) == model.take()


def _produce(tracker: steplog.Tracker, name: str, n: int) -> None:
    for i in range(n):
        tracker.log({"who": name, "i": i, "pad": "x" * (i % 7)})


@needs_timer
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("watched", [False, True], ids=["plain", "watched"])
def test_threads_and_reentrant_signal_handlers_lose_nothing(tmp_path, policy, watched, log_impl):
    """Three threads and a signal handler that logs re-entrantly (on the main thread,
    inside log() and the writer's takes) share a tiny buffer under each policy: every
    line in the file is whole and unique, each producer's lines keep their order,
    ``logged == written + dropped`` and the file has exactly ``written`` events; under
    ``block`` nothing is dropped."""
    watchers = [steplog.watch.above("i", 1e12)] if watched else []
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path),
        buffer_size=8,
        batch_size=3,
        buffer_bytes=600,
        overflow=policy,
        flush_interval=0.001,
        watchers=watchers,
    )
    with _alarms_to_this_thread_only():
        tracker.init()
    handled = itertools.count()  # next() is atomic: handlers may nest

    def handler(signum: int, frame: object) -> None:
        tracker.log({"who": "signal", "i": next(handled)})

    n = 4_000
    threads = [threading.Thread(target=_produce, args=(tracker, f"t{k}", n)) for k in range(3)]
    with _alarm_every(2e-4, handler):
        with _alarms_to_this_thread_only():
            for thread in threads:
                thread.start()
        _produce(tracker, "main", n)
        for thread in threads:
            thread.join()
    stats = tracker.finish()
    signals = next(handled)
    assert signals > 0
    logged = 4 * n + signals
    assert stats.logged == logged
    assert stats.written + stats.dropped == logged
    if policy == "block":
        assert stats.dropped == 0
    assert tracker.backends[0].path is not None
    lines = tracker.backends[0].path.read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines[1:-1]]  # every line parses: none torn
    steps = [e for e in events if "data" in e and "step" in e]
    assert len(steps) == stats.written
    keys = [(e["data"]["who"], e["data"]["i"]) for e in steps]
    assert len(set(keys)) == len(keys), "a line was written twice"
    for who in ["main", "t0", "t1", "t2"]:  # (handlers nest: theirs have no order)
        mine = [i for w, i in keys if w == who]
        assert mine == sorted(mine), f"{who}'s lines are out of order"
    if policy == "block":
        assert sorted(keys) == sorted(
            [(w, i) for w in ["main", "t0", "t1", "t2"] for i in range(n)]
            + [("signal", i) for i in range(signals)]
        )


def test_buffer_without_the_gil_takes_the_locked_path(monkeypatch):
    """Where the GIL is off (free-threaded builds), the lock-free path stays closed:
    every line goes through the lock, with the same results."""
    monkeypatch.setattr(_buffer, "LOCK_FREE", False)
    buffer = LineBuffer(5, wake_at=2, policy="drop_newest")
    wakes = []
    buffer.connect(lambda: wakes.append(1), lambda: True)
    assert buffer.limit == 0
    for i in range(8):
        buffer.put(b'{"i":%d}\n' % i)
        assert buffer.limit == 0
    items, count = buffer.take()
    assert count == 5 and buffer.dropped == 3
    assert b"".join(items).splitlines() == [b'{"i":%d}' % i for i in range(5)]
    assert len(wakes) == 1  # once per batch, as with the fast path
