"""MlflowBackend against a real `mlflow server` (sqlite store) on 127.0.0.1.

Everything is checked through MLflow's own REST API, against the JSONL file of the same
run as ground truth.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import uuid

import pytest

import steplog
from steplog.sync import sync

from conftest import MlflowProxy, find_run, history, mlflow_api, run_steplog

pytest.importorskip("httpx", reason="MlflowBackend needs httpx (pip install -e '.[dev]')")
pytestmark = pytest.mark.timeout(300)


def test_every_point_param_tag_and_status_reaches_the_server(mlflow_server, tmp_path):
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(
        jsonl, steplog.MlflowBackend(mlflow_server), experiment_name=experiment
    )
    config = {
        "lr": 0.1,
        "model": {"name": "gpt2", "layers": 12},
        "prompt": "x" * 7000,
        "tags": [1, 2],
        "none": None,
        "weird key!": 1,
    }
    tracker.init(config)
    for i in range(2500):  # 2500 x 4 metrics: several log-batch requests per batch
        loss = 1.0 / (i + 1)
        if i == 7:
            loss = math.nan
        if i == 8:
            loss = math.inf
        tracker.log(
            {
                "loss": loss,
                "acc": i / 2500,
                "grad": {"norm": float(i)},
                "iteration": i,
                "trigger": f"t{i}",
                "ok": i % 2 == 0,
            }
        )
    stats = tracker.finish({"best": 0.01, "note": "done"})
    assert stats.backends["mlflow"].delivered == 2500
    assert stats.backends["mlflow"].errors == 0
    local = steplog.read_run(jsonl.path)

    run = find_run(mlflow_server, experiment, local.run_id)
    info, data = run["info"], run["data"]
    assert info["status"] == "FINISHED"
    assert info["run_name"] == local.run_id
    assert int(info["start_time"]) == int(local.start_time * 1000)
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["lr"] == "0.1"
    assert params["model.name"] == "gpt2" and params["model.layers"] == "12"
    assert params["tags"] == "[1,2]"
    assert params["none"] == "None"
    assert params["weird key_"] == "1"  # '!' is not allowed in MLflow keys
    assert len(params["prompt"]) == 6000
    assert params["prompt"].endswith("...[truncated by steplog]")
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["steplog.run_id"] == local.run_id
    assert tags["steplog.status"] == "finished"
    assert tags["trigger"] == "t2499"  # strings: the latest value as a tag
    assert tags["ok"] == "False"  # step 2499 is odd
    assert tags["summary/note"] == "done"
    assert json.loads(tags["steplog.stats"])["logged"] == 2500

    run_id = info["run_id"]
    points = history(mlflow_server, run_id, "loss")
    assert len(points) == 2500
    by_step = {int(p["step"]): p for p in points}
    assert sorted(by_step) == list(range(2500))
    for event in local.records:
        point = by_step[event.step]
        assert int(point["timestamp"]) == int(event.time * 1000)
        expected = event.data["loss"]
        if math.isnan(expected):
            assert point["value"] == "NaN" or math.isnan(float(point["value"]))
        elif math.isinf(expected):
            assert float(point["value"]) > 1e308  # MLflow stores +inf as 1.797e308
        else:
            assert float(point["value"]) == pytest.approx(expected, rel=1e-12)
    norms = history(mlflow_server, run_id, "grad.norm")
    assert sorted(float(p["value"]) for p in norms) == [float(i) for i in range(2500)]
    assert len(history(mlflow_server, run_id, "iteration")) == 2500
    best = history(mlflow_server, run_id, "summary/best")
    assert [(float(p["value"]), int(p["step"])) for p in best] == [(0.01, 2499)]


def test_failed_and_interrupted_runs_get_mlflow_statuses(mlflow_server, tmp_path):
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(
        jsonl, steplog.MlflowBackend(mlflow_server), experiment_name=experiment
    )
    with pytest.raises(ValueError, match="boom"), tracker.run({"a": 1}):
        tracker.log({"loss": 1.0})
        raise ValueError("boom")
    failed = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert failed["info"]["status"] == "FAILED"
    tracker.init()
    tracker.log({"loss": 2.0})
    tracker.finish(status="terminated")
    killed = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert killed["info"]["status"] == "KILLED"
    assert {t["key"]: t["value"] for t in killed["data"]["tags"]}["steplog.status"] == "terminated"


class FlakyProxy(MlflowProxy):
    """A proxy in front of the server that answers 503 to the first N log-batches."""

    def __init__(self, target: str, failures: int) -> None:
        self.failures = failures
        self.failed = 0
        self.forwarded_batches = 0
        super().__init__(target, self._refuse)

    def _refuse(self, path: str):
        if not path.endswith("runs/log-batch"):
            return None
        if self.failed < self.failures:
            self.failed += 1
            return 503, {}
        self.forwarded_batches += 1
        return None


def test_5xx_answers_are_retried_without_losing_or_duplicating_points(mlflow_server, tmp_path):
    proxy = FlakyProxy(mlflow_server, failures=2)
    try:
        experiment = f"exp-{uuid.uuid4().hex[:8]}"
        jsonl = steplog.JsonlBackend(tmp_path)
        tracker = steplog.Tracker(
            jsonl, steplog.MlflowBackend(proxy.url), experiment_name=experiment,
            retry=steplog.RetryPolicy(retries=3, backoff=0.01),
        )  # fmt: skip
        tracker.init()
        for i in range(300):
            tracker.log({"loss": float(i)})
        stats = tracker.finish()
    finally:
        proxy.close()
    assert proxy.failed == 2
    mlflow = stats.backends["mlflow"]
    assert mlflow.delivered == 300 and mlflow.failed == 0
    assert mlflow.errors == 2 and "503" in mlflow.last_error
    run = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(float(p["value"]) for p in points) == [float(i) for i in range(300)]


def test_a_4xx_answer_is_permanent_and_carries_the_servers_message(mlflow_server, tmp_path):
    """A run cannot be created in a deleted experiment: the server's 4xx answer is
    refused at init, at once, with its message."""
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init({"lr": 0.1})
    tracker.log({"loss": 1.0})
    tracker.finish()
    created = mlflow_api(mlflow_server, "experiments/create", {"name": experiment}, method="POST")
    mlflow_api(
        mlflow_server,
        "experiments/delete",
        {"experiment_id": created["experiment_id"]},
        method="POST",
    )
    with pytest.raises(steplog.BackendOpenError, match="INVALID_PARAMETER_VALUE") as raised:
        steplog.replay(jsonl.path, steplog.MlflowBackend(mlflow_server))
    assert "active" in str(raised.value)


def test_a_server_that_is_down_fails_init_with_a_clear_error():
    tracker = steplog.Tracker(steplog.MlflowBackend("http://127.0.0.1:9", timeout=2))
    with pytest.raises(steplog.BackendOpenError, match="ConnectError"):
        tracker.init()


def test_bad_tracking_uris_are_rejected_at_construction(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="needs a tracking server URL"):
        steplog.MlflowBackend()
    with pytest.raises(ValueError, match="over HTTP"):
        steplog.MlflowBackend("sqlite:///mlflow.db")


WORKER = textwrap.dedent(
    """
    import sys, steplog
    url, experiment, root, rank = sys.argv[1:5]
    tracker = steplog.Tracker(
        steplog.JsonlBackend(root), steplog.MlflowBackend(url), experiment_name=experiment
    )
    tracker.init({"rank": int(rank)})
    for i in range(500):
        tracker.log({"loss": int(rank) * 1000 + i, "rank": int(rank)})
    stats = tracker.finish()
    assert stats.backends["mlflow"].delivered == 500, stats
    """
)


def test_four_processes_log_into_one_experiment_concurrently(mlflow_server, tmp_path):
    experiment = f"shared-{uuid.uuid4().hex[:8]}"  # created by whichever process is first
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mlflow_server, experiment, str(tmp_path), str(rank)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    exp = mlflow_api(mlflow_server, "experiments/get-by-name", {"experiment_name": experiment})
    found = mlflow_api(
        mlflow_server,
        "runs/search",
        {"experiment_ids": [exp["experiment"]["experiment_id"]]},
        method="POST",
    )
    runs = found["runs"]
    assert len(runs) == 4
    ranks = set()
    for run in runs:
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        rank = int(params["rank"])
        ranks.add(rank)
        values = sorted(
            float(p["value"]) for p in history(mlflow_server, run["info"]["run_id"], "loss")
        )
        assert values == [float(rank * 1000 + i) for i in range(500)]
    assert ranks == {0, 1, 2, 3}


def test_replay_into_mlflow_twice_stores_each_point_once(mlflow_server, tmp_path):
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init({"lr": 0.1})
    for i in range(1500):
        tracker.log({"loss": float(i), "trigger": "abc"})
    tracker.finish({"best": 0.0})
    for _ in range(2):
        results = steplog.replay(jsonl.path, steplog.MlflowBackend(mlflow_server))
        assert results["mlflow"].delivered == 1500 and results["mlflow"].failed == 0
    run = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(float(p["value"]) for p in points) == [float(i) for i in range(1500)]


def test_replay_of_a_crashed_run_marks_it_killed(mlflow_server, tmp_path):
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, experiment_name=experiment)
    tracker.init()
    for i in range(100):
        tracker.log({"loss": float(i)})
    tracker.finish()
    lines = jsonl.path.read_bytes().split(b"\n")
    jsonl.path.write_bytes(b"\n".join(lines[:-2]) + b'\n{"step": 100, "ti')  # killed
    result = run_steplog("replay", str(jsonl.path), "--mlflow", mlflow_server)
    assert result.returncode == 0, result.stderr
    assert "mlflow 100 delivered" in result.stdout
    run = find_run(mlflow_server, experiment, steplog.read_run(jsonl.path).run_id)
    assert run["info"]["status"] == "KILLED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["steplog.status"] == "unfinished"
    assert len(history(mlflow_server, run["info"]["run_id"], "loss")) == 100


def test_a_resumed_run_continues_its_mlflow_run_with_group_tags(mlflow_server, tmp_path):
    """init(resume=...) continues the same MLflow run (found by its steplog run id):
    both segments' points are in it once, and the group, tags and rank are MLflow tags."""
    experiment = f"exp-{uuid.uuid4().hex[:8]}"

    def tracker():
        return steplog.Tracker(
            steplog.JsonlBackend(tmp_path),
            steplog.MlflowBackend(mlflow_server),
            experiment_name=experiment,
            group="job-1",
            tags=["ddp", "small"],
        )

    first = tracker()
    info = first.init({"lr": 0.1})
    for i in range(100):
        first.log({"loss": float(i)})
    first.finish(status="failed")
    second = tracker()
    assert second.init(resume="latest").run_id == info.run_id
    for i in range(100, 150):
        second.log({"loss": float(i)})
    second.finish()
    run = find_run(mlflow_server, experiment, info.run_id)  # still exactly one run
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted((p["step"], p["value"]) for p in points) == [(i, float(i)) for i in range(150)]
    assert run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert (tags["steplog.group"], tags["steplog.tags"]) == ("job-1", "ddp,small")


