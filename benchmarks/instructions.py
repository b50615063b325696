"""Instructions per event of steplog checkouts, counted by valgrind (issue #26).

Wall-clock and CPU figures move by tens of percent on a shared 2-core VM; the number of
instructions a process executes does not depend on the load. This script counts them
with ``valgrind --tool=callgrind`` for the whole logging process (all its threads; a
``durability="process"`` writer *process* is not traced) over a loop of ``--small``
and of ``--large`` events (``bench_core.cpu_loop``, ``finish()`` included,
``PYTHONHASHSEED=0``, one OpenBLAS thread), and reports the difference per event, so
that start-up and shutdown cancel out.

The value watchers' rows need ``--one-batch``: the tracker's writer then wakes only at
``finish()`` and takes every event in one batch. Without it the writer runs when it
gets the GIL, whose hand-over waits out a switch interval of wall-clock time; under
valgrind (~50× slower) that made batches of a few events, how few depending on the
machine's load, and a watcher's per-batch work (``diverging`` sums its first window
afresh in each batch), which a real run spreads over thousands of events (~5 800 a
batch measured at full speed), moved its count by up to ~2 500 instructions per event
between runs of the same code. One batch counts the per-event work alone, the same in
every run; compare watcher rows with a "10 keys" row counted the same way. Rows:

- ``harness``: the loop building its records, no logging;
- ``inline``: the strongest inline write (``bench_core.inline_cpu``), where the workload
  is a plain dict;
- one row per checkout (``PYTHONPATH`` set to its ``src/``).

Per workload it prints the counts, each checkout's count net of the harness, and that
net count as a multiple of the inline write's. Instructions are not time (orjson's SIMD
code does more per instruction than the interpreter; an interpreted bytecode costs ~20
instructions), but they show a change of work without the load's noise.

Run::

    python benchmarks/instructions.py /path/to/before/src src
    python benchmarks/instructions.py src --workloads "10 keys" "100 keys"
    python benchmarks/instructions.py before/src src --one-batch --workloads "10 keys" \
        "nonfinite watcher" "above watcher" "diverging watcher" "3 value watchers"

Needs valgrind (``apt install valgrind``); about 20 s per count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import bench_core as b
from steplog import watch
workload, mode, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
root = Path(tempfile.mkdtemp())
make, options = b.make_record, {}
if sys.argv[5] == "one batch":  # the writer wakes only at finish()
    options = {"batch_size": 65_536, "flush_interval": 3600.0}
if workload.endswith(" keys") and workload != "10 keys":
    make = b.sized_record(int(workload.split()[0]))
elif workload == "tensors":
    import torch
    pools = [[torch.tensor(k + j / 1024) for j in range(1024)] for k in range(4)]
    make = b.pooled_record(pools)
elif workload == "nonfinite watcher":
    options["watchers"] = [watch.nonfinite("loss")]
elif workload == "above watcher":
    options["watchers"] = [watch.above("loss", 1e9)]
elif workload == "diverging watcher":
    options["watchers"] = [watch.diverging("loss", factor=2.0, window=100)]
elif workload == "3 value watchers":
    options["watchers"] = [watch.nonfinite("loss"), watch.above("loss", 1e9),
                           watch.diverging("loss", factor=2.0, window=100)]
elif workload == "process durability":
    options["durability"] = "process"
if mode == "harness":
    b.cpu_loop(None, n, make)
elif mode == "inline":
    b.inline_cpu(root / "inline.jsonl", n, make)
else:
    tracker = b.new_tracker(root, **options)
    b.cpu_loop(tracker.log, n, make)
    tracker.finish()
b.clean(root)
"""

WORKLOADS = [
    "10 keys",
    "nonfinite watcher",
    "above watcher",
    "diverging watcher",
    "3 value watchers",
    "30 keys",
    "100 keys",
    "tensors",
    "process durability",
]
PLAIN = {"10 keys", "30 keys", "100 keys"}  # the inline write takes these as they are
LABELS = {
    "10 keys": "10 keys (bench_core.make_record), JSONL",
    "nonfinite watcher": "10 keys + watch.nonfinite('loss')",
    "above watcher": "10 keys + watch.above('loss', 1e9)",
    "diverging watcher": "10 keys + watch.diverging('loss', window=100) (a rising loss)",
    "3 value watchers": "10 keys + nonfinite, above, diverging on 'loss' (a rising loss)",
    "30 keys": "30 keys",
    "100 keys": "100 keys",
    "tensors": "4 CPU torch 0-d tensors + 6 floats",
    "process durability": '10 keys, durability="process" (this process only)',
}


def count(workload: str, mode: str, n: int, src: str | None, one_batch: bool = False) -> int:
    """Instructions the whole process executed (valgrind's "Collected")."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = os.path.abspath(src)
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CHILD,
            str(HERE),
            workload,
            mode,
            str(n),
            "one batch" if one_batch else "",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_event(
    workload: str, mode: str, small: int, large: int, src: str | None, one_batch: bool = False
) -> float:
    counts = [count(workload, mode, n, src, one_batch) for n in (large, small)]
    return (counts[0] - counts[1]) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="src/ directories, e.g. before/src src")
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=WORKLOADS)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=12_000)
    parser.add_argument(
        "--one-batch",
        action="store_true",
        help="the writer takes every event at finish(), in one batch (for the watchers: see"
        " the docstring)",
    )
    args = parser.parse_args()
    print(
        f"instructions per event (valgrind callgrind, {args.large:,} − {args.small:,} events)"
        f" · Python {sys.version.split()[0]}" + (" · one batch" if args.one_batch else "")
    )
    names = [str(src) for src in args.checkouts]
    print(
        "| workload | harness | inline (net) | "
        + " | ".join(f"{name} (net, × inline)" for name in names)
        + " |"
    )
    print("|---|---:|---:|" + "---:|" * len(names))
    for workload in args.workloads:
        harness = per_event(workload, "harness", args.small, args.large, args.checkouts[0])
        inline = None
        if workload in PLAIN:
            inline = per_event(workload, "inline", args.small, args.large, args.checkouts[0])
        cells = [f"{harness:,.0f}", "–" if inline is None else f"{inline - harness:,.0f}"]
        for src in args.checkouts:
            total = per_event(workload, "steplog", args.small, args.large, src, args.one_batch)
            net = total - harness
            ratio = "" if inline is None else f", {net / (inline - harness):.2f}×"
            cells.append(f"{net:,.0f}{ratio}")
        print(f"| {LABELS[workload]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
