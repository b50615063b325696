"""Core benchmark: what steplog costs the hot loop (issue #2's figures).

Measures, in one run, for a 10-key dict per step (8 floats, an int, a short string):

1. ``log()`` cost per call (median, p99), timer overhead removed, with the worker
   writing to JSONL — next to the floor (``deque.append(dict(d))``) and a naive inline
   ``orjson.dumps`` + buffered ``write``.
2. Net process CPU per event (all threads: the worker shares the GIL with the loop),
   minus the same loop without logging.
3. Sustained events/s into JSONL with ``overflow="block"``, verifying nothing was lost.
4. Wall-clock slowdown of a loop whose steps do ~100 µs of numpy work, with
   interleaved repetitions (A B C A B C …), reported as median ratios.

Run: ``python benchmarks/bench_core.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

import steplog


def make_record(i: int, x: float) -> dict[str, Any]:
    return {
        "loss": x,
        "best_loss": x * 0.5,
        "grad_norm": x * 1.5,
        "lr": 0.001,
        "temperature": x * 0.1,
        "accept_rate": 0.25,
        "entropy": x + 1.0,
        "kl": x * 0.01,
        "step": i,
        "trigger": "abc xyz",
    }


class Naive:
    """The same loop with an inline orjson.dumps + buffered file write (reference)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.step = 0

    def log(self, data: dict[str, Any]) -> None:
        self.file.write(orjson.dumps({"step": self.step, "time": time.time(), "data": data}))
        self.file.write(b"\n")
        self.step += 1

    def finish(self) -> None:
        self.file.close()


class Floor:
    """The physical floor of an in-process enqueue: deque.append(dict(d))."""

    def __init__(self) -> None:
        self.queue: deque[dict[str, Any]] = deque()

    def log(self, data: dict[str, Any]) -> None:
        self.queue.append(dict(data))
        if len(self.queue) > 65_536:
            self.queue.clear()

    def finish(self) -> None:
        self.queue.clear()


def clean(root: Path) -> None:
    """Delete the run files written so far (outside timed regions).

    Without this, a full benchmark leaves gigabytes of dirty page cache behind, and
    later measurements pay for the kernel's write-back instead of for logging.
    """
    for path in root.rglob("*.jsonl"):
        path.unlink()


def new_tracker(root: Path, **kwargs: Any) -> steplog.Tracker:
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="bench", **kwargs)
    tracker.init({"bench": True})
    return tracker


