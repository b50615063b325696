"""steplog against the trackers users would otherwise pick, side by side in one run.

Every contender runs in a fresh subprocess on the same workload: a 10-key dict per step
(8 floats, an int ``iteration``, a short string). For each one this measures

* ``log()`` cost per call (p50, p99, max; timer overhead removed);
* the slowdown of a loop whose steps do ~100 µs of numpy work, against the same loop
  without logging, with interleaved repetitions (every contender once per round), plus
  the CPU time of the whole process tree (helper processes and threads included) per
  step over no logging;
* time to finish/flush and the peak RSS of the process;
* how many records reached storage, read back with the contender's own reader and
  counted (never taken from the contender's word);
* after a hard ``os._exit`` without finish: how many records survived, and how many of
  those logged more than 100 ms (steplog's ``flush_interval``) before the exit were lost;
* sustained events/s (log as fast as possible, then finish).

Scaling mode (steplog, with the floor and naive JSONL for reference): cost per event as
the dict grows from 1 to 100 keys, and what happens as the offered rate rises until
steplog drops (``drop_newest``) or blocks (``block``).

Run::

    pip install -e ".[bench]" && python benchmarks/compare.py

``--quick`` is a smoke run (small sizes, one repetition); ``--write`` puts the tables
into docs/benchmarks.md (between the ``compare`` markers), the raw figures into
docs/compare.json and the chart into docs/compare_log_cost.png.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import importlib
import importlib.metadata
import json
import logging
import logging.handlers
import os
import platform
import queue
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DOCS = REPO / "docs"
FLUSH_INTERVAL = 0.1  # steplog's default; the hard-exit promise is stated against it
MARK_START = "<!-- compare:start -->"
MARK_END = "<!-- compare:end -->"

# Steps per mode by tier: the slow trackers would take minutes at the fast tier's sizes.
SIZES = {
    #         cost calls, loop steps, throughput events
    "fast": (100_000, 10_000, 1_000_000),
    "medium": (10_000, 5_000, 10_000),
    "slow": (2_000, 2_000, 2_000),
}
EXIT_STEPS = 2_000


def make_record(i: int, x: float, keys: int = 10) -> dict[str, Any]:
    """The workload: 8 floats, an int and a short string (or ``keys`` floats + int)."""
    if keys != 10:
        record: dict[str, Any] = {f"m{j}": x + j for j in range(keys - 1)}
        record["iteration"] = i
        return record
    return {
        "loss": x,
        "best_loss": x * 0.5,
        "grad_norm": x * 1.5,
        "lr": 0.001,
        "temperature": x * 0.1,
        "accept_rate": 0.25,
        "entropy": x + 1.0,
        "kl": x * 0.01,
        "iteration": i,
        "trigger": "abc xyz",
    }


NUMERIC = ("loss", "best_loss", "grad_norm", "lr", "temperature", "accept_rate", "entropy", "kl")


# ── contenders ─────────────────────────────────────────────────────────────────────────
#
# Each runs in its own process. ``kept`` runs in yet another process after the run and
# returns the ``iteration`` values found in storage, read with the tool's own reader.


class Contender:
    label: ClassVar[str]
    tier: ClassVar[str] = "fast"
    package: ClassVar[str | None] = None  # distribution whose version is reported
    storage: ClassVar[bool] = True  # False: keeps records in memory only
    imports: ClassVar[tuple[str, ...]] = ()  # imported before the CPU clock starts
    lossless: ClassVar[bool] = True  # False: drops by design under overload (no throughput)
    note: ClassVar[str] = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def start(self) -> None:
        pass

    def log(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def extra(self) -> dict[str, Any]:
        """Figures the contender reports about itself (shown as notes, never counted)."""
        return {}

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return []


class NoLogging(Contender):
    label = "no logging"
    storage = False

    def log(self, data: dict[str, Any]) -> None:
        pass


class DequeFloor(Contender):
    label = "deque.append(dict(d)) floor"
    storage = False
    note = "in-process enqueue only: nothing is written"

    def start(self) -> None:
        self.queue: deque[dict[str, Any]] = deque(maxlen=65_536)

    def log(self, data: dict[str, Any]) -> None:
        self.queue.append(dict(data))


def _jsonl_iterations(path: Path, get: Callable[[Any], int]) -> list[int]:
    out = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append(get(json.loads(line)))
    return out


class NaiveJsonl(Contender):
    """The strongest inline write (issue #26), as far as this harness allows: every
    contender is called through ``log()``, so this one pays a method call and a step
    counter that ``bench_core.INLINE`` (written in the loop itself) does not."""

    label = "orjson + one buffered write (the inline write, as a method)"
    package = "orjson"
    imports = ("orjson",)

    def start(self) -> None:
        import orjson

        self.dumps = orjson.dumps
        self.option = orjson.OPT_APPEND_NEWLINE
        # A 64 KiB buffer, as a careful user opens it. noqa: closed in finish
        self.file = open(self.workdir / "naive.jsonl", "wb", buffering=65536)  # noqa: SIM115
        self.step = 0

    def log(self, data: dict[str, Any]) -> None:
        self.file.write(
            self.dumps({"step": self.step, "time": time.time(), "data": data}, option=self.option)
        )
        self.step += 1

    def finish(self) -> None:
        self.file.close()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return _jsonl_iterations(workdir / "naive.jsonl", lambda r: r["data"]["iteration"])


class SeedStyle(Contender):
    label = "seed style (accumulate, json.dump at finish)"
    note = "tropt's JSONTracker pattern: per-key lists, one json.dump(indent=4) at finish"

    def start(self) -> None:
        self.data: defaultdict[str, list[Any]] = defaultdict(list)
        self.data["config"] = [{"bench": True}]

    def log(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            self.data[key].append(value)

    def finish(self) -> None:
        with open(self.workdir / "seed.json", "w") as f:
            json.dump(self.data, f, indent=4)

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        path = workdir / "seed.json"
        if not path.exists():
            return []
        return list(json.loads(path.read_text())["iteration"])


class _JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        import orjson

        self.dumps = orjson.dumps

    def format(self, record: logging.LogRecord) -> str:
        return self.dumps({"time": record.created, "data": record.msg}).decode()


class StdlibQueue(Contender):
    label = "stdlib QueueHandler + QueueListener"
    tier = "medium"
    imports = ("orjson",)
    note = "JSON formatted in QueueHandler.prepare (the caller's thread), FileHandler writes"

    def start(self) -> None:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        handler = logging.handlers.QueueHandler(q)
        handler.setFormatter(_JsonFormatter())
        file_handler = logging.FileHandler(self.workdir / "stdlib.jsonl")
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        self.listener = logging.handlers.QueueListener(q, file_handler)
        self.listener.start()
        self.logger = logging.getLogger("bench")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(handler)
        self.file_handler = file_handler

    def log(self, data: dict[str, Any]) -> None:
        self.logger.info(data)

    def finish(self) -> None:
        self.listener.stop()
        self.file_handler.close()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return _jsonl_iterations(workdir / "stdlib.jsonl", lambda r: r["data"]["iteration"])


class Loguru(Contender):
    label = "loguru enqueue=True"
    tier = "medium"
    package = "loguru"
    imports = ("loguru",)
    note = "serialize=True; the dict goes in as the record's extra fields"

    def start(self) -> None:
        from loguru import logger

        logger.remove()
        logger.add(self.workdir / "loguru.jsonl", enqueue=True, serialize=True, format="{message}")
        self.logger = logger

    def log(self, data: dict[str, Any]) -> None:
        self.logger.info("step", **data)

    def finish(self) -> None:
        self.logger.complete()
        self.logger.remove()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return _jsonl_iterations(
            workdir / "loguru.jsonl", lambda r: r["record"]["extra"]["iteration"]
        )


class Wandb(Contender):
    label = "W&B offline"
    tier = "slow"
    package = "wandb"
    imports = ("wandb",)

    def start(self) -> None:
        import wandb

        self.run = wandb.init(
            mode="offline", dir=str(self.workdir), project="bench", config={"bench": True}
        )

    def log(self, data: dict[str, Any]) -> None:
        self.run.log(data)

    def finish(self) -> None:
        self.run.finish()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        # W&B's transaction log, parsed with W&B's own protobufs (the tests' reader).
        sys.path.insert(0, str(REPO / "tests"))
        from wandb_offline import read_offline_history

        out = []
        for run_dir in glob.glob(str(workdir / "wandb" / "offline-run-*")):
            out.extend(int(row["iteration"]) for row in read_offline_history(run_dir))
        return out


class Mlflow(Contender):
    label = "MLflow synchronous=False (sqlite)"
    tier = "slow"
    package = "mlflow"
    imports = ("mlflow",)
    note = "numeric keys as metrics with step; MLflow has no per-step strings (string dropped)"

    def tracking(self) -> tuple[str, str]:
        """The tracking URI and the experiment: a local sqlite store."""
        return f"sqlite:///{self.workdir / 'mlflow.db'}", "bench"

    def start(self) -> None:
        import mlflow

        uri, experiment = self.tracking()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        mlflow.start_run()
        mlflow.log_params({"bench": True})
        self.mlflow = mlflow

    def log(self, data: dict[str, Any]) -> None:
        metrics = {k: data[k] for k in NUMERIC}
        metrics["iteration"] = data["iteration"]
        self.mlflow.log_metrics(metrics, step=data["iteration"], synchronous=False)

    def finish(self) -> None:
        self.mlflow.end_run()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        db = workdir / "mlflow.db"
        if not db.exists():
            return []
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("bench")
        if experiment is None:
            return []
        out = []
        for run in client.search_runs([experiment.experiment_id]):
            history = client.get_metric_history(run.info.run_id, "iteration")
            out.extend(int(m.value) for m in history)
        return out


class TensorboardX(Contender):
    label = "tensorboardX SummaryWriter"
    tier = "slow"
    package = "tensorboardX"
    imports = ("tensorboardX",)
    note = "add_scalar per numeric key; the string is dropped (add_text per step is slower)"

    def start(self) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(self.workdir / "tb"))

    def log(self, data: dict[str, Any]) -> None:
        step = data["iteration"]
        for key in NUMERIC:
            self.writer.add_scalar(key, data[key], step)
        self.writer.add_scalar("iteration", step, step)

    def finish(self) -> None:
        self.writer.close()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        out = []
        for path in glob.glob(str(workdir / "tb" / "events.out.tfevents.*")):
            for event in EventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.tag == "iteration":
                        out.append(int(event.step))
        return out


class Trackio(Contender):
    label = "trackio local"
    tier = "medium"
    package = "trackio"
    imports = ("trackio",)

    def start(self) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project="bench", name="run", config={"bench": True}, embed=False)

    def log(self, data: dict[str, Any]) -> None:
        self.trackio.log(data)

    def finish(self) -> None:
        self.trackio.finish()

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        from trackio.sqlite_storage import SQLiteStorage

        if not (workdir / "bench.db").exists():
            return []
        return [int(r["iteration"]) for r in SQLiteStorage.get_logs("bench", "run")]


class _Steplog(Contender):
    package = "steplog"
    imports = ("steplog",)
    overflow: ClassVar[str] = "block"
    slow_backend: ClassVar[bool] = False

    def start(self) -> None:
        import steplog

        backends: list[steplog.Backend] = [steplog.JsonlBackend(self.workdir / "runs")]
        if self.slow_backend:
            backends.append(_slow_backend())
        self.tracker = steplog.Tracker(*backends, experiment_name="bench", overflow=self.overflow)
        self.tracker.init({"bench": True})

    def log(self, data: dict[str, Any]) -> None:
        self.tracker.log(data)

    def finish(self) -> None:
        self.tracker.finish()

    def extra(self) -> dict[str, Any]:
        stats = self.tracker.last_stats
        if stats is None:
            return {}
        return {
            "logged": stats.logged,
            "dropped": stats.dropped,
            "backends": {name: b.delivered for name, b in stats.backends.items()},
        }

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        from steplog import read_run

        out = []
        for path in (workdir / "runs").rglob("*.jsonl"):
            out.extend(int(v) for v in read_run(path).history.get("iteration", []))
        return out


def _mlflow_url() -> str:
    url = os.environ.get("BENCH_MLFLOW_URL")
    if not url:
        raise RuntimeError("no MLflow server: the parent starts one (BENCH_MLFLOW_URL)")
    return url


def _mlflow_server_iterations(experiment: str) -> list[int]:
    """The ``iteration`` metric points of every run of ``experiment`` on the bench's
    MLflow server (read back over its REST API)."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import history, mlflow_api

    url = _mlflow_url()
    found = mlflow_api(url, "experiments/get-by-name", {"experiment_name": experiment})
    if "experiment" not in found:
        return []
    runs = mlflow_api(
        url,
        "runs/search",
        {"experiment_ids": [found["experiment"]["experiment_id"]]},
        method="POST",
    ).get("runs", [])
    out = []
    for run in runs:
        out.extend(int(float(m["value"])) for m in history(url, run["info"]["run_id"], "iteration"))
    return out


def _settled(read: Callable[[], list[int]], quiet: float = 2.0, limit: float = 120.0) -> list[int]:
    """``read()`` once its result has stopped growing for ``quiet`` seconds (a delivery
    process may still be sending what the killed contender logged)."""
    deadline = time.monotonic() + limit
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if len(now) != len(last):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


class MlflowServerClient(Mlflow):
    """MLflow's own client as :class:`Mlflow` logs, into the tracking server."""

    label = "MLflow client → server, synchronous=False"
    note = "numeric keys as metrics with step (no per-step strings)"

    def tracking(self) -> tuple[str, str]:
        return _mlflow_url(), f"bench-{self.workdir.name}"

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return _settled(lambda: _mlflow_server_iterations(f"bench-{workdir.name}"))


class _SteplogRemote(Contender):
    """steplog with its run file and a remote backend beside it, fed by the backend's lane
    from the delivery process; ``kept`` reads what reached the remote backend."""

    package = "steplog"
    imports = ("steplog",)

    def remote(self) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        import steplog

        self.tracker = steplog.Tracker(
            steplog.JsonlBackend(self.workdir / "runs"), self.remote(), experiment_name="bench"
        )
        self.tracker.init({"bench": True})

    def log(self, data: dict[str, Any]) -> None:
        self.tracker.log(data)

    def finish(self) -> None:
        self.tracker.finish()


class SteplogMlflow(_SteplogRemote):
    label = "steplog + MlflowBackend → server"
    tier = "medium"

    def remote(self) -> Any:
        import steplog

        return steplog.MlflowBackend(_mlflow_url(), experiment_name=f"bench-{self.workdir.name}")

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        return _settled(lambda: _mlflow_server_iterations(f"bench-{workdir.name}"))


class SteplogWandb(_SteplogRemote):
    label = "steplog + WandbBackend (offline)"
    tier = "medium"

    def remote(self) -> Any:
        import steplog

        return steplog.WandbBackend(project="bench", dir=self.workdir)

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        def read() -> list[int]:
            sys.path.insert(0, str(REPO / "tests"))
            from wandb_offline import read_offline_history

            out = []
            for run_dir in glob.glob(str(workdir / "wandb" / "offline-run-*")):
                out.extend(int(row["iteration"]) for row in read_offline_history(run_dir))
            return out

        return _settled(read)


class SteplogTensorboard(_SteplogRemote):
    label = "steplog + TensorBoardBackend"
    tier = "medium"

    def remote(self) -> Any:
        import steplog

        return steplog.TensorBoardBackend(self.workdir / "tb")

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        def read() -> list[int]:
            from tensorboard.backend.event_processing.event_file_loader import (
                EventFileLoader,
            )

            out = []
            for path in glob.glob(str(workdir / "tb" / "**" / "events.out.tfevents.*"),
                                  recursive=True):  # fmt: skip
                for event in EventFileLoader(path).Load():
                    for value in event.summary.value:
                        if value.tag == "iteration":
                            out.append(int(event.step))
            return out

        return _settled(read)


class SteplogTrackio(_SteplogRemote):
    label = "steplog + TrackioBackend (local)"
    tier = "medium"

    def remote(self) -> Any:
        import steplog

        return steplog.TrackioBackend(project="bench-steplog")

    @staticmethod
    def kept(workdir: Path) -> list[int]:
        def read() -> list[int]:
            from trackio.sqlite_storage import SQLiteStorage

            if not (workdir / "bench-steplog.db").exists():
                return []
            out = []
            for run in SQLiteStorage.get_runs("bench-steplog"):
                out.extend(
                    int(r["iteration"])
                    for r in SQLiteStorage.get_logs("bench-steplog", run)
                    if "iteration" in r
                )
            return out

        return _settled(read)


def _slow_backend() -> Any:
    import anyio

    import steplog

    class Slow(steplog.Backend):
        """A remote service answering in 20 ms per batch (simulated with a sleep)."""

        name = "slow20ms"

        async def open(self, run: Any) -> None:
            pass

        async def write(self, events: Sequence[Any]) -> None:
            await anyio.sleep(0.02)

        async def close(self, end: Any) -> None:
            pass

    return Slow()


class SteplogBlock(_Steplog):
    label = "steplog JSONL (block)"


class SteplogDropOldest(_Steplog):
    label = "steplog JSONL (drop_oldest)"
    overflow = "drop_oldest"
    lossless = False


class SteplogDropNewest(_Steplog):
    label = "steplog JSONL (drop_newest)"
    overflow = "drop_newest"
    lossless = False


class SteplogSlowDropOldest(_Steplog):
    label = "steplog JSONL + 20 ms/batch backend (drop_oldest)"
    overflow = "drop_oldest"
    lossless = False
    slow_backend = True
    note = "the slow backend follows the run file (its lane, here a thread): it never sheds"


class SteplogSlowBlock(_Steplog):
    label = "steplog JSONL + 20 ms/batch backend (block)"
    slow_backend = True
    note = "the slow backend follows the run file: the loop never waits for it"


CONTENDERS: dict[str, type[Contender]] = {
    "none": NoLogging,
    "deque": DequeFloor,
    "naive": NaiveJsonl,
    "seed": SeedStyle,
    "stdlib": StdlibQueue,
    "loguru": Loguru,
    "wandb": Wandb,
    "mlflow": Mlflow,
    "tensorboardx": TensorboardX,
    "trackio": Trackio,
    "steplog": SteplogBlock,
    "steplog-drop_oldest": SteplogDropOldest,
    "steplog-drop_newest": SteplogDropNewest,
    "steplog-slow-drop_oldest": SteplogSlowDropOldest,
    "steplog-slow-block": SteplogSlowBlock,
    "mlflow-server": MlflowServerClient,
    "steplog-mlflow": SteplogMlflow,
    "steplog-wandb": SteplogWandb,
    "steplog-tensorboard": SteplogTensorboard,
    "steplog-trackio": SteplogTrackio,
}
#: Contenders that write to the same remote tools as one another (the second table),
#: and those of them that appear there only.
REMOTE_ONLY = ("mlflow-server", "steplog-mlflow", "steplog-wandb", "steplog-tensorboard",
               "steplog-trackio")  # fmt: skip
REMOTE = ("mlflow-server", "steplog-mlflow", "wandb", "steplog-wandb", "tensorboardx",
          "steplog-tensorboard", "trackio", "steplog-trackio")  # fmt: skip
REFERENCE = "steplog"


# ── the child process ──────────────────────────────────────────────────────────────────


def numpy_work(repeat: int) -> Callable[[], float]:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64))
    b = rng.standard_normal((64, 64))

    def step() -> float:
        total = 0.0
        for _ in range(repeat):
            total += float((a @ b).sum())
        return total

    return step


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timer_overhead() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        t0 = clock()
        samples.append(clock() - t0)
    return statistics.median(samples)


