"""Disk trouble mid-run: write errors are counted and reported; the run still finishes."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys

import pytest

import steplog

FAST = steplog.RetryPolicy(retries=1, backoff=0.001, breaker_after=2)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount rights; skipped where they are missing)."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("needs Linux mount(8) to make a tiny filesystem")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def check_run_survived(stats, mem, n):
    jsonl = stats.backends["jsonl"]
    assert [e.data["i"] for e in mem.records] == list(range(n))
    assert stats.backends["memory"].delivered == n
    assert jsonl.failed > 0
    assert jsonl.delivered + jsonl.failed + jsonl.dropped == n
    assert jsonl.errors > 0
    assert "No space left" in (jsonl.last_error or "") or "ENOSPC" in (jsonl.last_error or "")


def test_disk_full_mid_run_on_a_real_tiny_filesystem(full_disk):
    """A real ENOSPC: JSONL failures are counted, memory keeps all, finish() returns."""
    backend = steplog.JsonlBackend(full_disk)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(backend, mem, batch_size=100, retry=FAST)
    tracker.init()
    n = 20_000  # ~2.6 MB of JSONL for a 256 KiB filesystem
    for i in range(n):
        tracker.log({"i": i, "payload": "x" * 100})
    stats = tracker.finish()
    check_run_survived(stats, mem, n)
    run = steplog.read_run(backend.path)  # what fitted is a readable, gap-free prefix
    assert run.history["i"] == list(range(len(run.records)))
    assert 0 < len(run.records) < n


def test_injected_write_error_mid_run(runs_root, monkeypatch):
    """The same promise where no filesystem can be mounted: os.write fails after a while."""
    import steplog.runfile.write as run_file_module  # where the run file is written

    real_write = run_file_module.os.write
    calls = {"n": 0}

    class FailingOs:
        def __getattr__(self, name):
            return getattr(run_file_module.__dict__["_real_os"], name)

        @staticmethod
        def write(fd, data):
            calls["n"] += 1
            if calls["n"] > 5:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

    monkeypatch.setitem(run_file_module.__dict__, "_real_os", run_file_module.os)
    monkeypatch.setattr(run_file_module, "os", FailingOs())
    backend = steplog.JsonlBackend(runs_root)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(backend, mem, batch_size=50, retry=FAST)
    tracker.init()
    n = 2_000
    for i in range(n):
        tracker.log({"i": i})
        if i % 100 == 99:  # batches of 100: the writer takes whatever is queued
            tracker.flush()
    stats = tracker.finish()
    check_run_survived(stats, mem, n)
    run = steplog.read_run(backend.path)  # the stats match the file
    assert len(run.records) == stats.backends["jsonl"].delivered
    assert run.history["i"] == list(range(len(run.records)))