def per_call_cost(log: Callable[[dict[str, Any]], None], n: int) -> tuple[float, float]:
    clock = time.perf_counter_ns
    overhead = []
    for _ in range(10_000):
        t0 = clock()
        overhead.append(clock() - t0)
    timer = statistics.median(overhead)
    samples = []
    for i in range(n):
        record = make_record(i, i * 1e-6)
        t0 = clock()
        log(record)
        samples.append(clock() - t0)
    samples.sort()
    return (samples[len(samples) // 2] - timer) / 1e3, (samples[int(n * 0.99)] - timer) / 1e3


def bench_log_cost(root: Path, n: int) -> dict[str, tuple[float, float]]:
    out = {}
    floor = Floor()
    out["deque.append(dict(d)) floor"] = per_call_cost(floor.log, n)
    floor.finish()
    naive = Naive(root / "naive.jsonl")
    out["naive inline orjson + write"] = per_call_cost(naive.log, n)
    naive.finish()
    tracker = new_tracker(root)
    out["steplog JSONL (block)"] = per_call_cost(tracker.log, n)
    tracker.finish()
    tracker = new_tracker(root, snapshot=False)
    out["steplog JSONL (block, snapshot=False)"] = per_call_cost(tracker.log, n)
    tracker.finish()
    clean(root)
    return out


def cpu_loop(log: Callable[[dict[str, Any]], None] | None, n: int) -> float:
    c0 = time.process_time()
    if log is None:
        sink = None
        for i in range(n):
            sink = make_record(i, i * 1e-6)
        del sink
    else:
        for i in range(n):
            log(make_record(i, i * 1e-6))
    return time.process_time() - c0


def bench_cpu(root: Path, n: int, reps: int) -> dict[str, float]:
    """Net process CPU per event (µs), median over interleaved repetitions.

    ``snapshot=False`` skips log()'s look for arrays and tensors to copy (a per-value
    type check once numpy is imported, as here). The "gc disabled" row is a
    diagnostic: events that wait in the buffer survive young-generation collections,
    which makes the cyclic GC run full collections more often in a process with few
    long-lived objects (like this benchmark).
    """
    gc_off = "steplog JSONL (block), gc disabled (diagnostic)"
    no_snapshot = "steplog JSONL (block, snapshot=False)"
    results: dict[str, list[float]] = {
        "steplog JSONL (block)": [],
        no_snapshot: [],
        gc_off: [],
        "naive inline orjson + write": [],
    }
    for _ in range(reps):
        base = cpu_loop(None, n)
        tracker = new_tracker(root)
        c0 = time.process_time()
        cpu_loop(tracker.log, n)
        tracker.finish()
        used = time.process_time() - c0
        results["steplog JSONL (block)"].append((used - base) / n * 1e6)
        tracker = new_tracker(root, snapshot=False)
        c0 = time.process_time()
        cpu_loop(tracker.log, n)
        tracker.finish()
        results[no_snapshot].append((time.process_time() - c0 - base) / n * 1e6)
        gc.disable()
        try:
            tracker = new_tracker(root)
            c0 = time.process_time()
            cpu_loop(tracker.log, n)
            tracker.finish()
            results[gc_off].append((time.process_time() - c0 - base) / n * 1e6)
        finally:
            gc.enable()
        naive = Naive(root / "naive.jsonl")
        c0 = time.process_time()
        cpu_loop(naive.log, n)
        naive.finish()
        results["naive inline orjson + write"].append((time.process_time() - c0 - base) / n * 1e6)
        clean(root)
    results["harness (the loop without logging)"] = [cpu_loop(None, n) / n * 1e6]
    return {k: statistics.median(v) for k, v in results.items()}


def bench_throughput(root: Path, n: int, reps: int) -> tuple[float, int]:
    """Sustained events/s into JSONL, block policy; verifies every event is in the file."""
    rates = []
    record = make_record(0, 0.5)
    for _ in range(reps):
        backend = steplog.JsonlBackend(root)
        tracker = steplog.Tracker(backend, experiment_name="throughput")
        tracker.init()
        log = tracker.log
        start = time.perf_counter()
        for _ in range(n):
            log(record)
        stats = tracker.finish()
        elapsed = time.perf_counter() - start
        assert stats is not None
        assert backend.path is not None
        with open(backend.path, "rb") as file:
            lines = sum(1 for _ in file) - 2
        if not (stats.logged == stats.written == lines == n and stats.dropped == 0):
            raise SystemExit(f"events lost: logged {stats.logged}, in file {lines}")
        rates.append(n / elapsed)
        clean(root)
    return statistics.median(rates), n


def calibrate_numpy_step(target_us: float = 100.0) -> Callable[[], float]:
    rng = np.random.default_rng(0)
    size = 64
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))

    def one() -> float:
        return float((a @ b).sum())

    t0 = time.perf_counter()
    for _ in range(2000):
        one()
    per = (time.perf_counter() - t0) / 2000 * 1e6
    repeat = max(1, round(target_us / per))

    def step() -> float:
        total = 0.0
        for _ in range(repeat):
            total += one()
        return total

    return step


def bench_slowdown(root: Path, steps: int, reps: int) -> tuple[float, dict[str, float]]:
    """Median wall-clock ratio vs no logging, interleaved A B C repetitions."""
    work = calibrate_numpy_step()
    t0 = time.perf_counter()
    for _ in range(1000):
        work()
    step_us = (time.perf_counter() - t0) / 1000 * 1e6

    def loop(log: Callable[[dict[str, Any]], None] | None) -> float:
        start = time.perf_counter()
        for i in range(steps):
            x = work()
            record = make_record(i, x)
            if log is not None:
                log(record)
        return time.perf_counter() - start

    ratios: dict[str, list[float]] = {
        "steplog JSONL (block)": [],
        "naive inline orjson + write": [],
    }
    for _ in range(reps):
        base = loop(None)
        tracker = new_tracker(root)
        t = loop(tracker.log)
        tracker.finish()
        ratios["steplog JSONL (block)"].append(t / base)
        naive = Naive(root / "naive.jsonl")
        t = loop(naive.log)
        naive.finish()
        ratios["naive inline orjson + write"].append(t / base)
        clean(root)
    return step_us, {k: statistics.median(v) for k, v in ratios.items()}


