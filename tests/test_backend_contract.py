"""One contract for every backend, built-in and ecosystem alike.

Each backend runs the scenarios of the public suite (``steplog.testing.BackendContract``,
which third-party backends run too) through a real tracker: mixed values (NaN, ±inf,
big ints, strings, bools, nested mappings, lists, None), odd keys, an empty run, a
failed run, reuse of one instance for a second run, a large batch. The contract: every
event is delivered, no backend call fails, and the backend can be reused.
Backend-specific read-back checks live in each backend's own test file.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pytest

import steplog
from steplog.testing import BackendContract, check_backend


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


class TestEveryBackend(BackendContract):
    """The public contract suite (steplog.testing.BackendContract), for each backend."""

    @pytest.fixture(
        autouse=True,
        params=[
            # a real MLflow server; W&B starts its service process for each run; trackio
            # its storage (seconds a run): their own test files keep a fast test each
            pytest.param(name, marks=pytest.mark.slow)
            if name in ("mlflow", "wandb", "trackio")
            else name
            for name in FACTORIES
        ],
    )
    def _factory(self, request):
        self.factory = FACTORIES[request.param]
        self.request = request

    def make_backend(self, tmp_path):
        return self.factory(self.request, tmp_path)

    def read_steps(self, backend):
        # Where the test can read back what a backend stored, check exactly-once too.
        if type(backend) is steplog.MemoryBackend:
            return [event.step for event in backend.records]
        if type(backend) is steplog.JsonlBackend:
            return [event.step for event in steplog.read_run(backend.path).records]
        return None


def test_check_backend_runs_outside_pytest_and_catches_a_lossy_backend():
    """check_backend() runs the same scenarios without pytest; a backend that stores a
    batch twice fails it with a message."""
    check_backend(lambda tmp: steplog.MemoryBackend(), lambda b: [e.step for e in b.records])

    class Doubles(steplog.MemoryBackend):
        async def write(self, events):
            await super().write(events)
            await super().write(events)

    with pytest.raises(AssertionError, match="twice"):
        check_backend(lambda tmp: Doubles(), lambda b: [e.step for e in b.records])
