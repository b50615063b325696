"""The writer thread's delivery to the JSONL file under write errors (real files)."""

from __future__ import annotations

import errno

import steplog
import steplog.runfile.write as run_file_module  # where the run file is written


def test_a_write_that_fails_part_way_is_resumed_without_duplicates(runs_root, monkeypatch):
    """A batch write that stops half-way then fails (ENOSPC) resumes after the bytes
    that made it: no torn line, no duplicated step, and the stats match the file."""
    real_os = run_file_module.os
    state = {"calls": 0, "failed": 0}

    class PartialOs:
        def __getattr__(self, name):
            return getattr(real_os, name)

        @staticmethod
        def write(fd, data):
            state["calls"] += 1
            if state["calls"] % 4 == 0 and len(data) > 100:
                return real_os.write(fd, bytes(data[: len(data) // 2 + 3]))  # mid-line
            if state["calls"] % 4 == 1 and state["calls"] > 1:
                state["failed"] += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_os.write(fd, data)

    monkeypatch.setattr(run_file_module, "os", PartialOs())
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(
        backend, batch_size=64, retry=steplog.RetryPolicy(retries=5, backoff=0.001)
    )
    tracker.init()
    n = 5_000
    for i in range(n):
        tracker.log({"i": i, "pad": "y" * 30})
        if i % 250 == 249:
            tracker.flush()
    stats = tracker.finish()
    assert state["failed"] > 3
    run = steplog.read_run(backend.path)
    assert run.history["i"] == list(range(n))
    assert stats.backends["jsonl"].delivered == n
    assert stats.backends["jsonl"].errors == state["failed"]


def test_a_batch_given_up_is_cut_back_to_its_last_whole_line(runs_root, monkeypatch):
    """When retries run out after a partial write, whole lines that made it stay and are
    counted as delivered; the torn rest is cut off, so read_run and the stats agree."""
    real_os = run_file_module.os
    state = {"broken": False}

    class FullDisk:
        def __getattr__(self, name):
            return getattr(real_os, name)

        @staticmethod
        def write(fd, data):
            if state["broken"]:
                if len(data) > 1_000:  # part of a batch fits, then the disk is full
                    return real_os.write(fd, bytes(data[:1_000]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_os.write(fd, data)

    monkeypatch.setattr(run_file_module, "os", FullDisk())
    backend = steplog.JsonlBackend(runs_root)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(
        backend, mem, retry=steplog.RetryPolicy(retries=1, backoff=0.001, breaker_after=0)
    )
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    tracker.flush()
    state["broken"] = True
    for i in range(100, 400):
        tracker.log({"i": i})
    tracker.flush()
    state["broken"] = False
    stats = tracker.finish()
    jsonl = stats.backends["jsonl"]
    run = steplog.read_run(backend.path)  # no torn line in the middle
    assert jsonl.delivered == len(run.records)
    assert jsonl.delivered + jsonl.failed == 400
    assert jsonl.failed > 0
    assert 100 < len(run.records) < 400
    steps = run.history["i"]
    assert steps[:100] == list(range(100))
    assert steps == sorted(set(steps))  # whole lines only: no torn or repeated step
    assert len(mem.records) == 400
