"""Sustained JSONL throughput of two steplog checkouts, interleaved (before/after).

Each run logs ``--events`` 10-key events into a ``JsonlBackend`` (``overflow="block"``,
nothing lost) in a fresh process, the two checkouts alternating ``--rounds`` times, so
both see the same machine load; prints every figure and the medians. Section 3 of
``bench_core.py`` on its own, for a before/after comparison:

    python benchmarks/throughput_ab.py /path/to/old/src src --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import sys, tempfile, time, steplog
n = int(sys.argv[1])
tracker = steplog.Tracker(steplog.JsonlBackend(tempfile.mkdtemp()), experiment_name="tp")
tracker.init()
data = {"loss": 0.5, "a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0,
        "i": 3, "s": "abc"}
log = tracker.log
started = time.perf_counter()
for _ in range(n):
    log(data)
stats = tracker.finish()
assert stats.written == n, stats
print(n / (time.perf_counter() - started))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the src/ directory of the first checkout")
    parser.add_argument("after", help="the src/ directory of the second checkout")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {args.before: [], args.after: []}
    for _ in range(args.rounds):
        for src in (args.before, args.after):
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.events)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[src].append(float(out))
    for src, rates in results.items():
        shown = ", ".join(f"{r / 1000:.0f} k" for r in rates)
        print(f"{src}: {shown} events/s; median {statistics.median(rates) / 1000:.0f} k")


if __name__ == "__main__":
    main()
