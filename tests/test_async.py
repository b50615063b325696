"""AsyncTracker: the same lifecycle, awaitable, never blocking the caller's loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

import steplog

from conftest import GateBackend, SlowBackend


@pytest.mark.asyncio
async def test_async_lifecycle_with_context_manager(runs_root):
    """async with AsyncTracker(...) as t: log, await flush, finish on exit."""
    backend = steplog.JsonlBackend(runs_root)
    async with steplog.AsyncTracker(backend, experiment_config={"a": 1}) as tracker:
        for i in range(1_000):
            tracker.log({"loss": 1 / (i + 1)})
        await tracker.flush()
        assert len(steplog.read_run(backend.path).records) == 1_000
    run = steplog.read_run(backend.path)
    assert run.status == "finished"
    assert run.config == {"a": 1}
    assert run.stats is not None and run.stats.logged == 1_000


@pytest.mark.asyncio
async def test_async_init_finish_and_summary():
    """await init(config) / await finish(summary) return RunInfo / RunStats."""
    mem = steplog.MemoryBackend()
    tracker = steplog.AsyncTracker(mem)
    info = await tracker.init({"opt": "GCG"})
    assert info.config == {"opt": "GCG"}
    tracker.log({"x": 1})
    stats = await tracker.finish({"best": 1})
    assert stats is not None and stats.written == 1
    assert mem.summary == {"best": 1}
    with pytest.warns(steplog.TrackerWarning):
        assert await tracker.finish() is None


@pytest.mark.asyncio
async def test_async_run_context_records_failure():
    """async with tracker.run(): an exception records 'failed' and propagates."""
    mem = steplog.MemoryBackend()
    tracker = steplog.AsyncTracker(mem)
    with pytest.raises(RuntimeError, match="boom"):
        async with tracker.run({"k": 1}):
            tracker.log({"x": 1})
            raise RuntimeError("boom")
    assert mem.status == "failed"
    assert len(mem.records) == 1


@pytest.mark.asyncio
async def test_flush_and_finish_do_not_block_the_event_loop():
    """While flush() waits on a stalled backend, other coroutines keep running: one of
    them is what releases the backend."""
    gate = GateBackend()  # holds every write until a coroutine opens it
    tracker = steplog.AsyncTracker(gate, batch_size=10)
    await tracker.init()
    for i in range(50):
        tracker.log({"i": i})
    flushing = False
    ticks_while_flushing = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks_while_flushing
        while not stop:
            if flushing and not gate.gate.is_set():
                ticks_while_flushing += 1
                if ticks_while_flushing == 5:
                    gate.gate.set()  # the backend is released by a coroutine, not a clock
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    # A loop frozen by flush() never runs the ticker: this thread then opens the gate,
    # so the test fails on the count below instead of hanging.
    fallback = threading.Timer(60, gate.gate.set)
    fallback.start()
    try:
        flushing = True
        await tracker.flush()
        flushing = False
        await tracker.finish()
    finally:
        fallback.cancel()
        stop = True
        await task
    assert [e.data["i"] for e in gate.records] == list(range(50))
    # The ticker ran while flush() waited on the stalled backend: it is what released it.
    assert ticks_while_flushing == 5


@pytest.mark.asyncio
async def test_async_flush_timeout():
    """await flush(timeout) raises FlushTimeoutError when the backend is too slow."""
    tracker = steplog.AsyncTracker(SlowBackend(0.5))
    await tracker.init()
    tracker.log({"x": 1})
    with pytest.raises(steplog.FlushTimeoutError):
        await tracker.flush(timeout=0.05)
    await tracker.finish()


@pytest.mark.asyncio
async def test_async_open_failure_raises_backend_open_error(tmp_path):
    """An open failure surfaces from await init() as BackendOpenError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tracker = steplog.AsyncTracker(steplog.JsonlBackend(blocker))
    with pytest.raises(steplog.BackendOpenError):
        await tracker.init()
    with pytest.raises(steplog.InactiveRunError):
        tracker.log({"x": 1})
