"""What system metrics and watchers cost the hot loop (issue #16, items 3 and 4).

Both run in the writer thread, never in ``log()``; but the writer shares the GIL with
the loop, so the figure that matters is the net process CPU per event (all threads),
measured as in ``bench_core.py`` section 2: the same 10-key loop, minus the loop without
logging, median over interleaved repetitions, next to the strongest inline write (and
the older, naive one). Also ``log()``'s p50 per call with everything on, and each
variant's extra CPU over "nothing on" (issue #26: a value watcher ≤ +0.3 µs): the
median over repetitions of the difference within each repetition (the machine's load
moves both alike), and its min…max band.

Variants: steplog with nothing on; ``system_metrics=1.0``; the clock watchers
(``stalled``, ``slower``: counters only); each value watcher alone on ``loss``, a key
every event has (``log()`` queues its value, the writer checks a batch at a time); the
three together; the same three on a key no event has.

Run: ``python benchmarks/watchers.py`` (``--quick`` for a smoke run, ``--n``,
``--reps``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_core
import steplog
from bench_core import INLINE, NAIVE, Naive, clean, cpu_loop, inline_cpu, per_call_cost
from steplog import watch


def value_watchers(key: str) -> list[Any]:
    return [
        watch.nonfinite(key),
        watch.above(key, 1e9),
        watch.diverging(key, factor=2.0, window=100),
    ]


VARIANTS: dict[str, Callable[[], dict[str, Any]]] = {
    "steplog JSONL, nothing on": dict,
    "system_metrics=1.0": lambda: {"system_metrics": 1.0},
    "clock watchers (stalled, slower)": lambda: {
        "watchers": [watch.stalled(60.0), watch.slower(0.5)]
    },
    "nonfinite('loss') alone": lambda: {"watchers": [watch.nonfinite("loss")]},
    "above('loss', 1e9) alone": lambda: {"watchers": [watch.above("loss", 1e9)]},
    "diverging('loss', window=100) alone": lambda: {
        "watchers": [watch.diverging("loss", factor=2.0, window=100)]
    },
    "3 value watchers on 'loss' (in every event)": lambda: {"watchers": value_watchers("loss")},
    "3 value watchers on an absent key": lambda: {"watchers": value_watchers("absent")},
    "system_metrics=1.0 + all five watchers on 'loss'": lambda: {
        "system_metrics": 1.0,
        "watchers": [*value_watchers("loss"), watch.stalled(60.0), watch.slower(0.5)],
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None, help="events per repetition")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (50_000 if args.quick else 300_000)
    reps = args.reps or (2 if args.quick else 7)
    print(f"steplog {steplog.__file__} · n={n:,} · reps={reps} · Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cpu: dict[str, list[float]] = {name: [] for name in [*VARIANTS, INLINE, NAIVE]}
        for _ in range(reps):
            base = cpu_loop(None, n)
            for name, options in VARIANTS.items():
                tracker = bench_core.new_tracker(root, **options())
                c0 = time.process_time()
                cpu_loop(tracker.log, n)
                tracker.finish()
                cpu[name].append((time.process_time() - c0 - base) / n * 1e6)
            cpu[INLINE].append((inline_cpu(root / "inline.jsonl", n) - base) / n * 1e6)
            naive = Naive(root / "naive.jsonl")
            c0 = time.process_time()
            cpu_loop(naive.log, n)
            naive.finish()
            cpu[NAIVE].append((time.process_time() - c0 - base) / n * 1e6)
            clean(root)
        p50: dict[str, float] = {}
        for name, options in VARIANTS.items():
            tracker = bench_core.new_tracker(root, **options())
            p50[name] = per_call_cost(tracker.log, min(n, 100_000))[0]
            tracker.finish()
            clean(root)
    off_samples = cpu["steplog JSONL, nothing on"]
    off = statistics.median(off_samples)
    inline = statistics.median(cpu[INLINE])
    print(
        f"\n{'variant':<52} {'CPU µs/event':>13} {'vs off':>8} {'− off µs (band)':>22} "
        f"{'vs inline':>10} {'log() p50 µs':>13}"
    )
    for name, samples in cpu.items():
        median = statistics.median(samples)
        diffs = [a - b for a, b in zip(samples, off_samples, strict=True)]
        extra = f"{statistics.median(diffs):+.2f} ({min(diffs):+.2f}…{max(diffs):+.2f})"
        p = f"{p50[name]:.2f}" if name in p50 else "–"
        label = name if len(name) <= 52 else name[:49] + "..."
        print(
            f"{label:<52} {median:>13.2f} {median / off:>7.2f}x {extra:>22} "
            f"{median / inline:>9.2f}x {p:>13}"
        )


if __name__ == "__main__":
    main()
