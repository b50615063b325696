"""Test helpers for code that uses steplog, and the contract suite for backends.

Backends with injected faults, for testing what your program does when tracking
misbehaves::

    from steplog.testing import FailingBackend, GatedBackend, SlowBackend

And the contract every steplog backend keeps, for a backend written outside steplog
(run under pytest; ``tmp_path`` is pytest's fixture)::

    from steplog.testing import BackendContract

    class TestMyBackend(BackendContract):
        def make_backend(self, tmp_path):
            return MyBackend(tmp_path / "out")

        def read_steps(self, backend):  # optional: enables the exactly-once check
            return [point.step for point in backend.stored_points()]

Each scenario runs a real :class:`steplog.Tracker`: mixed values (NaN, ±inf, big ints,
strings, bools, nested mappings, lists, ``None``) and odd keys, two runs and an empty
one on the same instance, a failed run, and a large batch. Every event must be
delivered and no backend call may fail. Retries (``Backend.write``: the same batch
object again after a failure) need a fault inside the backend: test them in its own
tests, e.g. with a transport that fails once part-way. Outside pytest,
:func:`check_backend` runs the same scenarios.
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from .backends.base import Backend, backend_name
from .backends.memory import MemoryBackend
from .events import Event, RunEnd, RunInfo, RunStats
from .tracker import Tracker

__all__ = [
    "CONTRACT_VALUES",
    "BackendContract",
    "FailingBackend",
    "GatedBackend",
    "SlowBackend",
    "check_backend",
]


class SlowBackend(MemoryBackend):
    """A memory backend whose every write takes ``delay`` seconds (without blocking
    the event loop): a slow remote backend (its lane follows the run file)."""

    local = False
    movable = False  # its state is read back in this process

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.writes = 0

    async def write(self, events: Sequence[Event]) -> None:
        await anyio.sleep(self.delay)
        self.writes += 1
        await super().write(events)


class FailingBackend(Backend):
    """Raises on every write (and on open or close when asked): a dead backend.

    ``fail_first=n`` fails only the first ``n`` write calls and then stores events like
    a memory backend (``events``): a transient fault that a retry overcomes.
    """

    movable = False  # its counters are read back in this process

    def __init__(
        self, *, fail_open: bool = False, fail_close: bool = False, fail_first: int | None = None
    ) -> None:
        self.fail_open = fail_open
        self.fail_close = fail_close
        self.fail_first = fail_first
        self.opened = 0
        self.closed = 0
        self.attempts = 0
        self.events: list[Event] = []

    async def open(self, run: RunInfo) -> None:
        self.opened += 1
        if self.fail_open:
            raise OSError("cannot open: injected fault")

    async def write(self, events: Sequence[Event]) -> None:
        self.attempts += 1
        if self.fail_first is None or self.attempts <= self.fail_first:
            raise ConnectionError("injected write fault")
        self.events.extend(events)

    async def close(self, end: RunEnd) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError("cannot close: injected fault")


class GatedBackend(MemoryBackend):
    """A memory backend whose writes wait until :attr:`gate` is set: a stalled remote
    backend (its lane follows the run file)."""

    local = False
    movable = False  # its state is read back in this process

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def write(self, events: Sequence[Event]) -> None:
        while not self.gate.is_set():
            await anyio.sleep(0.005)
        await super().write(events)


#: The mixed values the contract logs, in turn.
CONTRACT_VALUES: list[dict[str, Any]] = [
    {"loss": 0.5, "n": 3, "s": "text", "ok": True},
    {"loss": math.nan, "big": 2**70, "neg": -(2**63)},
    {"loss": math.inf, "m": -math.inf, "nested": {"a": 1.0, "b": {"c": "deep"}}},
    {"list": [1, 2.5, "x"], "none": None, "empty": {}, "tuple": (1, 2)},
    {"loss/train": 1.0, "λ": 2.0, "with space": 3.0, "a.b": 4.0},
]


def _delivered(stats: RunStats, name: str, count: int) -> None:
    got = stats.backends[name]
    assert got.errors == 0, f"backend {name!r} failed: {got.last_error}"
    assert (got.delivered, got.failed, got.dropped) == (count, 0, 0), (
        f"backend {name!r}: delivered {got.delivered}, failed {got.failed}, "
        f"dropped {got.dropped} of {count} events"
    )


class BackendContract:
    """The scenarios every backend passes; subclass it in a pytest test module.

    Override :meth:`make_backend`; override :meth:`read_steps` to have the large-batch
    scenario check that every step was stored exactly once, in order.
    """

    def make_backend(self, tmp_path: Path) -> Backend:
        """A fresh backend instance whose files (if any) go under ``tmp_path``."""
        raise NotImplementedError("override make_backend(self, tmp_path)")

    def read_steps(self, backend: Backend) -> list[int] | None:
        """The steps ``backend`` stored, in order, or ``None`` if it cannot tell."""
        return None

    def test_mixed_values_and_odd_keys(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        tracker = Tracker(backend, experiment_name="contract")
        tracker.init({"lr": 0.1, "nested": {"x": [1, 2]}, "none": None, "inf": math.inf})
        for i in range(200):
            tracker.log(CONTRACT_VALUES[i % len(CONTRACT_VALUES)])
        stats = tracker.finish({"best": 0.5, "text": "done", "nan": math.nan})
        _delivered(_finished(stats), backend_name(backend), 200)

    def test_two_runs_and_an_empty_one(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        tracker = Tracker(backend, experiment_name="contract")
        for run in range(2):
            tracker.init({"run": run})
            for i in range(50):
                tracker.log({"loss": float(i), "run": run})
            _delivered(_finished(tracker.finish()), backend_name(backend), 50)
        tracker.init()
        _delivered(_finished(tracker.finish()), backend_name(backend), 0)

    def test_a_failed_run_closes_cleanly(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        tracker = Tracker(backend, experiment_name="contract")
        try:
            with tracker.run():
                tracker.log({"loss": 1.0})
                raise _Blowup("optimizer blew up")
        except _Blowup:
            pass
        assert tracker.last_stats is not None
        _delivered(tracker.last_stats, backend_name(backend), 1)

    def test_a_large_batch(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path)
        tracker = Tracker(backend, experiment_name="contract", batch_size=4096)
        tracker.init()
        for i in range(5000):
            tracker.log({"loss": 1.0 / (i + 1), "step_value": i})
        _delivered(_finished(tracker.finish()), backend_name(backend), 5000)
        steps = self.read_steps(backend)
        if steps is not None:
            assert steps == list(range(5000)), "steps stored out of order, twice or not at all"


def check_backend(
    make_backend: Callable[[Path], Backend],
    read_steps: Callable[[Backend], list[int] | None] | None = None,
) -> None:
    """Run the :class:`BackendContract` scenarios outside pytest (raises AssertionError)."""

    class _Contract(BackendContract):
        def make_backend(self, tmp_path: Path) -> Backend:
            return make_backend(tmp_path)

        def read_steps(self, backend: Backend) -> list[int] | None:
            return read_steps(backend) if read_steps is not None else None

    contract = _Contract()
    for name in dir(contract):
        if name.startswith("test_"):
            with tempfile.TemporaryDirectory(prefix="steplog-contract-") as tmp:
                getattr(contract, name)(Path(tmp))


class _Blowup(RuntimeError):
    pass


def _finished(stats: RunStats | None) -> RunStats:
    assert stats is not None, "finish() returned None"
    return stats
