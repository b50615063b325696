"""One contract for every backend, built-in and ecosystem alike.

Each backend runs the same scenarios through a real tracker: mixed values (NaN, ±inf,
big ints, strings, bools, nested mappings, lists, None), odd keys, an empty run, a
failed run, and reuse of one backend instance for a second run. The contract: every
event is delivered, no backend call fails, and the backend can be reused.
Backend-specific read-back checks live in each backend's own test file.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Callable

import pytest

import steplog


def _mlflow(request, tmp_path):
    pytest.importorskip("httpx", reason="MlflowBackend needs httpx")
    url = request.getfixturevalue("mlflow_server")
    return steplog.MlflowBackend(url, experiment_name=f"contract-{uuid.uuid4().hex[:8]}")


def _wandb(request, tmp_path):
    pytest.importorskip("wandb", reason="WandbBackend needs wandb")
    return steplog.WandbBackend(project="contract", dir=tmp_path, mode="offline")


def _tensorboard(request, tmp_path):
    pytest.importorskip("crc32c", reason="TensorBoardBackend needs crc32c")
    return steplog.TensorBoardBackend(tmp_path / "tb")


def _trackio(request, tmp_path):
    pytest.importorskip("trackio", reason="TrackioBackend needs trackio")
    return steplog.TrackioBackend(project=f"contract-{uuid.uuid4().hex[:8]}")


def _liveplot(request, tmp_path):
    pytest.importorskip("matplotlib", reason="LivePlotBackend needs matplotlib")
    return steplog.LivePlotBackend()  # outside a notebook: draws nothing, delivers all


FACTORIES: dict[str, Callable] = {
    "jsonl": lambda request, tmp_path: steplog.JsonlBackend(tmp_path / "runs"),
    "memory": lambda request, tmp_path: steplog.MemoryBackend(),
    "console": lambda request, tmp_path: steplog.ConsoleBackend(file=io.StringIO()),
    "null": lambda request, tmp_path: steplog.NullBackend(),
    "sampled": lambda request, tmp_path: steplog.Sampled(
        steplog.MemoryBackend(), every=7, reduce="mean"
    ),
    "mlflow": _mlflow,
    "wandb": _wandb,
    "tensorboard": _tensorboard,
    "trackio": _trackio,
    "liveplot": _liveplot,
}

VALUES = [
    {"loss": 0.5, "n": 3, "s": "text", "ok": True},
    {"loss": math.nan, "big": 2**70, "neg": -(2**63)},
    {"loss": math.inf, "m": -math.inf, "nested": {"a": 1.0, "b": {"c": "deep"}}},
    {"list": [1, 2.5, "x"], "none": None, "empty": {}, "tuple": (1, 2)},
    {"loss/train": 1.0, "λ": 2.0, "with space": 3.0, "a.b": 4.0},
]


@pytest.fixture(params=list(FACTORIES))
def backend(request, tmp_path):
    return FACTORIES[request.param](request, tmp_path)


def deliver_ok(stats: steplog.RunStats, name: str, count: int) -> None:
    got = stats.backends[name]
    assert got.errors == 0, got.last_error
    assert got.delivered == count and got.failed == 0 and got.dropped == 0


def test_mixed_values_and_odd_keys_are_delivered_without_errors(backend):
    name = steplog.backends.base.backend_name(backend)
    tracker = steplog.Tracker(backend, experiment_name="contract")
    tracker.init({"lr": 0.1, "nested": {"x": [1, 2]}, "none": None, "inf": math.inf})
    for i in range(200):
        tracker.log(VALUES[i % len(VALUES)])
    stats = tracker.finish({"best": 0.5, "text": "done", "nan": math.nan})
    deliver_ok(stats, name, 200)


def test_one_backend_serves_two_runs_and_an_empty_one(backend):
    name = steplog.backends.base.backend_name(backend)
    tracker = steplog.Tracker(backend, experiment_name="contract")
    for run in range(2):
        tracker.init({"run": run})
        for i in range(50):
            tracker.log({"loss": float(i), "run": run})
        deliver_ok(tracker.finish(), name, 50)
    tracker.init()
    deliver_ok(tracker.finish(), name, 0)


def test_a_failed_run_closes_cleanly(backend):
    name = steplog.backends.base.backend_name(backend)
    tracker = steplog.Tracker(backend, experiment_name="contract")
    with pytest.raises(RuntimeError), tracker.run():
        tracker.log({"loss": 1.0})
        raise RuntimeError("optimizer blew up")
    stats = tracker.last_stats
    assert stats is not None
    deliver_ok(stats, name, 1)


def test_a_large_batch_is_delivered(backend):
    name = steplog.backends.base.backend_name(backend)
    tracker = steplog.Tracker(backend, experiment_name="contract", batch_size=4096)
    tracker.init()
    for i in range(5000):
        tracker.log({"loss": 1.0 / (i + 1), "step_value": i})
    deliver_ok(tracker.finish(), name, 5000)
