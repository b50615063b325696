"""The JSONL backend's file layout and durability, and reading runs back."""

from __future__ import annotations

import json
import os
import sys

import orjson
import pytest

import steplog
from steplog.backends.jsonl import SCHEMA_VERSION


def write_run(runs_root, n=10, **kwargs):
    backend = steplog.JsonlBackend(runs_root, **kwargs)
    tracker = steplog.Tracker(backend, experiment_name="exp", experiment_config={"m": "x"})
    info = tracker.init({"seed": 1})
    for i in range(n):
        tracker.log({"loss": 1.0 / (i + 1), "i": i})
    tracker.finish({"best": 0.1})
    return backend.path, info


def test_file_layout_and_record_schema(runs_root):
    """First line is run-start, then one line per log(), then run-end (schema version 1)."""
    path, info = write_run(runs_root, n=3)
    assert path == runs_root / "exp" / f"{info.run_id}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 5
    start, *steps, end = lines
    assert start["type"] == "run_start"
    assert start["schema"] == SCHEMA_VERSION == 1
    assert start["run_id"] == info.run_id
    assert start["experiment"] == "exp"
    assert start["config"] == {"m": "x", "seed": 1}
    assert start["pid"] == os.getpid()
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert all(set(s) == {"step", "time", "data"} for s in steps)
    assert steps[1]["data"] == {"loss": 0.5, "i": 1}
    assert end["type"] == "run_end"
    assert end["status"] == "finished"
    assert end["summary"] == {"best": 0.1}
    assert end["stats"]["logged"] == 3
    assert end["stats"]["backends"]["jsonl"]["delivered"] == 3


def test_read_run_gives_config_records_history_summary_status_stats(runs_root):
    """read_run exposes everything a user needs from a finished run."""
    path, info = write_run(runs_root, n=5)
    run = steplog.read_run(path)
    assert run.run_id == info.run_id
    assert run.experiment == "exp"
    assert run.config == {"m": "x", "seed": 1}
    assert [e.step for e in run.records] == list(range(5))
    assert run.history["i"] == list(range(5))
    assert run.series("loss")[1] == (1, 0.5)
    assert run.summary == {"best": 0.1}
    assert run.status == "finished"
    assert run.stats is not None
    assert run.stats.logged == run.stats.written == 5
    assert run.stats.backends["jsonl"].delivered == 5
    assert not run.torn
    assert run.end_time is not None and run.end_time >= run.start_time


def test_torn_last_line_is_skipped(runs_root):
    """A file whose last line was cut by a killed writer reads fine, minus that line."""
    path, _ = write_run(runs_root, n=5)
    lines = path.read_bytes().splitlines(keepends=True)
    # Drop the run-end record and cut the last step record in half.
    path.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    run = steplog.read_run(path)
    assert run.torn
    assert [e.step for e in run.records] == [0, 1, 2, 3]
    assert run.status == "incomplete"
    assert run.stats is None
    assert run.summary == {}


def test_corrupt_middle_line_raises_run_file_error(runs_root):
    """Corruption before the last line is reported with the line number."""
    path, _ = write_run(runs_root, n=5)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b"{not json\n"
    path.write_bytes(b"".join(lines))
    with pytest.raises(steplog.RunFileError, match=r":3: corrupt"):
        steplog.read_run(path)


def test_not_a_run_file_is_rejected(tmp_path):
    """A file that does not start with a run-start record raises RunFileError."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(orjson.dumps({"step": 0, "time": 0, "data": {}}) + b"\n")
    with pytest.raises(steplog.RunFileError, match="run-start"):
        steplog.read_run(path)
    path.write_bytes(b"")
    with pytest.raises(steplog.RunFileError, match="empty"):
        steplog.read_run(path)


def test_newer_schema_is_refused_with_upgrade_hint(runs_root):
    """A file from a newer schema version is refused, telling the user to upgrade."""
    path, _ = write_run(runs_root, n=1)
    lines = path.read_bytes().splitlines(keepends=True)
    start = orjson.loads(lines[0])
    start["schema"] = SCHEMA_VERSION + 1
    path.write_bytes(orjson.dumps(start) + b"\n" + b"".join(lines[1:]))
    with pytest.raises(steplog.RunFileError, match="upgrade"):
        steplog.read_run(path)


def test_each_batch_reaches_the_os_before_the_run_ends(runs_root):
    """Flushed events are in the file (visible to other readers) while the run is active."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    for i in range(100):
        tracker.log({"i": i})
    tracker.flush()
    run = steplog.read_run(backend.path)  # no run-end yet
    assert run.status == "incomplete"
    assert run.history["i"] == list(range(100))
    tracker.finish()


def test_fsync_option_writes_the_same_file(runs_root):
    """fsync=True syncs each batch and produces an identical, readable run."""
    path, _ = write_run(runs_root, n=20, fsync=True)
    run = steplog.read_run(path)
    assert run.history["i"] == list(range(20))
    assert run.status == "finished"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_root_fails_at_init(tmp_path):
    """A run directory that cannot be created makes init() raise before the loop starts."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    tracker = steplog.Tracker(steplog.JsonlBackend(locked / "runs"))
    with pytest.raises(steplog.BackendOpenError, match="jsonl"):
        tracker.init()


def test_root_that_is_a_file_fails_at_init(tmp_path):
    """A root path that is a regular file makes init() raise BackendOpenError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tracker = steplog.Tracker(steplog.JsonlBackend(blocker))
    with pytest.raises(steplog.BackendOpenError):
        tracker.init()
    assert not tracker.active


def test_files_are_never_world_writable_even_with_umask_zero(tmp_path):
    """Run files and directories get 0o644/0o755 at most, whatever the umask."""
    import subprocess

    code = (
        "import os, steplog; os.umask(0)\n"
        "t = steplog.Tracker(steplog.JsonlBackend('runs'), experiment_name='perm')\n"
        "t.init(); t.log({'a': 1}); t.finish()\n"
        "print(oct(os.stat(t.backends[0].path).st_mode & 0o777),"
        " oct(os.stat(t.backends[0].path.parent).st_mode & 0o777))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0o644", "0o755"]


@pytest.mark.parametrize(
    "name", ["../../etc", "/abs/path", "a/b", "a\\b", "a\x00b", "..", ".", " padded", "tab\there"]
)
def test_names_that_could_escape_the_run_root_are_rejected(name):
    """Experiment names are single, safe path components: traversal is a clear error."""
    with pytest.raises(ValueError, match="experiment_name"):
        steplog.Tracker(steplog.MemoryBackend(), experiment_name=name)


@pytest.mark.parametrize(
    "bad",
    [b'{"step":2}', b'{"step":2,"time":1.0,"data":5}', b'{"step":"x","time":1.0,"data":{}}'],
    ids=["no-data", "data-not-object", "step-not-int"],
)
def test_wrong_shaped_records_raise_run_file_error(runs_root, bad):
    """A well-formed JSON line that is not a step record raises RunFileError naming the
    line, never a raw KeyError or AttributeError."""
    path, _ = write_run(runs_root, n=3)
    lines = path.read_bytes().split(b"\n")
    lines.insert(2, bad)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(steplog.RunFileError, match=r":3: a step record needs"):
        steplog.read_run(path)