def bench_breakdown(root: Path, n: int, reps: int) -> None:
    """Per-thread CPU per event: the logging loop, the worker thread, other threads."""
    from steplog import _worker

    class EncodeOnly(steplog.JsonlBackend):
        async def write(self, events: Any) -> None:
            self._encoder.encode_events(events)

    worker_cpu: list[float] = []
    original = _worker.Worker._thread_main

    def timed(self: Any, info: Any) -> None:
        try:
            original(self, info)
        finally:
            worker_cpu.append(time.thread_time())

    _worker.Worker._thread_main = timed  # type: ignore[method-assign]
    variants: dict[str, Callable[[], steplog.Backend]] = {
        "NullBackend": steplog.NullBackend,
        "JSONL encoding only (no write)": lambda: EncodeOnly(root),
        "JsonlBackend": lambda: steplog.JsonlBackend(root),
    }
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    try:
        for _ in range(reps):
            for name, make in variants.items():
                t0 = time.thread_time()
                cpu_loop(None, n)
                base = time.thread_time() - t0
                tracker = steplog.Tracker(make(), experiment_name="breakdown")
                tracker.init()
                p0, m0 = time.process_time(), time.thread_time()
                cpu_loop(tracker.log, n)
                tracker.finish()
                main_cpu = time.thread_time() - m0
                total = time.process_time() - p0
                clean(root)
                rows[name].append(
                    (
                        (main_cpu - base) / n * 1e6,
                        worker_cpu[-1] / n * 1e6,
                        (total - base) / n * 1e6,
                    )
                )
    finally:
        _worker.Worker._thread_main = original  # type: ignore[method-assign]
    print(f"\n### Per-thread CPU per event ({n:,} events, median of {reps}, µs)")
    print("| backend | logging thread (net) | worker thread | whole process (net) |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        cols = [statistics.median(v[i] for v in values) for i in range(3)]
        print(f"| {name} | {cols[0]:.2f} | {cols[1]:.2f} | {cols[2]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument(
        "--breakdown", action="store_true", help="only the per-thread CPU breakdown"
    )
    args = parser.parse_args()
    scale = 0.05 if args.quick else 1.0
    n_calls = int(200_000 * scale)
    n_cpu = int(500_000 * scale)
    n_tp = int(2_000_000 * scale)
    steps = int(20_000 * scale)
    reps = 3 if args.quick else 7

    print(
        f"steplog {steplog.__version__} · Python {platform.python_version()} · "
        f"{platform.machine()} · {os.cpu_count()} CPUs · orjson {orjson.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.breakdown:
            bench_breakdown(root, int(400_000 * scale), reps)
            return
        print(f"\n### log() cost per call ({n_calls:,} calls, µs)")
        print("| logger | p50 | p99 |\n|---|---:|---:|")
        for name, (p50, p99) in bench_log_cost(root, n_calls).items():
            print(f"| {name} | {p50:.2f} | {p99:.2f} |")

        print(f"\n### Net process CPU per event ({n_cpu:,} events, median of {reps}, µs)")
        print("| logger | CPU per event |\n|---|---:|")
        for name, value in bench_cpu(root, n_cpu, reps).items():
            print(f"| {name} | {value:.2f} |")

        rate, n = bench_throughput(root, n_tp, 3)
        print(f"\n### Sustained throughput into JSONL (block, {n:,} events, median of 3)")
        print(f"{rate:,.0f} events/s, nothing lost (file line count checked)")

        step_us, ratios = bench_slowdown(root, steps, reps)
        print(
            f"\n### Slowdown of a ~{step_us:.0f} µs numpy step loop "
            f"({steps:,} steps, median of {reps} interleaved repetitions)"
        )
        print("| logger | wall-clock ratio vs no logging |\n|---|---:|")
        for name, ratio in ratios.items():
            print(f"| {name} | {ratio:.4f} ({(ratio - 1) * 100:+.1f} %) |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
