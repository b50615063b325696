"""The delivery state machine, explored by hypothesis (``RuleBasedStateMachine``).

Two machines, driven through the seams the code offers, with time faked through
:class:`steplog._delivery.Delivery`'s ``clock``/``sleep``:

* :class:`LaneMachine`: a real run file (a Tracker with a JSONL backend logs into it), a
  :class:`~steplog._lane.Lane` with a durable cursor following it into a scripted remote
  backend that succeeds, fails transiently (after some batches), refuses the run, is
  slow, or dies between storing a batch and the lane saving its cursor (a crash of the
  delivery process); the lane is restarted from its cursor file; flushes wait on a
  :class:`~steplog._lanehost.LaneHost`. Invariants: every event reaches the backend in
  order, none lost, and none twice except the one batch a crash caught between the
  acknowledgement and the cursor; the cursor never passes an unacknowledged event; the
  retries of a batch follow the policy's schedule and stop at the deadline; a flush is
  answered only once every event before its offset is acknowledged (or the lane is down,
  has given up, or ended).
* :class:`BreakerMachine`: one :class:`~steplog._delivery.Delivery` with its circuit
  breaker (as the fan-out and replay use it): it opens after ``breaker_after`` batches
  given up in a row, lets nothing through while open, probes once its growing pause
  has passed, closes on a success, and never calls a backend that refused the run again.

The lane machine calls ``Lane.pump`` itself, as ``LaneHost``'s task would, and runs the
coroutines without an event loop (nothing in them waits but the fakes); the host's
pauses between probes of a lane that is down are real time and not modelled here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import steplog
from steplog._delivery import Delivery
from steplog._lane import Cursor, Lane
from steplog._lanehost import LaneHost
from steplog.errors import PermanentBackendError
from steplog.events import Event, RunEnd, RunInfo
from steplog.runfile.snapshot import open_run

pytestmark = pytest.mark.timeout(120)

MACHINE_SETTINGS = settings(
    max_examples=20,
    stateful_step_count=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

T = TypeVar("T")

#: The lane's policy: two retries per batch (0.5 s, then 1 s), no jitter.
LANE_POLICY = steplog.RetryPolicy(retries=2, backoff=0.5, max_backoff=1.0, jitter=0)
BATCH = 4  # points per write: a few writes per pump
SLOW_WRITE = 3.0  # seconds a slow backend takes per write


class Crash(BaseException):
    """The delivery process dies (after the backend stored a batch, before the cursor)."""


class FakeTime:
    """A monotonic clock that moves only when told to, or when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.deadline: float | None = None
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # Retries never sleep past the stop deadline.
        assert self.deadline is None or self.now + seconds < self.deadline
        self.slept.append(seconds)
        self.now += seconds


