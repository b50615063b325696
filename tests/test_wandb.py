"""WandbBackend in W&B offline mode; the offline run is read back from W&B's own files."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import pytest

import steplog
from wandb_offline import read_offline_history, read_offline_run

pytest.importorskip("wandb", reason="WandbBackend needs wandb (pip install -e '.[dev]')")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def offline_dir(root: Path, run_id: str) -> Path:
    dirs = list((root / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(dirs) == 1, list((root / "wandb").iterdir())
    return dirs[0]


@pytest.mark.slow
def test_history_config_and_summary_reach_the_offline_run(tmp_path):
    """Every logged step, the config and the summary reach W&B's offline run."""
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    wb = steplog.WandbBackend(project="steplog-test", dir=tmp_path)
    tracker = steplog.Tracker(jsonl, wb, experiment_name="exp")
    tracker.init({"lr": 0.1, "model": {"layers": 2}})
    for i in range(1500):
        tracker.log({"loss": 1.0 / (i + 1) if i != 3 else math.nan, "acc": i / 1500, "s": f"t{i}"})
    stats = tracker.finish({"best": 0.5})
    assert stats.backends["wandb"].delivered == 1500 and stats.backends["wandb"].errors == 0
    local = steplog.read_run(jsonl.path)

    offline = read_offline_run(offline_dir(tmp_path, local.run_id))
    rows = offline.history
    assert [row["_step"] for row in rows] == list(range(1500))
    for row, event in zip(rows, local.records, strict=True):
        assert row["acc"] == event.data["acc"]
        assert row["s"] == event.data["s"]
        if event.step == 3:
            assert row["loss"] == "NaN" or math.isnan(row["loss"])
        else:
            assert row["loss"] == event.data["loss"]
    assert offline.config == {"lr": 0.1, "model": {"layers": 2}}
    assert offline.summary["best"] == 0.5
    assert offline.summary["steplog/status"] == "finished"


@pytest.mark.slow
def test_out_of_order_steps_are_counted_and_reported_not_silently_dropped(tmp_path, caplog):
    """A step lower than one already sent is not sent: it is counted and reported once."""
    wb = steplog.WandbBackend(project="steplog-test", dir=tmp_path)
    # The report goes through the logging of the process the lane runs in: this one.
    tracker = steplog.Tracker(wb, experiment_name="exp", delivery="thread")
    info = tracker.init()
    with caplog.at_level(logging.WARNING, logger="steplog"):
        for step in [0, 1, 2, 5, 3, 4, 6, 6]:
            tracker.log({"x": float(step)}, step=step)
        tracker.finish()
    assert wb.out_of_order == 2  # steps 3 and 4 came after 5
    assert "step 3 came after step 5 and was not sent to W&B" in caplog.text
    offline = read_offline_run(offline_dir(tmp_path, info.run_id))
    assert [row["_step"] for row in offline.history] == [0, 1, 2, 5, 6]
    assert offline.summary["steplog/out_of_order"] == 2


@pytest.mark.slow
def test_step_metric_mode_keeps_every_event(tmp_path):
    """With step_metric=True every event is a W&B row, out-of-order steps included."""
    wb = steplog.WandbBackend(project="steplog-test", dir=tmp_path, step_metric=True)
    tracker = steplog.Tracker(wb, experiment_name="exp")
    info = tracker.init()
    order = [0, 1, 2, 5, 3, 4]
    for step in order:
        tracker.log({"x": float(step)}, step=step)
    tracker.finish()
    assert wb.out_of_order == 0
    rows = read_offline_history(offline_dir(tmp_path, info.run_id))
    assert [row["step"] for row in rows] == order
    assert [row["x"] for row in rows] == [float(s) for s in order]


@pytest.mark.slow
def test_sampled_wandb_gets_a_thinned_stream(tmp_path):
    """Sampled(wb, every=100, reduce="mean") sends W&B one mean per 100 steps."""
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    wb = steplog.WandbBackend(project="steplog-test", dir=tmp_path)
    tracker = steplog.Tracker(
        jsonl, steplog.Sampled(wb, every=100, reduce="mean"), experiment_name="exp"
    )
    info = tracker.init()
    for i in range(20_000):
        tracker.log({"loss": float(i)})
    tracker.finish()
    rows = read_offline_history(offline_dir(tmp_path, info.run_id))
    assert [row["_step"] for row in rows] == list(range(99, 20_000, 100))
    assert rows[0]["loss"] == sum(range(100)) / 100
    assert len(steplog.read_run(jsonl.path).records) == 20_000


def test_finish_returns_once_wandb_has_written_the_offline_run(tmp_path, monkeypatch):
    """finish() returns only when W&B's service has written the whole offline run.

    ``run.finish()`` only publishes "stream finished" to the service, which writes the
    log's last block when it handles that message: a loaded machine can delay that
    past ``finish()``, and a read then found no rows (issue #13). Here the message
    reaches the service half a second late, every time.
    """
    from wandb.sdk.lib.service.service_connection import ServiceConnection

    publish = ServiceConnection.inform_finish
    late: list[threading.Timer] = []

    def publish_late(self, run_id):
        late.append(threading.Timer(0.5, publish, (self, run_id)))
        late[-1].start()

    monkeypatch.setattr(ServiceConnection, "inform_finish", publish_late)
    wb = steplog.WandbBackend(project="steplog-test", dir=tmp_path, step_metric=True)
    # W&B is patched in this process: its lane runs here.
    tracker = steplog.Tracker(wb, experiment_name="exp", delivery="thread")
    info = tracker.init()
    for step in range(5):
        tracker.log({"x": float(step)}, step=step)
    try:
        tracker.finish()
        offline = read_offline_run(offline_dir(tmp_path, info.run_id))
    finally:
        for timer in late:
            timer.join()
    assert late, "the finish message was not delayed: wandb no longer sends it this way"
    assert offline.exit_code == 0
    assert [row["step"] for row in offline.history] == [0, 1, 2, 3, 4]
