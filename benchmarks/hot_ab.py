"""The hot path of two steplog checkouts, interleaved process by process (issue #26).

Each round runs one fresh process per checkout (``PYTHONPATH`` set to its ``src/``),
alternating, so that both see the same machine load; every process measures, in one
run, steplog next to the strongest inline write (``bench_core.INLINE``: one
``f.write(orjson.dumps(..., option=OPT_APPEND_NEWLINE))`` in the loop, a 64 KiB
buffered file), on the 10-key record of ``bench_core.make_record``:

- process CPU per event (all threads, ``finish()`` included) minus the loop without
  logging, and its ratio to the inline write's;
- the logging thread's page faults per 1 000 events during that loop (a fault costs a
  call a few µs: they make most of ``log()``'s slowest calls), next to the inline write's;
- the logging thread's own CPU per event (``time.thread_time``), net of the same loop;
- ``log()`` p50 and p99 per call next to the inline write's (timed the same way);
- sustained events/s into JSONL (``overflow="block"``, nothing lost: checked).

CPU time, not wall time, is the main figure: it stays meaningful on a loaded machine.
Prints each checkout's medians over the rounds (and ``--json PATH``: every sample)::

    python benchmarks/hot_ab.py /path/to/before/src src --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import gc, json, resource, sys, tempfile, time
from pathlib import Path
# Page faults of the logging thread (Linux; the process's elsewhere).
_who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
def faults():
    return resource.getrusage(_who).ru_minflt
sys.path.insert(0, sys.argv[1])
import bench_core as b
import steplog
n, n_calls, n_tp = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
root = Path(tempfile.mkdtemp())
out = {"steplog": steplog.__file__}
base = b.cpu_loop(None, n)
t0 = time.thread_time()
b.cpu_loop(None, n)
base_thread = time.thread_time() - t0
f0 = faults()
out["inline_cpu"] = (b.inline_cpu(root / "inline.jsonl", n) - base) / n * 1e6
out["inline_faults"] = (faults() - f0) / n * 1e3
b.clean(root)
tracker = b.new_tracker(root)
f0 = faults()
p0, m0 = time.process_time(), time.thread_time()
b.cpu_loop(tracker.log, n)
m1 = time.thread_time()
out["faults"] = (faults() - f0) / n * 1e3
tracker.finish()
out["cpu"] = (time.process_time() - p0 - base) / n * 1e6
out["thread_cpu"] = (m1 - m0 - base_thread) / n * 1e6
b.clean(root)
out["inline_p50"], out["inline_p99"] = b.inline_per_call(root / "inline.jsonl", n_calls)
b.clean(root)
tracker = b.new_tracker(root)
out["p50"], out["p99"] = b.per_call_cost(tracker.log, n_calls)
tracker.finish()
b.clean(root)
out["events_per_s"] = b.bench_throughput(root, n_tp, 1)[0]
print(json.dumps(out))
"""

FIGURES = [
    ("cpu", "process CPU per event, net (µs)"),
    ("inline_cpu", "strongest inline write: process CPU per event, net (µs)"),
    ("x_inline", "× the strongest inline write"),
    ("thread_cpu", "logging thread's CPU per event, net (µs)"),
    ("faults", "logging thread's page faults per 1 000 events"),
    ("inline_faults", "inline write: page faults per 1 000 events"),
    ("p50", "log() p50 (µs)"),
    ("p99", "log() p99 (µs)"),
    ("inline_p50", "inline write p50 (µs)"),
    ("inline_p99", "inline write p99 (µs)"),
    ("p99_minus_inline", "log() p99 − inline p99 (µs)"),
    ("events_per_s", "sustained events/s (lossless)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="src/ directories, e.g. before/src src")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=200_000, help="events per CPU pass")
    parser.add_argument("--calls", type=int, default=100_000, help="log() calls timed")
    parser.add_argument("--throughput", type=int, default=500_000, help="events, rate pass")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {src: [] for src in args.checkouts}
    for _ in range(args.rounds):
        for src in args.checkouts:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(HERE),
                    str(args.events),
                    str(args.calls),
                    str(args.throughput),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["x_inline"] = row["cpu"] / row["inline_cpu"]
            row["p99_minus_inline"] = row["p99"] - row["inline_p99"]
            samples[src].append(row)
    print(f"{args.rounds} interleaved rounds · Python {sys.version.split()[0]} · medians")
    header = "| figure | " + " | ".join(args.checkouts) + " |"
    print(header + "\n|---|" + "---:|" * len(args.checkouts))
    for key, label in FIGURES:
        cells = []
        for src in args.checkouts:
            value = statistics.median(row[key] for row in samples[src])
            cells.append(f"{value:,.0f}" if key == "events_per_s" else f"{value:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(samples, indent=2) + "\n")


if __name__ == "__main__":
    main()
