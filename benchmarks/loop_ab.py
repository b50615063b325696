"""What logging costs a ~100 µs numpy step loop, in paired blocks (issue #26).

A loop-slowdown figure from whole runs (``bench_core.bench_slowdown``: one tracker per
round, each run against its own no-logging run) moves by ±10 points on a shared VM,
while logging adds ~1 µs to a 100 µs step: a difference of half a point between two
ways of logging is far below that. This benchmark measures it in one process, in short
blocks of ``--block`` steps taken in turn — no logging, the strongest inline write
(``bench_core.INLINE``: one ``f.write(orjson.dumps(...))`` into a 64 KiB buffered
file), and ``Tracker.log`` into JSONL — over ``--rounds`` rounds, in a rotating order,
so that each round's three blocks see the same state of the machine. Per block it
takes the wall time and the process CPU time (all threads: the writer included), per
step. Each way of logging is compared with the no-logging block of its own round, and
the figures are the medians over the rounds of those paired differences:

- ``wall − none`` and ``CPU − none`` per step, in µs;
- the slowdown in points (``wall − none`` over the no-logging step's wall time);
- steplog minus the inline write, in µs and in points, with the interquartile range of
  the per-round differences (how well this run resolves them).

One tracker and one inline file stay open through all blocks, as in a real loop that
logs every step (``finish()`` and the file's close are timed once, after the rounds,
and reported apart). Run::

    python benchmarks/loop_ab.py --rounds 60
    PYTHONPATH=/path/to/before/src python benchmarks/loop_ab.py --rounds 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

import steplog

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core as b

OPTION = orjson.OPT_APPEND_NEWLINE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=2_000, help="steps per block")
    parser.add_argument("--step-us", type=float, default=100.0, help="the numpy step's target")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="steplog-loop-ab-"))
    work = b.calibrate_numpy_step(args.step_us)
    tracker = b.new_tracker(root)
    log = tracker.log
    inline_file = open(root / "inline.jsonl", "wb", buffering=b.INLINE_BUFFER)  # noqa: SIM115
    write, dumps, now = inline_file.write, orjson.dumps, time.time
    step = 0

    def none(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x = work()
            b.make_record(step, x)
            step += 1

    def inline(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x = work()
            d = b.make_record(step, x)
            write(dumps({"step": step, "time": now(), "data": d}, option=OPTION))
            step += 1

    def steplog_(n: int) -> None:
        nonlocal step
        for _ in range(n):
            x = work()
            log(b.make_record(step, x))
            step += 1

    ways: dict[str, Callable[[int], None]] = {
        "none": none,
        "inline": inline,
        "steplog": steplog_,
    }
    wall: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for name in names:  # warm-up: one block each, not counted
        ways[name](args.block // 4)
    for r in range(args.rounds):
        order = names[r % 3 :] + names[: r % 3]
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            ways[name](args.block)
            c1, w1 = time.process_time(), time.perf_counter()
            wall[name].append((w1 - w0) / args.block * 1e6)
            cpu[name].append((c1 - c0) / args.block * 1e6)
    t0 = time.perf_counter()
    stats = tracker.finish()
    finish_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    inline_file.close()
    close_s = time.perf_counter() - t0
    assert stats is not None and stats.logged == stats.written, stats
    step_us = statistics.median(wall["none"])

    def paired(name: str, series: dict[str, list[float]]) -> list[float]:
        return [x - y for x, y in zip(series[name], series["none"], strict=True)]

    def quartiles(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4)
        return f"{q[0]:+.2f}…{q[2]:+.2f}"

    print(
        f"{args.rounds} rounds × {args.block} steps per block · no-logging step "
        f"{step_us:.1f} µs (wall, median) · steplog {steplog.__file__} · "
        f"Python {sys.version.split()[0]}"
    )
    print("| per step (median of paired rounds) | inline write | steplog |")
    print("|---|---:|---:|")
    for label, series in (("wall − none (µs)", wall), ("process CPU − none (µs)", cpu)):
        cells = [statistics.median(paired(name, series)) for name in ("inline", "steplog")]
        print(f"| {label} | {cells[0]:+.2f} | {cells[1]:+.2f} |")
    points = [
        statistics.median(paired(name, wall)) / step_us * 100 for name in ("inline", "steplog")
    ]
    print(f"| slowdown (points) | {points[0]:+.2f} | {points[1]:+.2f} |")
    for label, series in (("wall", wall), ("process CPU", cpu)):
        diff = [x - y for x, y in zip(series["steplog"], series["inline"], strict=True)]
        middle = statistics.median(diff)
        print(
            f"steplog − inline, {label}: {middle:+.2f} µs per step = "
            f"{middle / step_us * 100:+.2f} points (interquartile {quartiles(diff)} µs)"
        )
    print(f"finish(): {finish_s * 1e3:.1f} ms; the inline file's close: {close_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
