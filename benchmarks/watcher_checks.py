"""What each value watcher's writer-side check costs per value (issue #26).

A value watcher's cost per event is ``log()``'s capture of the value (one dict lookup
and two appends, on the loop's thread) plus the writer's ``check_batch`` of it. This
script times the second alone: ``check_batch`` of each watcher over batches of
``--batch`` values (a real run's writer takes ~1 000–6 000 events a batch), for two
series — the loss of ``bench_core.make_record`` (``i * 1e-6``: it rises every step, so
``diverging`` is in an episode from step 150 on, its worst case) and a falling, noisy
loss (every watcher quiet) — and reports the median over ``--reps`` timed passes of
nanoseconds per value, one fresh process per checkout, the checkouts taken in turn.

Run::

    python benchmarks/watcher_checks.py /path/to/before/src src
    STEPLOG_PURE_PYTHON=1 python benchmarks/watcher_checks.py src   # without the extension
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from steplog import watch
batch, batches, reps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
MAKE = {
    "nonfinite": lambda: watch.nonfinite("loss"),
    "above": lambda: watch.above("loss", 1e9),
    "diverging": lambda: watch.diverging("loss", factor=2.0, window=100),
}
def series(kind, start):
    steps = list(range(start, start + batch))
    if kind == "rising":
        return steps, [i * 1e-6 for i in steps]
    return steps, [1.0 / (1 + i * 1e-3) * (1 + 0.3 * ((i * 7919) % 13) / 13) for i in steps]
out = {}
for name, make in MAKE.items():
    for kind in ("rising", "falling"):
        data = [series(kind, k * batch) for k in range(batches * reps + 3)]
        watcher = make()
        for steps, values in data[:3]:  # (past the first window and the first episode)
            watcher.check_batch(steps, values, 0.0, 0.0)
        times = []
        for r in range(reps):
            chunk = data[3 + r * batches : 3 + (r + 1) * batches]
            t0 = time.perf_counter()
            for steps, values in chunk:
                watcher.check_batch(steps, values, 0.0, 0.0)
            times.append((time.perf_counter() - t0) / (batches * batch) * 1e9)
        out[f"{name}, {kind} loss"] = times
print(json.dumps(out))
"""


def measure(src: str, batch: int, batches: int, reps: int) -> dict[str, list[float]]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, os.path.abspath(src), str(batch), str(batches), str(reps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="src/ directories, e.g. before/src src")
    parser.add_argument("--batch", type=int, default=1_024)
    parser.add_argument("--batches", type=int, default=20, help="batches per timed pass")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout")
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {src: {} for src in args.checkouts}
    for _ in range(args.rounds):
        for src in args.checkouts:
            for row, samples in measure(src, args.batch, args.batches, args.reps).items():
                times[src].setdefault(row, []).extend(samples)
    pure = " · STEPLOG_PURE_PYTHON=1" if os.environ.get("STEPLOG_PURE_PYTHON") else ""
    print(
        f"check_batch, ns per value (median of {args.rounds} × {args.reps} passes of"
        f" {args.batches} × {args.batch} values) · Python {sys.version.split()[0]}{pure}"
    )
    print("| watcher, series | " + " | ".join(args.checkouts) + " |")
    print("|---|" + "---:|" * len(args.checkouts))
    for row in times[args.checkouts[0]]:
        cells = [f"{statistics.median(times[src][row]):.1f}" for src in args.checkouts]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
