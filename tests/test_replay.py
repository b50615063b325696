"""steplog.replay: recorded runs into other backends, later."""

from __future__ import annotations

import math

import pytest

import steplog

from conftest import run_steplog


def recorded(tmp_path, steps: int = 2500, crash: bool = False):
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, experiment_name="exp")
    tracker.init({"lr": 0.1, "inf": math.inf})
    for i in range(steps):
        tracker.log({"loss": 1.0 / (i + 1), "nan": math.nan, "s": f"t{i}"}, step=i * 2)
    tracker.finish({"best": 0.5})
    if crash:
        lines = jsonl.path.read_bytes().split(b"\n")
        jsonl.path.write_bytes(b"\n".join(lines[:-2]) + b'\n{"step":9,"ti')
    return jsonl.path


def test_replay_reproduces_the_run_in_another_backend(tmp_path):
    path = recorded(tmp_path)
    memory = steplog.MemoryBackend()
    result = steplog.replay(path, memory, batch_size=1000)
    original = steplog.read_run(path)
    assert result["memory"].delivered == 2500 and result["memory"].failed == 0
    assert memory.info is not None
    assert memory.info.run_id == original.run_id
    assert memory.info.start_time == original.start_time
    assert memory.config == {"lr": 0.1, "inf": math.inf}
    assert [(e.step, e.time) for e in memory.records] == [
        (e.step, e.time) for e in original.records
    ]
    assert memory.history["s"] == original.history["s"]
    assert all(math.isnan(v) for v in memory.history["nan"])
    assert memory.status == "finished" and memory.summary == {"best": 0.5}
    assert memory.stats is not None and memory.stats.logged == 2500


def test_a_crashed_run_replays_as_unfinished(tmp_path):
    path = recorded(tmp_path, steps=100, crash=True)
    memory = steplog.MemoryBackend()
    result = steplog.replay(path, memory)
    assert result["memory"].delivered == 100
    assert memory.status == "unfinished" and memory.summary == {}


def test_failing_writes_are_retried_then_counted(tmp_path):
    from conftest import FailingBackend

    path = recorded(tmp_path, steps=10)
    failing = FailingBackend()
    memory = steplog.MemoryBackend()
    result = steplog.replay(
        path, failing, memory, retry=steplog.RetryPolicy(retries=2, backoff=0.001)
    )
    assert failing.attempts == 3
    assert result["failing"].failed == 10 and result["failing"].errors == 3
    assert result["memory"].delivered == 10


def test_a_backend_that_cannot_open_fails_the_replay(tmp_path):
    from conftest import FailingBackend

    path = recorded(tmp_path, steps=10)
    memory = steplog.MemoryBackend()
    with pytest.raises(steplog.BackendOpenError, match="cannot open"):
        steplog.replay(path, memory, FailingBackend(fail_open=True))
    assert memory.status == "failed"  # opened, then closed again


def test_replay_cli_into_another_jsonl_root(tmp_path):
    path = recorded(tmp_path, steps=300)
    other = tmp_path / "copy"
    result = run_steplog("replay", str(path), "--jsonl", str(other))
    assert result.returncode == 0, result.stderr
    assert "jsonl 300 delivered" in result.stdout
    copy = steplog.read_run(next(other.rglob("*.jsonl")))
    original = steplog.read_run(path)
    assert copy.run_id == original.run_id
    assert [e.data["loss"] for e in copy.records] == [e.data["loss"] for e in original.records]
    again = run_steplog("replay", str(path), "--jsonl", str(other))
    assert again.returncode == 1  # the run file exists: JSONL refuses to overwrite it
    assert "could not open backend" in again.stderr


def test_replay_cli_needs_a_destination(tmp_path):
    path = recorded(tmp_path, steps=3)
    result = run_steplog("replay", str(path))
    assert result.returncode == 2
    assert "at least one of" in result.stderr


def test_replay_rejects_files_that_are_not_runs(tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"a": 1}\n')
    with pytest.raises(steplog.RunFileError):
        steplog.replay(junk, steplog.MemoryBackend())
    with pytest.raises(ValueError, match="at least one backend"):
        steplog.replay(junk)


def test_replay_of_a_file_corrupt_mid_way_raises_and_closes_the_backends(tmp_path):
    """steplog.replay() refuses a corrupt line in the middle (as read_run does): every
    event before it is sent, then the backends are closed as 'failed'."""
    path = recorded(tmp_path, steps=3000)
    lines = path.read_bytes().split(b"\n")
    lines[2000] = b'{"step": broken'
    path.write_bytes(b"\n".join(lines))
    memory = steplog.MemoryBackend()
    with pytest.raises(steplog.RunFileError):
        steplog.replay(path, memory, batch_size=1000)
    assert memory.status == "failed"
    assert len(memory.records) == 1999  # every event before the corrupt line
