"""Every backend follows the run file (issue #23), measured at full size.

Three sections, each next to its reference, in one run:

1. ``cost``: what remote backends cost the logging loop. An unpaced loop of ``--steps``
   10-key events into the run file alone, and into the file plus ``Sampled(MLflow)``
   and ``Sampled(W&B offline)`` (``interval=0.1, reduce="mean", extremes=True``), in
   both durability modes: the logging process's CPU per step (all its threads,
   ``finish()`` included; the delivery process is another process), over ``--rounds``
   interleaved rounds, medians; and the naive inline write (``f.write(orjson.dumps(...,
   option=OPT_APPEND_NEWLINE))``) for scale.
2. ``latency``: a healthy MLflow server: a point logged every 20 ms; how long until
   MLflow's REST API shows it (median, p90, max).
3. ``scenario``: the team run of the issue — 200 000 steps x 10 keys into the file,
   Sampled MLflow and Sampled W&B offline; the MLflow server SIGKILLed and restarted
   twice; the training process SIGKILLed (nothing flushed) and restarted with
   ``resume="latest"`` — in both durability modes. Checks that the file is exact and
   that MLflow and W&B hold exactly the points the sampler's rule gives over the whole
   file (no gap, no overlap, counts summing to the events), and prints the logging
   process's peak RSS during the outages.

Run: ``python benchmarks/north_star.py`` (all sections), or name sections:
``python benchmarks/north_star.py cost latency``. ``--steps``, ``--rounds``,
``--json PATH``. Needs the dev extra (an ``mlflow`` server, ``wandb``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import steplog  # noqa: E402
from test_north_star import expected_points  # noqa: E402  (the rule over the file)

from conftest import MlflowServer, find_run, history, mlflow_api  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def record(i: int) -> dict[str, Any]:
    data: dict[str, Any] = {f"k{j}": (i % 97) * 0.5 + j for j in range(8)}
    data["loss"] = 1.0 / (i + 1)
    data["phase"] = "train"
    return data


# -- 1. cost -----------------------------------------------------------------------

COST = """
import json, os, sys, time, orjson, steplog
root, url, wb, durability, remote, steps = sys.argv[1:7]
steps = int(steps)
def record(i):
    data = {f"k{j}": (i % 97) * 0.5 + j for j in range(8)}
    data["loss"] = 1.0 / (i + 1)
    data["phase"] = "train"
    return data
rule = dict(interval=0.1, reduce="mean", extremes=True)
if durability == "naive":
    c0, w0 = time.process_time(), time.perf_counter()
    with open(os.path.join(root, "naive.jsonl"), "wb", buffering=65536) as f:
        for i in range(steps):
            f.write(orjson.dumps({"step": i, "time": time.time(), "data": record(i)},
                                 option=orjson.OPT_APPEND_NEWLINE))
    print(json.dumps({"cpu": time.process_time() - c0, "wall": time.perf_counter() - w0}))
    sys.exit()
backends = [steplog.JsonlBackend(root)]
if remote == "remote":
    backends += [
        steplog.Sampled(steplog.MlflowBackend(url), **rule),
        steplog.Sampled(steplog.WandbBackend(project="north-cost", dir=wb), **rule),
    ]
tracker = steplog.Tracker(*backends, experiment_name="cost", durability=durability)
tracker.init()
c0, w0 = time.process_time(), time.perf_counter()
for i in range(steps):
    tracker.log(record(i))
stats = tracker.finish()
cpu, wall = time.process_time() - c0, time.perf_counter() - w0
print(json.dumps({"cpu": cpu, "wall": wall, "written": stats.written,
                  "behind": {n: b.missing for n, b in stats.backends.items()}}))
