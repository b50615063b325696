"""How long the command line takes on large runs (issue #6's "plotted fast").

Writes one run of N steps (default 10 000 000; 3 keys per step: loss, best_loss, a
string every 1 000 steps) with the default JSONL backend, then times, each as a user
would run it (a fresh process): ``steplog plot`` of two keys, ``steplog show``,
``steplog export --format csv``, and ``steplog ls`` over 300 copies of a 100 000-step
run.

Run: ``pip install -e ".[plot]" && python benchmarks/cli_large.py`` (``--steps`` to
change N).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import steplog


def write_run(root: Path, steps: int) -> Path:
    rng = random.Random(0)
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, experiment_name="large")
    tracker.init({"steps": steps})
    best = math.inf
    for step in range(steps):
        loss = 1.0 / math.sqrt(step + 1) + rng.random() * 0.05
        if step % 1_000_000 == 777:
            loss = 5.0  # a spike the envelope must keep
        best = min(best, loss)
        data = {"loss": loss, "best_loss": best}
        if step % 1000 == 0:
            data["note"] = f"checkpoint {step}"
        tracker.log(data)
    tracker.finish({"best_loss": best})
    assert backend.path is not None
    return backend.path


def timed(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "steplog", *args], cwd=cwd, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"steplog {' '.join(args)} failed:\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        path = write_run(root / "runs", args.steps)
        written = time.perf_counter() - t0
        size = path.stat().st_size
        print(f"run of {args.steps:,} steps: {size / 2**20:,.0f} MiB, logged in {written:.1f} s")
        plot = ("plot", str(path), "-k", "loss", "-k", "best_loss", "-o", "plot.png")
        rows = [
            ("steplog plot RUN -k loss -k best_loss -o plot.png", timed(*plot, cwd=root)),
            ("steplog show RUN", timed("show", str(path), cwd=root)),
            (
                "steplog export RUN -o run.csv",
                timed("export", str(path), "-o", "run.csv", cwd=root),
            ),
        ]
        small = write_run(root / "small", 100_000)
        many = root / "many" / "large"
        many.mkdir(parents=True)
        for i in range(300):
            shutil.copyfile(small, many / f"run-{i:03d}.jsonl")
        rows.append(
            ("steplog ls (300 runs of 100,000 steps)", timed("ls", str(root / "many"), cwd=root))
        )
        print(f"\n| command ({args.steps:,}-step run, {os.cpu_count()} CPUs) | wall s |")
        print("|---|---:|")
        for name, seconds in rows:
            print(f"| `{name}` | {seconds:.1f} |")


if __name__ == "__main__":
    main()