class ScriptedBackend(steplog.Backend):
    """A remote backend doing what the machine tells it; ``received`` is what it stored.

    Modes: ``ok``; ``flaky`` (the next ``good`` writes succeed, then every write fails
    with a transient error); ``refuse`` (PermanentBackendError); ``slow`` (each write
    takes SLOW_WRITE seconds, then succeeds); ``crash`` (stores the batch, then the
    process dies: :class:`Crash`).
    """

    name = "scripted"
    movable = False

    def __init__(self, time: FakeTime) -> None:
        self.time = time
        self.mode = "ok"
        self.good = 0
        self.received: list[int] = []
        self.calls = 0
        self.failed_batch: Sequence[Event] | None = None
        #: Writes that broke the retry contract (an assert here would count as a failure).
        self.not_retried: list[tuple[int, int]] = []
        self.ended: RunEnd | None = None

    async def open(self, run: RunInfo) -> None:
        self.failed_batch = None  # a new lane: its batches are new objects

    async def write(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.failed_batch is not None and events is not self.failed_batch:
            # The retry contract: a failed batch comes again, as the same object.
            self.not_retried.append((self.failed_batch[0].step, events[0].step))
        self.failed_batch = events
        if self.mode == "refuse":
            raise PermanentBackendError("400 INVALID_PARAMETER_VALUE")
        if self.mode == "flaky":
            if self.good <= 0:
                raise ConnectionError("connection refused")
            self.good -= 1
        if self.mode == "slow":
            self.time.now += SLOW_WRITE
        self.received += [event.step for event in events]
        self.failed_batch = None
        if self.mode == "crash":
            raise Crash

    async def close(self, end: RunEnd) -> None:
        self.ended = end


def _schedule(policy: steplog.RetryPolicy, now: float, deadline: float | None) -> list[float]:
    """The pauses between the attempts of a batch that keeps failing (no jitter)."""
    pauses = []
    for attempt in range(1, policy.retries + 1):
        pause = policy.delay(attempt)
        if deadline is not None and now + pause >= deadline:
            break
        pauses.append(pause)
        now += pause
    return pauses


class LaneMachine(RuleBasedStateMachine):
    """A lane following a real run file into a scripted backend (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="steplog-machine-"))
        jsonl = steplog.JsonlBackend(self.root)
        self.tracker = steplog.Tracker(jsonl, experiment_name="m", handle_sigterm=False)
        self.info = self.tracker.init()
        assert jsonl.path is not None
        self.path = Path(jsonl.path)
        self.cursor_file = self.path.with_name(self.path.name + ".sync-scripted.json")
        self.logged = 0  # steps 0 .. logged-1 are in the file
        self.finished = False
        self.time = FakeTime()
        self.backend = ScriptedBackend(self.time)
        #: Batches stored twice may only be the ones a crash caught (their sizes).
        self.crash_batches: list[int] = []
        self.flushes: list[tuple[int, list[bool]]] = []  # offset, [answered]
        self.lane: Lane
        self.host: LaneHost
        self._start_lane()

    def _start_lane(self) -> None:
        lane = Lane(
            self.path,
            self.backend,
            cursor=self.cursor_file,
            name="scripted",
            batch_size=BATCH,
            retry=LANE_POLICY,
            deadline=lambda: self.time.deadline,
        )
        lane.delivery.clock = self.time.clock
        lane.delivery.sleep = self.time.sleep
        assert lane.lock is not None and lane.lock.acquire()
        lane.prepare(self.info.run_id, open_run(self.path).body)
        lane.resend_last_step()
        _run(lane.open(self.info))
        self.lane = lane
        self.host = anyio.run(_in_loop, LaneHost, self.path, [lane])  # it makes anyio.Events
        for offset, answered in self.flushes:  # a new host takes the flushes still waiting
            if not answered[0]:
                anyio.run(_in_loop, self.host.add_flush, offset, self._answer(offset, answered))

    def teardown(self) -> None:
        try:
            if not self.finished:
                self.tracker.finish()
            if self.lane.lock is not None:
                self.lane.lock.release()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- rules ---------------------------------------------------------------------

    @initialize(n=st.integers(min_value=1, max_value=20))
    def log_first(self, n: int) -> None:
        """The run starts with a few steps in the file."""
        self.log(n)

    @precondition(lambda self: not self.finished)
    @rule(n=st.integers(min_value=1, max_value=9))
    def log(self, n: int) -> None:
        """The training loop logs ``n`` steps; flush() puts them in the file."""
        for _ in range(n):
            self.tracker.log({"loss": float(self.logged)})
            self.logged += 1
        self.tracker.flush()

    @precondition(lambda self: not self.finished and self.logged >= 20)
    @rule()
    def finish(self) -> None:
        """The run ends: its run end is the file's last record."""
        self.tracker.finish()
        self.finished = True

    @rule(
        seconds=st.sampled_from([0.1, 1.0, 10.0]),
        deadline=st.sampled_from(["keep", None, 0.2, 0.8, 5.0]),
    )
    def time_passes(self, seconds: float, deadline: str | float | None) -> None:
        """Time passes; the run's stop deadline may be set then (finish() with a
        timeout: ``seconds`` ahead), or lifted."""
        self.time.now += seconds
        if deadline != "keep":
            self.time.deadline = None if deadline is None else self.time.now + float(deadline)

    @rule()
    def flush(self) -> None:
        """A flush marker at the file's end, answered by the lane host."""
        offset = self.path.stat().st_size
        answered = [False]
        self.flushes.append((offset, answered))
        anyio.run(_in_loop, self.host.add_flush, offset, self._answer(offset, answered))

    @rule(
        mode=st.sampled_from(["ok", "flaky", "refuse", "slow", "crash"]),
        good=st.integers(min_value=0, max_value=3),
    )
    def pump(self, mode: str, good: int) -> None:
        """The lane delivers what the file holds (final once the run is over) into the
        backend, which behaves as ``mode`` says (see ScriptedBackend)."""
        lane, backend = self.lane, self.backend
        backend.mode, backend.good = mode, good
        received = len(backend.received)
        self.time.slept.clear()
        start = self.time.now
        assert lane.cursor is not None
        pending = self.logged - lane.cursor.events  # what the lane has to send
        skipped = lane.given_up is not None or lane.closed

        async def pump_or_crash() -> Any:
            try:
                return await lane.pump(final=self.finished)
            except Crash:
                return None
            finally:
                self.host._check_flushes()

        progress = _run(pump_or_crash())
        if progress is None:  # the process died after the backend stored a batch
            event("pump: crash")
            self.crash_batches.append(len(backend.received) - received)
            self._restart()
            return
        sent = len(backend.received) - received
        assert progress.sent == sent
        event(f"pump: {'skipped' if skipped else mode}, {'down' if progress.down else 'up'}")
        if skipped:
            assert sent == 0 and not self.time.slept
        elif mode == "refuse" and pending:
            assert lane.given_up is not None and progress.down
            assert not self.time.slept  # a refusal is not retried
        elif mode == "flaky" and pending > good * BATCH:
            assert progress.down and lane.down_since is not None
            # The failing batch was retried on the policy's schedule, then left for a probe.
            assert self.time.slept == _schedule(LANE_POLICY, start, self.time.deadline)
        elif mode in ("ok", "slow") or pending == 0:
            assert not progress.down and lane.down_since is None
            assert sent == pending
            assert lane.caught_up()
            assert len(self._acknowledged()) == self.logged  # nothing lost
            assert all(answered[0] for _, answered in self.flushes)
            if self.finished:
                assert progress.ended and backend.ended is not None
                assert backend.ended.status == "finished"

    @precondition(lambda self: not self.lane.closed)
    @rule()
    def restart(self) -> None:
        """The lane's process goes away and a new lane goes on from the cursor file."""
        self._restart()

    def _restart(self) -> None:
        assert self.lane.lock is not None
        self.lane.lock.release()
        self._start_lane()

    # -- invariants ----------------------------------------------------------------

    def _acknowledged(self) -> list[int]:
        """What the backend stored, each event once (first time)."""
        seen: set[int] = set()
        return [s for s in self.backend.received if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]

    @invariant()
    def a_failed_batch_is_sent_again_as_the_same_object(self) -> None:
        assert self.backend.not_retried == []

    @invariant()
    def events_arrive_in_order_none_lost_none_twice_past_the_cursor(self) -> None:
        acknowledged = self._acknowledged()
        assert acknowledged == list(range(len(acknowledged)))
        duplicates = len(self.backend.received) - len(acknowledged)
        assert duplicates <= sum(self.crash_batches)

    @invariant()
    def the_cursor_never_passes_an_unacknowledged_event(self) -> None:
        cursor = Cursor.read(self.cursor_file)
        if cursor is None:
            return
        acknowledged = len(self._acknowledged())
        assert cursor.events <= acknowledged
        starts = _step_line_starts(self.path)
        if acknowledged < len(starts):
            assert cursor.offset <= starts[acknowledged]

    def _answer(self, offset: int, answered: list[bool]) -> Any:
        """The flush's ``done``: checks, when it is called, that every event before
        ``offset`` is acknowledged, or the lane is down, has given up, or ended."""

        def done() -> None:
            lane = self.lane
            answered[0] = True
            if lane.down_since is not None or lane.given_up is not None or lane.closed:
                return
            before = sum(1 for start in _step_line_starts(self.path) if start < offset)
            assert len(self._acknowledged()) >= before

        return done


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of the delivery code to its end without an event loop: with time
    faked (``sleep`` returns at once) and a backend that answers at once, it never
    suspends: the delivery logic is plain code over its I/O."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the delivery code waited on something other than the fakes")


