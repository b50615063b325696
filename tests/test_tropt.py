"""SteplogTracker through tropt's real BaseTracker (tropt 0.1.1 from PyPI)."""

from __future__ import annotations

import logging
import math

import pytest

import steplog

base = pytest.importorskip(
    "tropt.tracker.base", reason="tropt is not installed (.ci/run installs tropt==0.1.1)"
)
from steplog.integrations.tropt import SteplogTracker  # noqa: E402


def optimize(tracker, steps: int, fail_at: int | None = None) -> float:
    """What a tropt optimizer's wrapper does with its tracker."""
    tracker.init({"optimizer": "GCG", "n_steps": steps, "slices": [0, 5], "eps": None,
                  "budget": math.inf, "model": {"name": "gpt2", "dtype": "bf16"}})  # fmt: skip
    best = math.inf
    for step in range(steps):
        if step == fail_at:
            raise RuntimeError("CUDA out of memory")  # tropt then never calls finish()
        loss = 1.0 / (step + 1)
        best = min(best, loss)
        data = {"loss": loss, "best_loss": best, "trigger": f"tok{step}"}
        if step % 10 == 0:
            data["eval_acc"] = step / steps  # key set changes between steps
        tracker.log(data)
    tracker.finish({"best_loss": best, "best_trigger": f"tok{steps - 1}"})
    return best


def test_it_is_a_tropt_tracker_and_records_the_optimizer_run(tmp_path):
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = SteplogTracker(jsonl, experiment_name="gcg", experiment_config={"seed": 0})
    assert isinstance(tracker, base.BaseTracker)
    optimize(tracker, 500)
    run = steplog.read_run(jsonl.path)
    assert run.status == "finished"
    assert run.config == {
        "seed": 0, "optimizer": "GCG", "n_steps": 500, "slices": [0, 5], "eps": None,
        "budget": math.inf, "model": {"name": "gpt2", "dtype": "bf16"},
    }  # fmt: skip
    assert [e.step for e in run.records] == list(range(500))
    assert len(run.history["eval_acc"]) == 50
    assert run.summary["best_trigger"] == "tok499"
    assert tracker.last_stats is not None and tracker.last_stats.written == 500


def test_a_raising_optimization_is_recorded_unfinished_by_the_next_init(tmp_path, caplog):
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = SteplogTracker(jsonl, experiment_name="gcg")
    with pytest.raises(RuntimeError):
        optimize(tracker, 100, fail_at=40)
    first = jsonl.path
    with caplog.at_level(logging.WARNING):
        optimize(tracker, 20)  # tropt's BaseTracker auto-finishes the abandoned run
    assert "Auto-finishing the previous run" in caplog.text
    crashed = steplog.read_run(first)
    assert crashed.status == "unfinished" and len(crashed.records) == 40
    assert steplog.read_run(jsonl.path).status == "finished"


def test_tropt_lifecycle_guards_still_apply(tmp_path, caplog):
    tracker = SteplogTracker(steplog.JsonlBackend(tmp_path))
    with caplog.at_level(logging.WARNING):
        tracker.finish()
    assert "inactive" in caplog.text
    with pytest.raises(AssertionError):  # tropt's own guard: log() before init()
        tracker.log({"loss": 1.0})


def test_torch_tensors_from_the_optimizer_are_handled_by_the_worker(tmp_path):
    torch = pytest.importorskip("torch")
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = SteplogTracker(jsonl)
    tracker.init({})
    for step in range(10):
        tracker.log({"loss": torch.tensor(step * 0.5), "grads": torch.arange(3.0) * step})
    tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.history["loss"] == [step * 0.5 for step in range(10)]
    assert run.history["grads"][-1] == [0.0, 9.0, 18.0]
