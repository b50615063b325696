"""The end-to-end promise of issue #23, at a reduced size: a team's run with sampled MLflow
and W&B, the MLflow server SIGKILLed and restarted twice, the training process SIGKILLed
and restarted with resume="latest" — and every backend ends with exactly the points its
sampler's rule gives over the whole run file, with no manual replay or sync.

benchmarks/north_star.py runs the same scenario at full size (200 000 steps x 10 keys)
and measures what it costs the loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import steplog
from steplog import Event
from steplog.runfile.records import parse_record

from conftest import MlflowServer, find_run, history

pytest.importorskip("httpx", reason="MlflowBackend needs httpx (pip install -e '.[dev]')")
pytest.importorskip("wandb", reason="WandbBackend needs wandb (pip install -e '.[dev]')")
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # real servers, killed jobs

RULE = {"interval": 0.1, "reduce": "mean", "extremes": True}

# The training job: the same command on every (re)start. It logs 10 keys a step at
# about 2 000 steps a second, says how far it got, and obeys two files: "kill" (SIGKILL
# itself at once, nothing flushed) and "finish".
JOB = """
import os, sys, time, steplog
root, url, wandb_dir, durability, control = sys.argv[1:6]
rule = dict(interval=0.1, reduce="mean", extremes=True)
retry = steplog.RetryPolicy(probe_backoff=0.2, max_probe_backoff=1.0)
tracker = steplog.Tracker(
    steplog.JsonlBackend(root),
    steplog.Sampled(steplog.MlflowBackend(url, timeout=5), **rule),
    steplog.Sampled(
        steplog.WandbBackend(project="north-star", mode="offline", dir=wandb_dir), **rule
    ),
    experiment_name="north", durability=durability, retry=retry,
)
info = tracker.init({"lr": 0.1}, resume="latest")
step = info.resumed.step if info.resumed else 0
print("started", step, flush=True)
while True:
    data = {f"k{j}": (step % 97) * 0.5 + j for j in range(9)}
    data["loss"] = 1.0 / (step + 1)
    tracker.log(data)
    step += 1
    if step % 200 == 0:
        print("at", step, flush=True)
        if os.path.exists(os.path.join(control, "kill")):
            os.kill(os.getpid(), signal.SIGKILL)
        if os.path.exists(os.path.join(control, "finish")):
            break
    time.sleep(0.0005)
