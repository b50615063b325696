"""TrackioBackend: a local trackio project, read back through trackio's storage API."""

from __future__ import annotations

import uuid

import pytest

import steplog

pytest.importorskip("trackio", reason="TrackioBackend needs trackio (pip install -e '.[dev]')")
pytestmark = pytest.mark.timeout(180)


def test_points_reach_the_local_trackio_project(tmp_path):
    # TRACKIO_DIR points into a scratch directory for the whole session (conftest).
    from trackio.sqlite_storage import SQLiteStorage

    project = f"steplog-test-{uuid.uuid4().hex[:8]}"

    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, steplog.TrackioBackend(project=project), experiment_name="exp")
    info = tracker.init({"lr": 0.1})
    for i in range(1200):
        tracker.log({"loss": 1.0 / (i + 1), "acc": i / 1200, "trigger": f"t{i}"})
    stats = tracker.finish({"best": 0.25})
    assert stats.backends["trackio"].delivered == 1200 and stats.backends["trackio"].errors == 0
    local = steplog.read_run(jsonl.path)
    logs = SQLiteStorage.get_logs(project, info.run_id)
    points = [row for row in logs if "loss" in row]
    assert [row["step"] for row in points] == list(range(1200))
    for row, event in zip(points, local.records, strict=True):
        assert row["loss"] == pytest.approx(event.data["loss"])
        assert row["trigger"] == event.data["trigger"]
    summary = [row for row in logs if "summary/best" in row]
    assert [(row["step"], row["summary/best"]) for row in summary] == [(1199, 0.25)]
    assert SQLiteStorage.get_run_config(project, info.run_id)["lr"] == 0.1


def test_a_batch_retried_after_a_failure_mid_batch_logs_each_step_once(tmp_path):
    """run.log fails once in the middle of a batch; the retry (the same batch again,
    per the Backend.write contract) goes on after the steps trackio took."""
    from trackio.sqlite_storage import SQLiteStorage

    project = f"steplog-test-{uuid.uuid4().hex[:8]}"
    backend = steplog.TrackioBackend(project=project)
    tracker = steplog.Tracker(
        backend,
        retry=steplog.RetryPolicy(backoff=0.001),
        batch_size=100,
        experiment_name="exp",
        delivery="thread",  # the fault is injected into trackio's run in this process
    )
    info = tracker.init()
    real_log, calls = backend.run.log, [0]

    def flaky_log(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 30:
            raise ConnectionError("transient")
        return real_log(*args, **kwargs)

    backend.run.log = flaky_log
    for i in range(100):
        tracker.log({"loss": float(i)}, step=i)
    stats = tracker.finish()
    assert stats.backends["trackio"].errors == 1 and stats.backends["trackio"].delivered == 100
    steps = [row["step"] for row in SQLiteStorage.get_logs(project, info.run_id) if "loss" in row]
    assert steps == list(range(100))
