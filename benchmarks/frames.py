"""Runs as DataFrames (issue #16 item 5): time and memory of reading a long run's
columns, against today's ``read_run``.

Writes one run of N steps (default 2 000 000) with the real tracker — five keys a step:
``loss``, ``best_loss``, ``grad_norm`` (floats), ``tokens`` (an int) and a ``note``
string every 1 000 steps — unless ``--run`` names one already written. Then, each in a
fresh process, measures the wall time and the peak RSS the call adds (``ru_maxrss``
after the call minus ``ru_maxrss`` once steplog, numpy, pandas and polars are
imported) of:

* ``steplog.scan(path, keys=3 keys)`` into pandas, polars and numpy,
* ``steplog.scan(path)`` of every key (pandas),
* ``orjson.loads`` of every line, keeping nothing: the floor any reader built on a
  JSON parser per line pays,
* ``steplog.read_run(path)`` (eager: an Event per step and a history per key), and
  ``read_run(path).to_pandas(keys)``, once each.

Prints medians of ``--repeat`` runs (default 3). The machine is shared: run it when it
is quiet, and compare figures of one run only.

Run: ``pip install -e ".[pandas,polars]" && python benchmarks/frames.py``
(``--steps``, ``--run PATH``, ``--repeat``).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import steplog

KEYS = ["loss", "best_loss", "grad_norm"]

CHILD = """
import resource, sys, time
import numpy, pandas, polars
import steplog
path, what = sys.argv[1], sys.argv[2]
keys = {keys!r}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if what == "scan-pandas":
    out = steplog.scan(path, keys=keys)
    rows = len(out)
elif what == "scan-polars":
    out = steplog.scan(path, keys=keys, backend="polars")
    rows = out.height
elif what == "scan-numpy":
    out = steplog.scan(path, keys=keys, backend="numpy")
    rows = len(out["step"])
elif what == "scan-all":
    out = steplog.scan(path)
    rows = len(out)
elif what == "floor":
    import orjson
    rows = 0
    with open(path, "rb") as f:
        for line in f:
            orjson.loads(line)
            rows += 1
    rows -= 2  # the run-start and run-end lines
elif what == "read_run":
    out = steplog.read_run(path)
    rows = len(out.records)
elif what == "read_run-pandas":
    out = steplog.read_run(path).to_pandas(keys)
    rows = len(out)
else:
    raise SystemExit(what)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(elapsed, (peak - base) / 1024, rows)
"""

CASES = [
    ("scan-pandas", "steplog.scan(path, keys=3 keys) → pandas"),
    ("scan-polars", "steplog.scan(path, keys=3 keys, backend='polars')"),
    ("scan-numpy", "steplog.scan(path, keys=3 keys, backend='numpy')"),
    ("scan-all", "steplog.scan(path) → pandas, every key (5)"),
    ("floor", "orjson.loads of every line, nothing kept (the parse alone)"),
    ("read_run", "steplog.read_run(path) (eager, for comparison)"),
    ("read_run-pandas", "steplog.read_run(path).to_pandas(keys=3 keys)"),
]


def write_run(root: Path, steps: int) -> Path:
    rng = random.Random(0)
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, experiment_name="frames")
    tracker.init({"steps": steps, "lr": 0.1, "model": {"name": "gpt2", "layers": 12}})
    best = math.inf
    for step in range(steps):
        loss = 1.0 / math.sqrt(step + 1) + rng.random() * 0.05
        best = min(best, loss)
        data = {"loss": loss, "best_loss": best, "grad_norm": rng.random(), "tokens": step * 512}
        if step % 1000 == 0:
            data["note"] = f"checkpoint {step}"
        tracker.log(data)
    tracker.finish({"best_loss": best})
    assert backend.path is not None
    return backend.path


def measure(path: Path, what: str) -> tuple[float, float, int]:
    code = CHILD.format(keys=KEYS)
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), what], capture_output=True, text=True, check=True
    )
    elapsed, mib, rows = out.stdout.split()
    return float(elapsed), float(mib), int(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2_000_000)
    parser.add_argument("--run", type=Path, help="a run file already written")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.run
        if path is None:
            t0 = time.perf_counter()
            path = write_run(Path(tmp) / "runs", args.steps)
            print(f"wrote {args.steps:,} steps in {time.perf_counter() - t0:.1f} s")
        print(f"run file: {path.stat().st_size / 2**20:,.0f} MiB")
        print(f"| call | wall s (median of {args.repeat}) | peak RSS added, MiB | rows |")
        print("|---|---:|---:|---:|")
        for what, label in CASES:
            repeat = 1 if what.startswith("read_run") else args.repeat
            results = [measure(path, what) for _ in range(repeat)]
            wall = statistics.median(r[0] for r in results)
            mib = statistics.median(r[1] for r in results)
            note = "" if repeat == args.repeat else " (1 run)"
            print(f"| `{label}` | {wall:.2f}{note} | {mib:,.0f} | {results[0][2]:,} |")


if __name__ == "__main__":
    main()