def child(name: str, mode: str, workdir: Path, n: int, repeat: int, keys: int, rate: float) -> None:
    contender = CONTENDERS[name](workdir)
    # numpy is loaded in every child, as in any real optimizer loop (it also switches on
    # steplog's check for arrays among the logged values, which is part of its cost).
    for module in ("numpy", *contender.imports):
        importlib.import_module(module)
    work = numpy_work(repeat) if mode in ("loop", "exit") else None
    records = [make_record(i, i * 1e-6, keys) for i in range(min(n, 100_000))]
    result: dict[str, Any] = {}
    contender.start()
    cpu_start = self_cpu()
    if mode == "cost":
        overhead = timer_overhead()
        clock = time.perf_counter_ns
        log = contender.log
        samples = [0] * n
        for i in range(n):
            record = make_record(i, i * 1e-6, keys)
            t0 = clock()
            log(record)
            samples[i] = clock() - t0
        samples.sort()
        result["p50"] = (samples[n // 2] - overhead) / 1e3
        result["p99"] = (samples[min(n - 1, int(n * 0.99))] - overhead) / 1e3
        result["max"] = (samples[-1] - overhead) / 1e3
        result["mean"] = (sum(samples) / n - overhead) / 1e3
    elif mode == "throughput":
        log = contender.log
        t0 = time.perf_counter()
        for i in range(n):
            log(records[i % len(records)] | {"iteration": i})
        result["log_s"] = time.perf_counter() - t0
    elif mode == "rate":
        log = contender.log
        clock = time.perf_counter
        period = 1.0 / rate
        t0 = clock()
        late = 0.0
        for i in range(n):
            due = t0 + i * period
            now = clock()
            while now < due:
                now = clock()
            late = max(late, now - due)
            log(records[i % len(records)] | {"iteration": i})
        result["log_s"] = clock() - t0
        result["max_late"] = late
    elif mode in ("loop", "exit"):
        assert work is not None
        log = contender.log
        done = [0.0] * n
        t0 = time.perf_counter()
        for i in range(n):
            x = work()
            log(make_record(i, x, keys))
            done[i] = time.perf_counter()
        end = time.perf_counter()
        result["loop_s"] = end - t0
        if mode == "exit":
            ages = json.dumps([end - t for t in done]).encode()
            fd = os.open(workdir / "exit-ages.json", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, ages)
            os.close(fd)
            os._exit(0)  # no finish, no atexit handlers, no buffered-file flushes
    t0 = time.perf_counter()
    contender.finish()
    result["finish_s"] = time.perf_counter() - t0
    # CPU from the first log() to the end of finish(): every thread of this process, plus
    # helper processes it started and reaped (their whole life, e.g. W&B's wandb-core).
    helpers = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu"] = self_cpu() - cpu_start + helpers.ru_utime + helpers.ru_stime
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["extra"] = contender.extra()
    print("RESULT " + json.dumps(result), flush=True)


def count_child(name: str, workdir: Path) -> None:
    kept = CONTENDERS[name].kept(workdir)
    print("RESULT " + json.dumps(kept), flush=True)


# ── the parent ────────────────────────────────────────────────────────────────────────


def child_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_SILENT="true",
        WANDB_MODE="offline",
        WANDB_DIR=str(workdir),
        WANDB_CACHE_DIR=str(workdir / "wandb-cache"),
        WANDB_CONFIG_DIR=str(workdir / "wandb-config"),
        TRACKIO_DIR=str(workdir),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        PYTHONWARNINGS="ignore",
        # The workload is a single-threaded loop: BLAS threads spinning on the other core
        # would make the CPU figures measure OpenBLAS, not the logger.
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        GIT_PYTHON_REFRESH="quiet",
    )
    return env


def run_child(args: list[str], workdir: Path, timeout: float = 600) -> tuple[Any, float]:
    """Run a child; return its RESULT and the CPU seconds of its whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, str(HERE), *args],
        env=child_env(workdir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:]), cpu
    if proc.returncode == 0 and "exit" in args:
        return None, cpu
    raise RuntimeError(
        f"child {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-500:]}"
    )


class Session:
    def __init__(self, root: Path, repeat: int) -> None:
        self.root = root
        self.repeat = repeat
        self.counter = 0

    def run(
        self, name: str, mode: str, n: int, keys: int = 10, rate: float = 0.0
    ) -> dict[str, Any]:
        self.counter += 1
        workdir = self.root / f"{self.counter:04d}-{name}-{mode}"
        workdir.mkdir()
        try:
            args = ["--child", name, mode, str(workdir), str(n), str(self.repeat)]
            args += [str(keys), str(rate)]
            result, tree_cpu = run_child(args, workdir)
            result = result or {}
            if mode == "exit":
                ages = json.loads((workdir / "exit-ages.json").read_text())
                result["ages"] = ages
            else:
                result["tree_cpu"] = tree_cpu
            if CONTENDERS[name].storage:
                kept, _ = run_child(["--count", name, str(workdir)], workdir)
                result["kept"] = len(kept)
                result["kept_unique"] = len(set(kept))
                if mode == "exit":
                    have = set(kept)
                    result["lost_old"] = sum(
                        1
                        for i, age in enumerate(result["ages"])
                        if age > FLUSH_INTERVAL and i not in have
                    )
                    result["old"] = sum(1 for age in result["ages"] if age > FLUSH_INTERVAL)
            result.pop("ages", None)
            return result
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    ok, missing = [], {}
    for name in names:
        package = CONTENDERS[name].package
        if package is None or package == "steplog":
            ok.append(name)
            continue
        try:
            importlib.metadata.version(package)
            ok.append(name)
        except importlib.metadata.PackageNotFoundError:
            missing[name] = f"{package} not installed (pip install -e '.[bench]')"
    return ok, missing


def calibrate(target_us: float = 100.0) -> tuple[int, float]:
    one = numpy_work(1)
    for _ in range(200):
        one()
    t0 = time.perf_counter()
    for _ in range(2000):
        one()
    per = (time.perf_counter() - t0) / 2000 * 1e6
    repeat = max(1, round(target_us / per))
    return repeat, per * repeat


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    out = {}
    for package in (
        "steplog", "orjson", "numpy", "loguru", "wandb", "mlflow", "tensorboardX",
        "tensorboard", "trackio",
    ):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per mode (>= 3)")
    parser.add_argument("--loop-reps", type=int, default=5, help="repetitions of the loop")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 rep")
    parser.add_argument("--only", help="comma-separated contender keys")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling modes")
    parser.add_argument("--write", action="store_true", help="update docs/ with the results")
    parser.add_argument(
        "--render", metavar="JSON", help="only redraw the table and chart from a saved run"
    )
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, mode, workdir, n, repeat, keys, rate = args.child
        child(name, mode, Path(workdir), int(n), int(repeat), int(keys), float(rate))
        return
    if args.count:
        count_child(args.count[0], Path(args.count[1]))
        return
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report["loop_none"] = {int(k): v for k, v in report["loop_none"].items()}
        markdown = render(report)
        print(markdown)
        if args.write:
            chart(report, DOCS / "compare_log_cost.png")
            write_docs(markdown)
        return

    names = list(CONTENDERS) if not args.only else args.only.split(",")
    for name in ("none", REFERENCE):
        if name not in names:
            names.insert(0, name)
    names, missing = available(names)
    reps = 1 if args.quick else args.reps
    loop_reps = 1 if args.quick else args.loop_reps
    scale = 0.1 if args.quick else 1.0
    sizes = {tier: tuple(max(100, int(v * scale)) for v in s) for tier, s in SIZES.items()}
    exit_steps = max(500, int(EXIT_STEPS * scale))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before numpy is imported: calibrate as the children run
    repeat, step_us = calibrate()
    started = time.time()
    load_before = os.getloadavg()
    print(
        f"{len(names)} contenders, {reps} repetitions ({loop_reps} for the loop), "
        f"numpy step ≈ {step_us:.0f} µs",
        flush=True,
    )

    results: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    loop_none: dict[int, list[dict[str, Any]]] = defaultdict(list)
    loop_ratios: dict[str, list[float]] = defaultdict(list)
    with (
        tempfile.TemporaryDirectory(prefix="steplog-compare-") as tmp,
        mlflow_server(Path(tmp), needed=bool({"mlflow-server", "steplog-mlflow"} & set(names))),
    ):
        session = Session(Path(tmp), repeat)

        def rounds(count: int) -> Iterator[tuple[int, list[str]]]:
            for rep in range(count):
                order = names[:]
                random.Random(rep).shuffle(order)
                yield rep, order

        for mode, count in (("cost", reps), ("throughput", reps), ("exit", reps)):
            for rep, order in rounds(count):
                for name in order:
                    if mode != "cost" and name == "none":
                        continue
                    if mode == "throughput" and not CONTENDERS[name].lossless:
                        continue
                    tier = CONTENDERS[name].tier
                    n = {"cost": sizes[tier][0], "throughput": sizes[tier][2]}.get(mode, exit_steps)
                    result = session.run(name, mode, n)
                    result["n"] = n
                    results[name][mode].append(result)
                    print(f"  {mode} rep {rep + 1} {name}: {_brief(result)}", flush=True)

        for rep, order in rounds(loop_reps):
            base: dict[int, dict[str, Any]] = {}
            for name in order:
                steps = sizes[CONTENDERS[name].tier][1]
                if name == "none":
                    for s in sorted({sizes[t][1] for t in sizes}):
                        base[s] = session.run("none", "loop", s)
                        base[s]["n"] = s
                        loop_none[s].append(base[s])
                    continue
                result = session.run(name, "loop", steps)
                result["n"] = steps
                results[name]["loop"].append(result)
            for name in order:
                if name == "none":
                    continue
                result = results[name]["loop"][-1]
                ratio = result["loop_s"] / base[result["n"]]["loop_s"]
                loop_ratios[name].append(ratio)
                print(f"  loop rep {rep + 1} {name}: {ratio:.3f}", flush=True)

        scaling = None if args.no_scaling else run_scaling(session, args.quick, reps)

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "minutes": (time.time() - started) / 60,
        "command": "python benchmarks/compare.py" + (" --quick" if args.quick else ""),
        "machine": machine_facts(),
        "versions": versions(),
        "load": [load_before, os.getloadavg()],
        "step_us": step_us,
        "reps": reps,
        "loop_reps": loop_reps,
        "sizes": sizes,
        "exit_steps": exit_steps,
        "missing": missing,
        "results": {k: dict(v) for k, v in results.items()},
        "loop_none": dict(loop_none),
        "loop_ratios": dict(loop_ratios),
        "scaling": scaling,
    }
    markdown = render(report)
    print()
    print(markdown)
    if args.write:
        (DOCS / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
        chart(report, DOCS / "compare_log_cost.png")
        write_docs(markdown)
        print(f"\nwrote {DOCS / 'benchmarks.md'}, compare.json and compare_log_cost.png")


@contextlib.contextmanager
def mlflow_server(root: Path, *, needed: bool) -> Iterator[None]:
    """A real ``mlflow server`` on 127.0.0.1 for the contenders that write to one (its
    URL in ``BENCH_MLFLOW_URL``, which the children inherit)."""
    if not needed:
        yield
        return
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import MlflowServer

    (root / "mlflow-server").mkdir()
    server = MlflowServer(root / "mlflow-server")
    server.start()
    os.environ["BENCH_MLFLOW_URL"] = server.url
    try:
        yield
    finally:
        server.stop()
        os.environ.pop("BENCH_MLFLOW_URL", None)


def _brief(result: dict[str, Any]) -> str:
    parts = []
    for key in ("p50", "loop_s", "log_s", "finish_s", "kept"):
        if key in result:
            parts.append(f"{key}={result[key]:.3g}")
    return " ".join(parts)


def run_scaling(session: Session, quick: bool, reps: int) -> dict[str, Any]:
    """Cost per event vs dict size, and offered rate vs drops/blocking."""
    print("scaling: keys", flush=True)
    n = 20_000 if quick else 100_000
    keys_out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for keys in (1, 3, 10, 30, 100):
        base = med([session.run("none", "cost", n, keys=keys)["cpu"] for _ in range(reps)])
        for name in ("deque", "naive", "steplog"):
            runs = [session.run(name, "cost", n, keys=keys) for _ in range(reps)]
            net_cpu = [(r["cpu"] - base) / n * 1e6 for r in runs]
            keys_out[name][keys] = {
                "p50": med([r["p50"] for r in runs]),
                "p99": med([r["p99"] for r in runs]),
                "cpu_per_event": med(net_cpu),
                "kept": min(r.get("kept", n) for r in runs),
            }
            print(f"  {keys} keys {name}: {keys_out[name][keys]}", flush=True)

    print("scaling: offered rate", flush=True)
    rates_out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    duration = 0.5 if quick else 2.0
    for rate in (10_000, 30_000, 100_000, 200_000, 400_000, 800_000):
        events = int(rate * duration)
        for name in ("steplog-drop_newest", "steplog"):
            runs = [session.run(name, "rate", events, rate=rate) for _ in range(reps)]
            rates_out[name][rate] = {
                "achieved": med([events / r["log_s"] for r in runs]),
                "dropped": med([events - r["kept"] for r in runs]),
                "max_late_ms": med([r["max_late"] * 1e3 for r in runs]),
                "events": events,
            }
            print(f"  {rate}/s {name}: {rates_out[name][rate]}", flush=True)
    return {"keys": keys_out, "rates": rates_out, "n": n, "duration": duration}


# ── reporting ─────────────────────────────────────────────────────────────────────────


def _fmt_us(value: float) -> str:
    if value != value:
        return "–"
    if value >= 1000:
        return f"{value / 1000:,.1f} ms"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def summarise(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    none_cpu = {s: med([r["cpu"] / s for r in runs]) for s, runs in report["loop_none"].items()}
    for name, modes in report["results"].items():
        cost, loop = modes.get("cost", []), modes.get("loop", [])
        exits, tput = modes.get("exit", []), modes.get("throughput", [])
        row: dict[str, Any] = {"label": CONTENDERS[name].label, "storage": CONTENDERS[name].storage}
        if cost:
            row.update(
                n=cost[0]["n"],
                p50=med([r["p50"] for r in cost]),
                p99=med([r["p99"] for r in cost]),
                max=med([r["max"] for r in cost]),
                finish_s=med([r["finish_s"] for r in cost]),
                rss=med([r["rss_mib"] for r in cost]),
                kept=min(r.get("kept", 0) for r in cost),
                kept_unique=min(r.get("kept_unique", 0) for r in cost),
                extra=cost[-1].get("extra", {}),
            )
        if loop:
            steps = loop[0]["n"]
            ratios = report["loop_ratios"].get(name, [])
            row.update(
                loop_steps=steps,
                slowdown=med(ratios) - 1,
                slowdown_range=(min(ratios) - 1, max(ratios) - 1) if ratios else None,
                cpu_step=(med([r["cpu"] / steps for r in loop]) - none_cpu[steps]) * 1e6,
                loop_kept=min(r.get("kept", 0) for r in loop),
            )
        if exits:
            row.update(
                exit_n=exits[0]["n"],
                exit_kept=med([r.get("kept_unique", 0) for r in exits]),
                exit_kept_range=(
                    min(r.get("kept_unique", 0) for r in exits),
                    max(r.get("kept_unique", 0) for r in exits),
                ),
                # the worst repetition: its losses and its count of old records together
                exit_lost_old=max(exits, key=lambda r: r.get("lost_old", 0)).get("lost_old", 0),
                exit_old=max(exits, key=lambda r: r.get("lost_old", 0)).get("old", 0),
            )
        if tput:
            n = tput[0]["n"]
            row.update(
                tput_n=n,
                tput=med([n / (r["log_s"] + r["finish_s"]) for r in tput]),
                tput_kept=min(r.get("kept", 0) for r in tput),
            )
        rows[name] = row
    return rows


TABLE_HEADER = (
    "| contender | log() p50 µs | p99 µs | max µs | p50 × steplog | loop slowdown "
    "(min…max) | CPU/step over no logging µs | finish s | peak RSS MiB | "
    "records stored after finish | kept after os._exit | lost ≥ 100 ms old |"
)
TABLE_RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"


def _table_rows(rows: dict[str, dict[str, Any]], ref: dict[str, Any]) -> list[str]:
    """The main table's rows, one per contender, by log() p50."""
    out: list[str] = []
    for row in sorted(rows.values(), key=lambda r: r.get("p50", 0)):
        if "p50" not in row:
            continue
        ratio = row["p50"] / ref["p50"] if ref.get("p50") else float("nan")
        slow = "–"
        if "slowdown" in row:
            lo, hi = row["slowdown_range"]
            slow = f"{row['slowdown'] * 100:+.1f} % ({lo * 100:+.1f}…{hi * 100:+.1f})"
        cpu = f"{row['cpu_step']:.1f}" if "cpu_step" in row else "–"
        if not row["storage"]:
            stored = "– (nothing written)"
            exit_kept = lost = "–"
        else:
            n = row["n"]
            stored = f"{row['kept_unique']:,} of {n:,}"
            if row["kept_unique"] < n or row["kept"] != n:
                stored = f"**{stored}**" + (" (dupl.)" if row["kept"] > row["kept_unique"] else "")
            lo, hi = row.get("exit_kept_range", (0, 0))
            exit_kept = f"{row.get('exit_kept', 0):,.0f} of {row.get('exit_n', 0):,}"
            if lo != hi:
                exit_kept += f" ({lo:,}…{hi:,})"
            lost = f"{row.get('exit_lost_old', 0):,} of {row.get('exit_old', 0):,.0f}"
            if row.get("exit_lost_old", 0):
                lost = f"**{lost}**"
        out.append(
            f"| {row['label']} | {_fmt_us(row['p50'])} | {_fmt_us(row['p99'])} | "
            f"{_fmt_us(row['max'])} | {ratio:,.1f}× | {slow} | {cpu} | "
            f"{row['finish_s']:.3f} | {row['rss']:.0f} | {stored} | {exit_kept} | {lost} |"
        )
    return out


def render(report: dict[str, Any]) -> str:
    rows = summarise(report)
    ref = rows[REFERENCE]
    m = report["machine"]
    spread = []
    for s, runs in report["loop_none"].items():
        walls = [r["loop_s"] for r in runs]
        if len(walls) > 1:
            spread.append(f"{s:,} steps: {statistics.pstdev(walls) / med(walls) * 100:.1f} %")
    out = [
        MARK_START,
        f"### Full results ({report['date']})",
        "",
        "![log() cost per call, log scale](compare_log_cost.png)",
        "",
        "```bash",
        'pip install -e ".[bench]" && ' + report["command"] + " --write",
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory']}, Python {m['python']}, "
        f"{m['platform']}. Load average before/after: "
        f"{report['load'][0][0]:.2f} / {report['load'][1][0]:.2f}. "
        f"The whole run took {report['minutes']:.0f} min.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in report["versions"].items()) + ".",
        "",
        f"Every figure is the median over {report['reps']} repetitions, each contender in a "
        f"fresh process, contenders in a different shuffled order every round; the loop "
        f"slowdown is the median of {report['loop_reps']} per-round ratios against the "
        f"no-logging loop of the same round (a ~{report['step_us']:.0f} µs numpy step). "
        "Noise: the no-logging loop's wall time varied by "
        + (", ".join(spread) or "–")
        + " (coefficient of variation across rounds); the slowdown column gives the "
        "min…max of the per-round ratios, so anything inside that band is noise.",
        "",
        TABLE_HEADER,
        TABLE_RULE,
    ]
    local = {name: row for name, row in rows.items() if name not in REMOTE_ONLY}
    out += _table_rows(local, ref)
    remote = {name: rows[name] for name in REMOTE if name in rows}
    if any(name in REMOTE_ONLY for name in remote):
        out += [
            "",
            "#### With remote backends attached (the same servers and directories)",
            "",
            "Each tool's own client next to steplog writing to the same tool through its "
            "backend, which follows the run file from the delivery process; *records "
            "stored* and *kept after os._exit* are read back from that tool (for steplog, "
            "once the delivery process is done: a killed contender's delivery process "
            "still delivers what its run file holds).",
            "",
            TABLE_HEADER,
            TABLE_RULE,
        ]
        out += _table_rows(remote, ref)
    out += [
        "",
        "Columns: per-call figures over "
        + ", ".join(f"{tier} {s[0]:,} calls" for tier, s in report["sizes"].items())
        + " (tiers: slow trackers get fewer calls so a run takes seconds, not hours; "
        "max grows with the number of calls). Loop: "
        + ", ".join(f"{tier} {s[1]:,} steps" for tier, s in report["sizes"].items())
        + ". CPU/step: process CPU (every thread) from the first step to the end of "
        "finish(), plus helper processes the contender started and reaped (e.g. "
        "wandb-core), per step, minus the no-logging loop's. *Records stored* are read "
        "back from storage with the tool's own reader (JSON lines parsed, W&B transaction "
        "log, MLflow's client on the sqlite store, TensorBoard's event reader, trackio's "
        "storage API, `steplog.read_run`) and counted by distinct `iteration`. "
        f"*os._exit*: {report['exit_steps']:,} steps of the numpy loop, then `os._exit(0)` "
        "straight after the last `log()` (no finish, no atexit, no buffered-file flush); "
        "*lost ≥ 100 ms old* counts records logged more than 100 ms (steplog's "
        "`flush_interval`) before the exit that are not in storage.",
        "",
    ]
    notes = [
        f"- {row['label']}: {CONTENDERS[name].note}"
        for name, row in rows.items()
        if CONTENDERS[name].note
    ]
    for row in rows.values():
        backends = row.get("extra", {}).get("backends")
        if backends and len(backends) > 1:
            got = ", ".join(f"{b} {d:,}" for b, d in backends.items())
            notes.append(f"- {row['label']}: events delivered per backend (cost run): {got}")
    if report["missing"]:
        notes += [f"- not run: {k} ({why})" for k, why in report["missing"].items()]
    out += ["Notes:", *notes, ""]

    tput_rows = [(name, row) for name, row in rows.items() if "tput" in row]
    out += [
        "#### Sustained throughput (log as fast as possible, then finish; median)",
        "",
        "| contender | events | events/s incl. finish | records stored |",
        "|---|---:|---:|---:|",
    ]
    for _, row in sorted(tput_rows, key=lambda kv: -kv[1]["tput"]):
        stored = f"{row['tput_kept']:,}" if row["storage"] else "–"
        out.append(f"| {row['label']} | {row['tput_n']:,} | {row['tput']:,.0f} | {stored} |")
    out.append("")

    scaling = report.get("scaling")
    if scaling:
        keys = scaling["keys"]
        sizes = sorted(int(k) for k in next(iter(keys.values())))
        out += [
            f"#### Cost per event as the dict grows ({scaling['n']:,} calls, median)",
            "",
            "p50 `log()` µs / process CPU per event µs (first `log()` to the end of "
            "`finish()`, worker included, minus the same loop without logging):",
            "",
            "| keys | " + " | ".join(CONTENDERS[n].label for n in keys) + " |",
            "|---:|" + "---:|" * len(keys),
        ]
        for k in sizes:
            cells = []
            for name in keys:
                cell = keys[name][str(k)] if str(k) in keys[name] else keys[name][k]
                cells.append(f"{cell['p50']:.2f} / {cell['cpu_per_event']:.2f}")
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        rates = scaling["rates"]
        out += [
            "",
            f"#### Offered rate until steplog drops or blocks ({scaling['duration']:g} s "
            "per rate, paced producer, median)",
            "",
            "| offered events/s | drop_newest: achieved / dropped | block: achieved / "
            "worst lateness |",
            "|---:|---:|---:|",
        ]
        drop, block = rates["steplog-drop_newest"], rates["steplog"]
        for rate in sorted(int(r) for r in drop):
            d = drop[str(rate)] if str(rate) in drop else drop[rate]
            b = block[str(rate)] if str(rate) in block else block[rate]
            out.append(
                f"| {rate:,} | {d['achieved']:,.0f} / {d['dropped']:,.0f} of {d['events']:,} | "
                f"{b['achieved']:,.0f} / {b['max_late_ms']:.1f} ms |"
            )
        out.append("")
    out.append(MARK_END)
    return "\n".join(out)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in summarise(report).values() if "p50" in row]
    rows.sort(key=lambda r: r["p50"])
    labels = [r["label"] for r in rows]
    p50 = [max(r["p50"], 0.01) for r in rows]
    p99 = [max(r["p99"], 0.01) for r in rows]
    colors = ["#d95f02" if r["label"].startswith("steplog") else "#7570b3" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6), dpi=120)
    y = range(len(rows))
    ax.barh(y, p50, color=colors, label="p50")
    ax.scatter(p99, y, color="black", marker="|", s=120, label="p99", zorder=3)
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("log() cost per call, µs (log scale)")
    ax.set_title(
        f"Cost of one log() call, 10-key dict ({report['machine']['cpus']} CPUs, "
        f"median of {report['reps']} runs)"
    )
    ax.grid(axis="x", which="both", alpha=0.3)
    for i, r in enumerate(rows):
        ax.text(p50[i] * 1.08, i, _fmt_us(r["p50"]), va="center", fontsize=8)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_docs(markdown: str) -> None:
    path = DOCS / "benchmarks.md"
    text = path.read_text()
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + markdown + tail
    else:
        text = text.rstrip("\n") + "\n\n" + markdown + "\n"
    path.write_text(text)


if __name__ == "__main__":
    gc.collect()
    main()