tracker.finish({"last": step})
print("finished", step, flush=True)
"""


class Job:
    """One start of the training job, read line by line."""

    def __init__(self, tmp_path: Path, url: str, durability: str) -> None:
        control = tmp_path / "control"
        control.mkdir(exist_ok=True)
        for name in ("kill", "finish"):
            (control / name).unlink(missing_ok=True)
        self.control = control
        script = tmp_path / "job.py"
        script.write_text("import signal\n" + JOB)
        env = {k: v for k, v in os.environ.items() if k != "STEPLOG_ROOT"}
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "runs"), url,
             str(tmp_path / "wb"), durability, str(control)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert first.startswith("started"), first + self.proc.stderr.read()
        self.step = int(first.split()[1])

    def run_until(self, steps: int, timeout: float = 120) -> None:
        """Read its progress until it has logged ``steps`` more steps."""
        target = self.step + steps
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while self.step < target:
            line = self.proc.stdout.readline()
            assert line, f"the job ended early: {self.proc.stderr.read()}"  # type: ignore[union-attr]
            if line.startswith("at"):
                self.step = int(line.split()[1])
            assert time.monotonic() < deadline, f"the job did not reach step {target}"

    def order(self, what: str) -> int:
        """Tell it to ``kill`` itself or ``finish``; its exit code (stderr kept)."""
        (self.control / what).touch()
        _, self.stderr = self.proc.communicate(timeout=300)
        return self.proc.returncode


def expected_points(path: Path) -> list[Event]:
    """The points the rule gives over the whole run file: what every backend must hold."""
    sampler = steplog.Sampled(steplog.MemoryBackend(), **RULE).sampler()
    points: list[Event] = []
    with open(path, "rb") as f:
        f.readline()  # the run-start record
        for line in f:
            record = parse_record(line)
            if record is None:
                continue
            kind = record.get("type")
            if kind is None:
                event = Event(record["step"], record["time"], record["data"])
                points += [p for p, _ in sampler.add(event, 0, 0)]
            elif kind in ("resume", "run_end"):
                points += [p for p, _ in sampler.end_segment(0)]
    return points


def wandb_rows(root: Path, run_id: str) -> dict[int, dict]:
    """Every W&B offline row of the run, by step, over its offline runs (one per
    process that fed W&B: the killed one, and the resumed one)."""
    from wandb_offline import read_offline_history

    rows: dict[int, dict] = {}
    dirs = sorted((root / "wandb").glob(f"offline-run-*-{run_id}"))
    assert dirs, list((root / "wandb").iterdir())
    for run_dir in dirs:
        for row in read_offline_history(run_dir):
            if "loss" in row:
                assert row["_step"] not in rows, f"W&B has step {row['_step']} twice"
                rows[row["_step"]] = row
    return rows


@pytest.mark.parametrize("durability", ["thread", "process"])
def test_every_backend_ends_with_exactly_the_points_of_the_run_file(tmp_path, durability):
    """Sampled MLflow and W&B (offline), the MLflow server SIGKILLed and restarted twice
    mid-run, the training process SIGKILLed (nothing flushed) and restarted with
    resume="latest": the file is exact, and MLflow and W&B each hold exactly the points
    the sampler's rule gives over the whole file — no gap, no overlap, no merged
    window, counts summing to the events — with no replay or sync."""
    server = MlflowServer(tmp_path)
    server.start()
    try:
        job = Job(tmp_path, server.url, durability)
        job.run_until(1_000)
        for _ in range(2):  # two outages, steps logged during each
            server.kill()
            job.run_until(1_000)
            server.start()
            job.run_until(1_000)
        assert job.order("kill") == -signal.SIGKILL  # nothing flushed: a tail undelivered
        again = Job(tmp_path, server.url, durability)
        assert again.step > 0  # resumed
        again.run_until(1_000)
        assert again.order("finish") == 0, again.stderr
        (path,) = (tmp_path / "runs" / "north").glob("*.jsonl")
        run = steplog.read_run(path)
        points = expected_points(path)
        mlflow_run = find_run(server.url, "north", run.run_id)
        losses = history(server.url, mlflow_run["info"]["run_id"], "loss")
        counts = history(server.url, mlflow_run["info"]["run_id"], "sampled/count")
    finally:
        server.stop()
    # The run file: every step once, in order, two segments.
    steps = [e.step for e in run.records]
    assert steps == list(range(len(steps))) and len(steps) >= 8_000
    assert [s.status for s in run.segments][-1] == "finished"
    # The rule over the file: counts add up to the events; no window spans the kill.
    assert sum(p.data["sampled/count"] for p in points) == len(steps)
    # MLflow: exactly those points (one per window, at its last step), each once.
    assert sorted(int(p["step"]) for p in losses) == [p.step for p in points]
    by_step = {int(p["step"]): float(p["value"]) for p in losses}
    assert all(by_step[p.step] == pytest.approx(p.data["loss"]) for p in points)
    assert sum(float(p["value"]) for p in counts) == len(steps)
    assert mlflow_run["info"]["status"] == "FINISHED"
    # W&B: the same points, over its offline runs.
    rows = wandb_rows(tmp_path / "wb", run.run_id)
    assert sorted(rows) == [p.step for p in points]
    assert all(rows[p.step]["loss"] == pytest.approx(p.data["loss"]) for p in points)
    assert sum(row["sampled/count"] for row in rows.values()) == len(steps)
    # Where each backend stands, as `steplog show` reports it: all delivered.
    from steplog._lane import delivery_states

    states = delivery_states(path, len(steps))
    assert sorted(s.backend for s in states) == ["mlflow", "wandb"]
    assert all(s.behind == 0 and s.ended and s.status == "finished" for s in states)
