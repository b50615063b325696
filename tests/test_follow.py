"""runfile.follow: the one follower of a growing run file (lanes, ``tail -f``, ``sync -f``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from steplog.runfile.follow import RunFollower, WriterWatch, complete_lines
from steplog.runfile.records import RecordKind, kind_of
from steplog.runfile.snapshot import open_run


def _line(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


START = {"type": "run_start", "schema": 1, "run_id": "r", "experiment": "x", "start_time": 1.0}


def _step(step: int) -> dict:
    return {"step": step, "time": 2.0, "data": {"loss": step}}


def test_complete_lines_hold_back_a_line_still_being_written(tmp_path):
    """Only whole lines come back; a last line without its newline does once ``final``
    says the file will not grow, and only if it is a whole record."""
    path = tmp_path / "run.jsonl"
    whole = _line(_step(0))
    path.write_bytes(whole + _line(_step(1))[:10])
    size = path.stat().st_size
    assert complete_lines(path, 0, size) == whole
    assert complete_lines(path, len(whole), size) == b""
    assert complete_lines(path, len(whole), size, final=True) == b""  # torn: never whole
    path.write_bytes(whole + _line(_step(1)).rstrip(b"\n"))
    size = path.stat().st_size
    assert complete_lines(path, len(whole), size, final=True) == _line(_step(1)).rstrip(b"\n")
    assert complete_lines(path, size, size) == b""


def test_run_follower_reads_appended_records_once_and_takes_a_resume_as_its_writer(tmp_path):
    """Each poll returns the records completed since the last one, with their offsets;
    a corrupt line comes back as ``None``; a resume record names the writer watched."""
    path = tmp_path / "run.jsonl"
    path.write_bytes(_line(START))
    follower = RunFollower(open_run(path))
    assert follower.poll() == []
    first = path.stat().st_size
    resume = {"type": "resume", "time": 3.0, "step": 1, "segment": 1, "pid": 7, "host": "h"}
    with open(path, "ab") as f:
        f.write(_line(_step(0)) + b"not json\n" + _line(resume) + _line(_step(1))[:5])
    polled = follower.poll()
    assert [kind_of(r) if r is not None else None for _, r in polled] == [
        RecordKind.STEP,
        None,
        RecordKind.RESUME,
    ]
    assert polled[0][0] == first
    assert follower.writer == resume
    assert follower.poll() == []  # the half line waits for its newline
    with open(path, "ab") as f:
        f.write(_line(_step(1))[5:])
    assert [r for _, r in follower.poll()] == [_step(1)]


def test_writer_watch_gives_up_once_the_writer_is_gone_and_the_file_is_quiet(tmp_path):
    """A writer process gone from this host counts only after the grace period without
    growth; a live one never does."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    path = tmp_path / "run.jsonl"
    here = socket.gethostname()
    path.write_bytes(_line({**START, "pid": int(dead.stdout), "host": here}))
    os.utime(path, (0, 0))  # quiet since long ago
    assert WriterWatch(path, grace=1.0).gone()  # looked up in the file: its run start
    assert not WriterWatch(path, {"pid": os.getpid(), "host": here}, grace=0.0).gone()
    watch = WriterWatch(path, grace=60.0)
    with open(path, "ab") as f:
        f.write(_line(_step(0)))
    assert watch.grew() and not watch.gone()  # it just grew: not quiet yet