def test_a_run_resumed_with_a_changed_config_keeps_its_mlflow_params(mlflow_server, tmp_path):
    """MLflow refuses to change a param: a run resumed with a changed config goes on in
    the same MLflow run, whose params keep their first values; the new values are tags
    steplog.config.<key>, and new keys are params."""
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path),
        steplog.MlflowBackend(mlflow_server),
        experiment_name=experiment,
    )
    info = tracker.init({"lr": 0.1, "layers": 2})
    tracker.log({"loss": 1.0})
    tracker.finish(status="failed")
    tracker.init({"lr": 0.2, "warmup": 5}, resume=info.run_id)
    tracker.log({"loss": 0.5})
    stats = tracker.finish()
    assert stats.backends["mlflow"].delivered == 1
    run = find_run(mlflow_server, experiment, info.run_id)
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"lr": "0.1", "layers": "2", "warmup": "5"}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["steplog.config.lr"] == "0.2"
    assert run["info"]["status"] == "FINISHED"
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted((p["step"], p["value"]) for p in points) == [(0, 1.0), (1, 0.5)]


def test_replay_and_sync_give_mlflow_the_runs_group_tags_and_rank(
    mlflow_server, tmp_path, monkeypatch
):
    """A run replayed or synced from its file gets the steplog.group / steplog.tags /
    steplog.rank tags a live run gets (before: none of them)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    paths = []
    for _ in range(2):
        experiment = f"exp-{uuid.uuid4().hex[:8]}"
        tracker = steplog.Tracker(
            steplog.JsonlBackend(tmp_path), experiment_name=experiment, group="g", tags=["x"]
        )
        tracker.init()
        tracker.log({"loss": 1.0})
        tracker.finish()
        paths.append((experiment, tracker.backends[0].path))
    steplog.replay(paths[0][1], steplog.MlflowBackend(mlflow_server))
    sync(paths[1][1], steplog.MlflowBackend(mlflow_server))
    for experiment, path in paths:
        run = find_run(mlflow_server, experiment, steplog.read_run(path).run_id)
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert (tags["steplog.group"], tags["steplog.tags"], tags["steplog.rank"]) == (
            "g",
            "x",
            "1",
        )
