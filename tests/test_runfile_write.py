"""The write side of a run file (``steplog.runfile.write.RunFile``): create, continue,
lock, append, cut back, hand off — the only code that writes a run file's bytes."""

from __future__ import annotations

import errno
import os
import time

import pytest

import steplog
import steplog.runfile.write as run_file_module
from steplog.runfile.codec import ValueEncoder
from steplog.runfile.schema import start_record
from steplog.runfile.write import RunFile


def _start_line(run_id: str = "r1") -> bytes:
    info = steplog.RunInfo(run_id, "exp", {}, time.time(), os.getpid(), "host")
    return ValueEncoder().encode(start_record(info))


def _step_lines(steps: range) -> bytes:
    return b"".join(b'{"step":%d,"time":0.0,"data":{"i":%d}}\n' % (s, s) for s in steps)


def test_create_appends_and_counts_its_bytes_and_refuses_an_existing_file(tmp_path):
    """A new run file is created exclusively; appends land in order and size follows."""
    path = tmp_path / "r1.jsonl"
    file = RunFile.create(path)
    file.append(_start_line())
    file.append(_step_lines(range(3)))
    assert file.size == path.stat().st_size
    file.close(b'{"type":"end"}\n')
    assert file.closed
    file.close(b"twice\n")  # closing twice does nothing
    assert path.read_bytes().endswith(b'{"type":"end"}\n')
    with pytest.raises(FileExistsError):
        RunFile.create(path)


def test_an_open_run_file_is_locked_against_a_second_writer(tmp_path):
    """While a RunFile is open, continuing the same file fails naming the condition;
    once it is closed, the file can be continued."""
    path = tmp_path / "r1.jsonl"
    file = RunFile.create(path)
    file.append(_start_line())
    with pytest.raises(steplog.RunFileError, match="being written by"):
        RunFile.resume(path)
    file.close(b"")
    RunFile.resume(path).close(b"")


def test_resume_cuts_off_a_torn_tail_and_checks_the_size_it_was_promised(tmp_path):
    """Continuing a file cuts the line a killed writer left torn; a file that changed
    since the resume looked at it (another size) is refused."""
    path = tmp_path / "r1.jsonl"
    whole = _start_line() + _step_lines(range(2))
    path.write_bytes(whole + b'{"step":2,"ti')
    with pytest.raises(steplog.RunFileError, match="changed"):
        RunFile.resume(path, expect_size=len(whole))
    file = RunFile.resume(path, expect_size=len(whole) + 13)
    assert file.size == len(whole) == path.stat().st_size
    file.append(_step_lines(range(2, 3)))
    file.close(b"")
    assert path.read_bytes() == whole + _step_lines(range(2, 3))


def test_a_batch_given_up_is_cut_back_to_its_whole_lines(tmp_path, monkeypatch):
    """An append that stops part-way and then fails can be retried (it goes on after
    what made it) or given up: cut_back keeps the whole lines and says how many."""
    path = tmp_path / "r1.jsonl"
    file = RunFile.create(path)
    first = _start_line()
    file.append(first)
    start = file.size
    real_os = run_file_module.os
    calls = {"n": 0}

    class HalfThenFull:
        def __getattr__(self, name):
            return getattr(real_os, name)

        @staticmethod
        def write(fd, data):
            calls["n"] += 1
            if calls["n"] == 1:
                return real_os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_file_module, "os", HalfThenFull())
    batch = _step_lines(range(10))
    with pytest.raises(OSError, match="No space left"):
        file.append(batch)
    kept = file.cut_back()
    monkeypatch.undo()
    whole = batch[: batch[: len(batch) // 2].rfind(b"\n") + 1]
    assert kept == whole.count(b"\n") > 0
    assert file.size == start + len(whole) == path.stat().st_size
    file.append(_step_lines(range(kept, kept + 1)))  # the next batch goes on from there
    file.close(b"")
    assert path.read_bytes() == first + whole + _step_lines(range(kept, kept + 1))


def test_hand_off_gives_the_descriptor_and_ends_the_run_through_the_process(tmp_path):
    """hand_off starts the writer process on the file's descriptor; close then ends the
    run through it, and take_back lets this process append from the end again."""
    path = tmp_path / "r1.jsonl"
    file = RunFile.create(path)
    first = _start_line()
    file.append(first)

    class Process:
        def __init__(self, fd):
            self.fd = fd
            self.ended: list[bytes] = []

        def close(self, end_line, timeout=None):
            os.write(self.fd, end_line)
            self.ended.append(end_line)
            return True

        def forget_after_fork(self):
            pass

    process = file.hand_off(Process)
    os.write(process.fd, _step_lines(range(2)))  # the process appends meanwhile
    file.close(b'{"type":"end"}\n')
    assert process.ended == [b'{"type":"end"}\n']
    assert path.read_bytes() == first + _step_lines(range(2)) + b'{"type":"end"}\n'

    other = tmp_path / "r2.jsonl"
    file = RunFile.create(other)
    file.append(_start_line("r2"))
    process = file.hand_off(Process)
    os.write(process.fd, _step_lines(range(1)))
    file.take_back()  # the process died; its lines are in the file
    assert file.size == other.stat().st_size
    file.close(b"end\n")  # written from here, not through the dead process
    assert process.ended == []
    assert other.read_bytes().endswith(_step_lines(range(1)) + b"end\n")


def test_a_tracker_appends_each_drain_in_one_os_write(tmp_path, monkeypatch):
    """Through a tracker, the run file gets one os.write per drain of the buffer (plus
    the run start and the run end), whatever the number of events in it."""
    real_os = run_file_module.os
    writes = {"n": 0}

    class CountingOs:
        def __getattr__(self, name):
            return getattr(real_os, name)

        @staticmethod
        def write(fd, data):
            writes["n"] += 1
            return real_os.write(fd, data)

    monkeypatch.setattr(run_file_module, "os", CountingOs())
    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), batch_size=256)
    tracker.init()
    for step in range(5_000):
        tracker.log({"x": step})
    stats = tracker.finish()
    assert stats.written == 5_000
    assert writes["n"] == stats.batches + 2