async def _in_loop(function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` in an event loop (what needs one to make its anyio.Events)."""
    return function(*args)


def _step_line_starts(path: Path) -> list[int]:
    """Where each step record of the run file starts."""
    starts, offset = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b'{"step"'):
            starts.append(offset)
        offset += len(line)
    return starts


class BreakerMachine(RuleBasedStateMachine):
    """One Delivery and its circuit breaker against a scripted backend."""

    POLICY = steplog.RetryPolicy(
        retries=1,
        backoff=0.1,
        breaker_after=2,
        probe_backoff=1.0,
        max_probe_backoff=4.0,
        jitter=0,
    )

    def __init__(self) -> None:
        super().__init__()
        self.time = FakeTime()
        self.backend = ScriptedBackend(self.time)
        self.delivery = Delivery(
            self.backend,
            "scripted",
            retry=self.POLICY,
            deadline=lambda: None,
            clock=self.time.clock,
            sleep=self.time.sleep,
        )
        self.sent = 0
        # The model.
        self.in_a_row = 0
        self.trips = 0
        self.reopen_at: float | None = None  # the breaker is open until then
        self.refused = False

    @rule(mode=st.sampled_from(["ok", "flaky", "refuse", "slow"]))
    def backend_becomes(self, mode: str) -> None:
        self.backend.mode = mode
        self.backend.good = 0

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.time.now += seconds

    @rule(n=st.integers(min_value=1, max_value=5))
    def send(self, n: int) -> None:
        batch = [Event(self.sent + i, 0.0, {"x": 1}) for i in range(n)]
        self.sent += n
        calls = self.backend.calls
        self.time.slept.clear()
        failed = self.delivery.failed
        ok = _run(self.delivery.send(batch))
        self.backend.failed_batch = None  # sent or given up: the next batch is new
        attempts = self.backend.calls - calls
        if self.refused or (self.reopen_at is not None and self.time.now < self.reopen_at):
            # The breaker is open (for good after a refusal): the backend is not called.
            assert attempts == 0 and not ok
            assert self.delivery.failed == failed + n
            return
        mode = self.backend.mode
        if mode in ("ok", "slow"):
            assert ok and attempts == 1
            self.in_a_row, self.reopen_at = 0, None  # a probe got through: it closes
            assert not self.delivery.disabled
            return
        assert not ok
        if mode == "refuse":
            assert attempts == 1 and not self.time.slept
            self.refused = True
        else:
            assert attempts == 1 + self.POLICY.retries
            assert self.time.slept == [self.POLICY.delay(a) for a in range(1, attempts)]
            self.in_a_row += 1
            if self.in_a_row >= self.POLICY.breaker_after:
                pause = min(self.POLICY.probe_backoff * 2**self.trips, 4.0)
                self.reopen_at = self.time.now + pause
                self.trips += 1
        assert self.delivery.disabled == (self.refused or self.reopen_at is not None)

    @invariant()
    def every_event_is_counted_once(self) -> None:
        assert self.backend.not_retried == []
        assert self.delivery.delivered + self.delivery.failed == self.sent
        assert self.delivery.delivered == len(self.backend.received)


TestLaneMachine = LaneMachine.TestCase
TestLaneMachine.settings = settings(MACHINE_SETTINGS, max_examples=100, stateful_step_count=30)
TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(MACHINE_SETTINGS, max_examples=150, stateful_step_count=30)


def test_a_refused_backend_is_never_probed_even_after_failed_batches():
    """The case BreakerMachine found: batches given up before a refusal (a 4xx) must
    not turn the refusal into an ordinary breaker trip that is probed after a pause;
    the backend is not called again in this run."""
    time = FakeTime()
    backend = ScriptedBackend(time)
    policy = steplog.RetryPolicy(retries=0, breaker_after=2, jitter=0)
    delivery = Delivery(
        backend, "scripted", retry=policy, deadline=lambda: None, clock=time.clock, sleep=time.sleep
    )
    backend.mode = "flaky"
    assert not _run(delivery.send([Event(0, 0.0, {})]))
    backend.mode, backend.failed_batch = "refuse", None
    assert not _run(delivery.send([Event(1, 0.0, {})]))
    calls = backend.calls
    time.now += 3600.0
    backend.mode = "ok"
    assert not _run(delivery.send([Event(2, 0.0, {})]))
    assert backend.calls == calls and delivery.disabled
