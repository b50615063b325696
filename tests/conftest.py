"""Shared test helpers: backends with injected slowness and faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence

import pytest

import steplog
from steplog import Event, RunEnd, RunInfo


class SlowBackend(steplog.MemoryBackend):
    """A memory backend whose every write takes ``delay`` seconds (blocking its task)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.writes = 0

    async def write(self, events: Sequence[Event]) -> None:
        import anyio

        await anyio.sleep(self.delay)
        self.writes += 1
        await super().write(events)


class FailingBackend(steplog.Backend):
    """Raises on every write (or on open/close when asked)."""

    def __init__(self, *, fail_open: bool = False, fail_close: bool = False) -> None:
        self.fail_open = fail_open
        self.fail_close = fail_close
        self.opened = 0
        self.closed = 0
        self.attempts = 0

    async def open(self, run: RunInfo) -> None:
        self.opened += 1
        if self.fail_open:
            raise OSError("cannot open: injected fault")

    async def write(self, events: Sequence[Event]) -> None:
        self.attempts += 1
        raise ConnectionError("injected write fault")

    async def close(self, end: RunEnd) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError("cannot close: injected fault")


class GateBackend(steplog.MemoryBackend):
    """A memory backend whose writes wait until ``gate`` is set (a stalled backend)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def write(self, events: Sequence[Event]) -> None:
        import anyio

        while not self.gate.is_set():
            await anyio.sleep(0.005)
        await super().write(events)


def run_script(code: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) as a script in ``tmp_path``; capture its output."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def stall_mid_drain(gate: GateBackend) -> tuple[steplog.Tracker, steplog.MemoryBackend]:
    """Start a run whose worker is stuck inside a drain on the stalled ``gate``.

    Events 0-7 fill the gate's backlog (``buffer_size=8``); the worker then waits to hand
    it 8-9, and so has not handed them to the memory backend either.
    """
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(gate, mem, buffer_size=8, batch_size=2, flush_interval=0.01)
    tracker.init()
    for i in range(10):
        tracker.log({"i": i})
    assert wait_until(lambda: len(mem.records) == 8 and not tracker._buffer.events)
    return tracker, mem


@pytest.fixture
def runs_root(tmp_path):
    """A fresh run directory."""
    return tmp_path / "runs"
