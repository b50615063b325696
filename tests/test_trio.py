"""AsyncTracker under both async libraries anyio runs on: asyncio and trio (issue #16
item 6). anyio's pytest plugin runs each test once per backend."""

from __future__ import annotations

import pytest

import steplog
from steplog.testing import SlowBackend

pytest.importorskip("trio", reason="the trio tests need trio (pip install -e '.[dev]')")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_the_whole_lifecycle_under_asyncio_and_trio(tmp_path, anyio_backend):
    """init, log, flush, finish and the run() context: every event in the file."""
    jsonl = steplog.JsonlBackend(tmp_path)
    memory = steplog.MemoryBackend()
    tracker = steplog.AsyncTracker(jsonl, memory, experiment_name=anyio_backend)
    async with tracker.run({"library": anyio_backend}) as info:
        for i in range(5_000):
            tracker.log({"i": i})
        await tracker.flush()
        assert len(memory.records) == 5_000
    run = steplog.read_run(jsonl.path)
    assert run.run_id == info.run_id and run.status == "finished"
    assert run.history["i"] == list(range(5_000))
    assert run.config == {"library": anyio_backend}


@pytest.mark.anyio
async def test_flush_timeout_and_failed_open_under_asyncio_and_trio(tmp_path, anyio_backend):
    """flush(timeout) raises FlushTimeoutError; a backend that cannot open makes await
    init() raise BackendOpenError — under either library."""
    tracker = steplog.AsyncTracker(SlowBackend(0.5))
    await tracker.init()
    tracker.log({"x": 1})
    with pytest.raises(steplog.FlushTimeoutError):
        await tracker.flush(timeout=0.05)
    stats = await tracker.finish()
    assert stats is not None and stats.backends["slow"].delivered == 1

    blocker = tmp_path / "file"
    blocker.write_text("x")
    broken = steplog.AsyncTracker(steplog.JsonlBackend(blocker))
    with pytest.raises(steplog.BackendOpenError):
        await broken.init()


@pytest.mark.anyio
async def test_a_failure_in_the_block_records_failed(tmp_path, anyio_backend):
    """An exception inside `async with tracker.run()` ends the run as failed."""
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.AsyncTracker(jsonl)
    with pytest.raises(ValueError, match="diverged"):
        async with tracker.run():
            tracker.log({"loss": 1.0})
            raise ValueError("diverged")
    assert steplog.read_run(jsonl.path).status == "failed"
