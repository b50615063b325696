"""One contract for every backend, built-in and ecosystem alike.

Each backend runs the scenarios of the public suite (``steplog.testing.BackendContract``,
which third-party backends run too) through a real tracker: mixed values (NaN, ±inf,
big ints, strings, bools, nested mappings, lists, None), odd keys, an empty run, a
failed run, reuse of one instance for a second run, a large batch. The contract: every
event is delivered, no backend call fails, and the backend can be reused.
Backend-specific read-back checks live in each backend's own test file. Last, which
path a backend takes is declared: a ``SyncBackend`` is written by the writer thread
itself, unless a subclass replaced its async methods or said ``local = False``.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable

import orjson
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


# -- SyncBackend: the backends the writer thread writes itself, declared ---------------


def _thread() -> str:
    return threading.current_thread().name


class Lines(steplog.SyncBackend):
    """A synchronous backend of one's own: keeps the JSON lines of each batch."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.threads: set[str] = set()

    def open_sync(self, run, encoder):
        self.threads.add(_thread())

    def write_sync(self, events):
        self.threads.add(_thread())
        assert isinstance(events, steplog.EventBatch)
        self.data += events.data

    def close_sync(self, end):
        self.threads.add(_thread())


class NotingThreads(steplog.MemoryBackend):
    """A memory backend that notes which threads call its write_sync."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def write_sync(self, events):
        self.threads.add(_thread())
        super().write_sync(events)


def _run(*backends, n=100):
    tracker = steplog.Tracker(*backends, experiment_name="declared")
    tracker.init()
    for step in range(n):
        tracker.log({"x": step})
    return tracker.finish()


def test_a_sync_backend_of_ones_own_is_written_by_the_writer_thread(tmp_path):
    """A SyncBackend subclass gets every batch as its JSON lines, from the run's writer
    thread itself (no fan-out loop), and is counted like any backend."""
    lines = Lines()
    stats = _run(steplog.NullBackend(), lines)
    assert {name.split("-")[1] for name in lines.threads} == {"writer"}
    steps = [orjson.loads(line)["step"] for line in bytes(lines.data).splitlines()]
    assert steps == list(range(100))
    assert stats.backends["lines"].delivered == 100


def test_a_memory_backend_whose_write_is_replaced_gets_its_override_called():
    """A MemoryBackend subclass that replaces the async write (written against the
    Backend contract) is not synchronous: the fan-out drives it, so its override runs
    for every batch; one that replaces write_sync stays on the writer thread."""

    class Counting(steplog.MemoryBackend):
        calls = 0

        def __init__(self):
            super().__init__()
            self.threads: set[str] = set()

        async def write(self, events):
            type(self).calls += 1
            self.threads.add(_thread())
            await super().write(events)

    class CountingSync(NotingThreads):
        pass

    assert steplog.MemoryBackend.synchronous and CountingSync.synchronous
    assert not Counting.synchronous
    counting, counting_sync = Counting(), CountingSync()
    stats = _run(counting, counting_sync)
    assert Counting.calls > 0
    assert {name.split("-")[1] for name in counting.threads} == {"fanout"}
    assert {name.split("-")[1] for name in counting_sync.threads} == {"writer"}
    for backend in (counting, counting_sync):
        assert [e.step for e in backend.records] == list(range(100))
    assert stats.backends["counting"].delivered == stats.backends["countingsync"].delivered


def test_a_jsonl_subclass_that_replaces_write_still_writes_a_whole_run_file(tmp_path):
    """A JsonlBackend subclass that replaces write runs its override (through the
    fan-out) and its file is the same run as the built-in one writes."""

    class Counting(steplog.JsonlBackend):
        calls = 0

        async def write(self, events):
            type(self).calls += 1
            await super().write(events)

    assert steplog.JsonlBackend.synchronous and not Counting.synchronous
    backend = Counting(tmp_path)
    stats = _run(backend)
    assert Counting.calls > 0
    run = steplog.read_run(backend.path)
    assert run.history["x"] == list(range(100)) and run.status == "finished"
    assert stats.backends["counting"].delivered == 100


def test_a_sync_backend_that_says_local_false_follows_the_run_file():
    """local = False makes a SyncBackend remote: its lane follows the run file (here in
    a thread of this process), calling the async methods, which call the sync ones."""

    class Remote(NotingThreads):
        local = False
        movable = False

    remote = Remote()
    stats = _run(remote)
    assert [e.step for e in remote.records] == list(range(100))
    assert {name.split("-")[1] for name in remote.threads} == {"lanes"}
    assert stats.backends["remote"].delivered == 100


def test_a_jsonl_backend_that_says_local_false_is_not_the_run_file(tmp_path):
    """A JSONL subclass marked remote follows a run file like any remote backend: the
    tracker adds the default run file for it instead of treating it as the run file."""

    class Mirror(steplog.JsonlBackend):
        local = False
        movable = False

    mirror = Mirror(tmp_path / "mirror")
    tracker = steplog.Tracker(mirror, experiment_name="declared")
    tracker.init()
    for step in range(100):
        tracker.log({"x": step})
    stats = tracker.finish()
    assert stats.backends["mirror"].delivered == 100
    (run_file,) = [b for b in tracker.backends if type(b) is steplog.JsonlBackend]
    assert run_file.path is not None and tmp_path / "mirror" not in run_file.path.parents
    assert steplog.read_run(run_file.path).history["x"] == list(range(100))
    copies = list((tmp_path / "mirror").rglob("*.jsonl"))
    assert len(copies) == 1 and steplog.read_run(copies[0]).history["x"] == list(range(100))


@pytest.mark.parametrize("answer", [None, -1, 10**9, "3"])
def test_a_discard_sync_with_a_wrong_answer_costs_that_backend_only(tmp_path, answer, caplog):
    """A SyncBackend whose discard_sync forgets to return a count (or miscounts) after
    a failed batch is counted as having stored none of it, with the reason logged: the
    writer thread, the run file and the run's end are unaffected (before: the writer
    died on `int += None`, the file stopped and finish() raised WorkerError)."""

    class Broken(steplog.SyncBackend):
        def open_sync(self, run, encoder):
            pass

        def write_sync(self, events):
            raise RuntimeError("down")

        def discard_sync(self):
            return answer

        def close_sync(self, end):
            pass

    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(
        jsonl, Broken(), batch_size=100, retry=steplog.RetryPolicy(retries=0, breaker_after=1000)
    )
    tracker.init()
    for step in range(2_000):
        tracker.log({"x": step})
    stats = tracker.finish()
    run = steplog.read_run(jsonl.path)
    assert run.status == "finished" and run.history["x"] == list(range(2_000))
    broken = stats.backends["broken"]
    assert broken.delivered == 0 and broken.failed == 2_000
    assert "discard_sync() must return" in (broken.last_error or "")