"""


def bench_cost(url: str, steps: int, rounds: int, work: Path) -> dict[str, Any]:
    variants = [("naive", "-"), ("thread", "file"), ("thread", "remote"), ("process", "file"),
                ("process", "remote")]  # fmt: skip
    samples: dict[str, list[float]] = {f"{d}/{r}": [] for d, r in variants}
    walls: dict[str, list[float]] = {f"{d}/{r}": [] for d, r in variants}
    for round_ in range(rounds):
        for durability, remote in variants:
            root = work / f"cost-{round_}-{durability}-{remote}"
            root.mkdir(parents=True)
            out = subprocess.run(
                [sys.executable, "-c", COST, str(root), url, str(work / "wb"), durability,
                 remote, str(steps)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(out.stdout.strip().splitlines()[-1])
            key = f"{durability}/{remote}"
            samples[key].append(got["cpu"] / steps * 1e6)
            walls[key].append(got["wall"] / steps * 1e6)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {
        "steps": steps,
        "rounds": rounds,
        "cpu_us_per_step": med,
        "wall_us_per_step": {k: statistics.median(v) for k, v in walls.items()},
        "samples": samples,
        "remote_minus_file": {
            d: med[f"{d}/remote"] - med[f"{d}/file"] for d in ("thread", "process")
        },
    }
    print(f"\n1. cost: {steps:,} unpaced 10-key steps, medians of {rounds} interleaved rounds")
    print(f"   {'variant':<34} {'CPU µs/step':>12} {'wall µs/step':>13}")
    names = {
        "naive/-": "naive inline write",
        "thread/file": 'file (durability="thread")',
        "thread/remote": "file + Sampled MLflow + W&B (thread)",
        "process/file": 'file (durability="process")',
        "process/remote": "file + Sampled MLflow + W&B (process)",
    }
    for key, name in names.items():
        print(f"   {name:<34} {med[key]:>12.2f} {result['wall_us_per_step'][key]:>13.2f}")
    for d, extra in result["remote_minus_file"].items():
        print(f"   remote backends cost ({d}): {extra:+.2f} µs/step of the loop's CPU")
    return result


# -- 2. latency ----------------------------------------------------------------------


def bench_latency(url: str, points: int, work: Path) -> dict[str, Any]:
    experiment = "north-latency"
    tracker = steplog.Tracker(
        steplog.JsonlBackend(work / "latency"),
        steplog.MlflowBackend(url),
        experiment_name=experiment,
    )
    info = tracker.init()
    run_id = find_run_id(url, experiment, info.run_id)
    delays = []
    for i in range(points):
        logged = time.time()
        tracker.log({"loss": float(i)}, step=i)
        while True:
            got = mlflow_api(url, "metrics/get-history", {"run_id": run_id, "metric_key": "loss",
                                                        "max_results": 100000})  # fmt: skip
            if any(int(m["step"]) == i for m in got.get("metrics", [])):
                break
            time.sleep(0.01)
        delays.append(time.time() - logged)
        time.sleep(0.02)
    tracker.finish()
    delays.sort()
    result = {
        "points": points,
        "median_s": statistics.median(delays),
        "p90_s": delays[int(len(delays) * 0.9)],
        "max_s": delays[-1],
    }
    print(f"\n2. latency: {points} points, log() to visible in MLflow's REST API")
    print(f"   median {result['median_s']:.3f} s, p90 {result['p90_s']:.3f} s, "
          f"max {result['max_s']:.3f} s")  # fmt: skip
    return result


def find_run_id(url: str, experiment: str, steplog_id: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return str(find_run(url, experiment, steplog_id)["info"]["run_id"])
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- 3. scenario -------------------------------------------------------------------------

JOB = """
import os, signal, sys, time, steplog
root, url, wb, durability, control, total = sys.argv[1:7]
total = int(total)
rule = dict(interval=0.1, reduce="mean", extremes=True)
retry = steplog.RetryPolicy(probe_backoff=0.2, max_probe_backoff=1.0)
tracker = steplog.Tracker(
    steplog.JsonlBackend(root),
    steplog.Sampled(steplog.MlflowBackend(url, timeout=5), **rule),
    steplog.Sampled(steplog.WandbBackend(project="north-star", dir=wb), **rule),
    experiment_name="north", durability=durability, retry=retry,
)
info = tracker.init({"lr": 0.1}, resume="latest")
step = info.resumed.step if info.resumed else 0
print("started", step, flush=True)
while step < total:
    data = {f"k{j}": (step % 97) * 0.5 + j for j in range(8)}
    data["loss"] = 1.0 / (step + 1)
    data["phase"] = "train"
    tracker.log(data)
    step += 1
    if step % 1000 == 0:
        with open(f"/proc/{os.getpid()}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        print("at", step, round(rss, 1), flush=True)
        if os.path.exists(os.path.join(control, "kill")):
            os.kill(os.getpid(), signal.SIGKILL)
    if step % 100 == 0:
        time.sleep(0.01)  # about 5 000 steps a second: a fast loop that does work
t0 = time.perf_counter()
stats = tracker.finish({"last": step})
print("finished", step, round(time.perf_counter() - t0, 2), flush=True)
"""


class Job:
    def __init__(self, work: Path, url: str, durability: str, total: int) -> None:
        self.control = work / "control"
        self.control.mkdir(exist_ok=True)
        (self.control / "kill").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", JOB, str(work / "runs"), url, str(work / "wb"),
             durability, str(self.control), str(total)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.startswith("started"), first + self.proc.stderr.read()  # type: ignore[union-attr]
        self.step = int(first.split()[1])
        self.rss: list[float] = []
        self.finish_s: float | None = None

    def run_until(self, steps: int) -> None:
        target = self.step + steps
        assert self.proc.stdout is not None
        while self.step < target:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(self.proc.stderr.read())  # type: ignore[union-attr]
            parts = line.split()
            if parts[0] == "at":
                self.step = int(parts[1])
                self.rss.append(float(parts[2]))
            elif parts[0] == "finished":
                self.step = int(parts[1])
                self.finish_s = float(parts[2])
                return

    def wait(self) -> int:
        out, _ = self.proc.communicate(timeout=900)
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "at":
                self.rss.append(float(parts[2]))
            if parts and parts[0] == "finished":
                self.finish_s = float(parts[2])
        return self.proc.returncode


def bench_scenario(durability: str, total: int, work: Path) -> dict[str, Any]:
    from wandb_offline import read_offline_history

    work.mkdir(parents=True)
    server = MlflowServer(work)
    server.start()
    kills: list[dict[str, float]] = []
    try:
        job = Job(work, server.url, durability, 10**12)  # runs until it is killed
        job.run_until(total // 20)
        for _ in range(2):
            at = job.step
            server.kill()
            job.run_until(total // 40)
            server.start()
            kills.append({"at_step": at, "restart_s": server.started_in,
                          "steps_logged_while_down": job.step - at})  # fmt: skip
            job.run_until(total // 20)
        job.run_until(max(0, int(total * 0.6) - job.step))
        killed_at = job.step
        (job.control / "kill").touch()
        assert job.wait() == -signal.SIGKILL
        assert job.step < total, "the first job ran past the total: lower the pace"
        again = Job(work, server.url, durability, total)
        resumed_at = again.step
        assert again.wait() == 0, again.proc.stderr.read() if again.proc.stderr else ""
        (path,) = (work / "runs" / "north").glob("*.jsonl")
        run = steplog.read_run(path)
        points = expected_points(path)
        mlrun = find_run(server.url, "north", run.run_id)
        losses = history(server.url, mlrun["info"]["run_id"], "loss")
        counts = history(server.url, mlrun["info"]["run_id"], "sampled/count")
    finally:
        server.stop()
    steps = [e.step for e in run.records]
    rows: dict[int, dict[str, Any]] = {}
    duplicates = 0
    for run_dir in sorted((work / "wb" / "wandb").glob(f"offline-run-*-{run.run_id}")):
        for row in read_offline_history(run_dir):
            if "loss" in row:
                duplicates += row["_step"] in rows
                rows[row["_step"]] = row
    want = [p.step for p in points]
    mlflow_steps = sorted(int(p["step"]) for p in losses)
    result = {
        "durability": durability,
        "steps": len(steps),
        "file_exact": steps == list(range(total)),
        "points": len(points),
        "counts_add_up": sum(p.data["sampled/count"] for p in points) == len(steps),
        "mlflow_exact": mlflow_steps == want,
        "mlflow_points": len(mlflow_steps),
        "mlflow_missing": len(set(want) - set(mlflow_steps)),
        "mlflow_extra": len(mlflow_steps) - len(set(mlflow_steps) & set(want)),
        "mlflow_count_sum": sum(float(p["value"]) for p in counts),
        "mlflow_status": mlrun["info"]["status"],
        "wandb_exact": sorted(rows) == want and not duplicates,
        "wandb_points": len(rows),
        "wandb_count_sum": sum(r["sampled/count"] for r in rows.values()),
        "kills": kills,
        "training_killed_at": killed_at,
        "resumed_at": resumed_at,
        "rss_mib_max": max(job.rss + again.rss),
        "rss_mib_first": (job.rss or [0])[0],
        "finish_s": again.finish_s,
    }
    print(f"\n3. scenario (durability={durability!r}): {len(steps):,} steps, "
          f"{len(points):,} points by the rule")  # fmt: skip
    for key in ("file_exact", "counts_add_up", "mlflow_exact", "mlflow_missing",
                "mlflow_extra", "mlflow_count_sum", "mlflow_status", "wandb_exact",
                "wandb_count_sum", "training_killed_at", "resumed_at", "rss_mib_first",
                "rss_mib_max", "finish_s"):  # fmt: skip
        print(f"   {key:<20} {result[key]}")
    for k in kills:
        print(f"   MLflow killed at step {k['at_step']:,}: restart {k['restart_s']:.1f} s, "
              f"{k['steps_logged_while_down']:,} steps logged while down")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", default=["cost", "latency", "scenario"])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"steplog from {Path(steplog.__file__).parent}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="steplog-north-") as tmp:
        work = Path(tmp)
        if "cost" in args.sections or "latency" in args.sections:
            server = MlflowServer(work)
            server.start()
            try:
                if "cost" in args.sections:
                    results["cost"] = bench_cost(server.url, args.steps, args.rounds, work)
                if "latency" in args.sections:
                    results["latency"] = bench_latency(server.url, 50, work)
            finally:
                server.stop()
        if "scenario" in args.sections:
            results["scenario"] = [
                bench_scenario(d, args.steps, work / f"scenario-{d}") for d in ("thread", "process")
            ]
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
