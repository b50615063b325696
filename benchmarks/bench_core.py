"""Core benchmark: what steplog costs the hot loop (issues #2 and #11).

Every figure is measured in one run next to the strongest inline write a careful user
writes (issue #26): one ``f.write(orjson.dumps({"step": i, "time": time.time(), "data":
d}, option=orjson.OPT_APPEND_NEWLINE))`` in the loop itself, into a file opened with a
64 KiB buffer — no method call, no attribute bump (``INLINE``; each section writes its
own loop for it, so that it really is inline). Every ratio is against it. The older,
weaker reference (the ``Naive`` class: a method that writes the line, then ``b"\n"``,
and bumps a counter) stays as a second row, labelled as such. The workload is a 10-key
dict per step (8 floats, an int, a short string) unless a section says otherwise.
Sections, in the order a full run prints them:

1. ``log()`` cost per call (p50, p99), timer overhead removed, with the writer writing
   to JSONL — next to the floor (``deque.append(dict(d))``), the strongest inline write
   (timed the same way, inline) and the naive one; and steplog's p99 minus the inline
   write's p99 (issue #26: within 1 µs).
2. Net process CPU per event (all threads: the writer shares the GIL with the loop),
   minus the same loop without logging, and its ratio to the strongest inline write.
3. Sustained events/s into JSONL with ``overflow="block"``, verifying nothing was lost.
4. Wall-clock slowdown of a loop whose steps do ~100 µs of numpy work, over
   ``--rounds`` interleaved rounds (none, steplog, inline, naive; …): the median ratio
   to no logging, the min…max band of the per-round ratios, and "steplog − inline" in
   percentage points (median and band of the per-round differences; issue #26's target
   is ≤ +0.5 points).
5. Per-thread CPU per event (``--breakdown``): the logging thread (net of the loop
   without logging), the writer thread (``steplog._writer.Writer``; on code from before
   the writer existed, the anyio worker thread ``steplog._worker.Worker``) and the whole
   process, for ``NullBackend``, ``JsonlBackend``, the strongest and the naive inline
   write.
6. Size scaling and the tensor path (``--scaling``): log() p50/p99 and net process CPU
   per event for dicts of 10, 30 and 100 keys (steplog default, ``snapshot=False``,
   naive), then for 4 CPU torch 0-d tensors + 6 floats (also through the accelerator
   path: CPU tensors made to report ``is_cpu`` False) and for 4 numpy arrays of 10 elements
   + 6 floats, next to an inline write that calls ``.tolist()`` on them (the strongest
   inline write for plain dicts).

Sections 2, 5 and 6 interleave their variants within each repetition and report
medians over repetitions.

Run: ``python benchmarks/bench_core.py`` (all sections). Options: ``--quick`` (small
sizes, a smoke run), ``--core`` (sections 1 to 3 only), ``--breakdown`` / ``--scaling``
(only those sections; they combine), ``--rounds N`` (slowdown rounds; 15, or 3 with
``--quick``), ``--json PATH`` (every printed figure, plus the per-round samples, as
JSON). The header names the steplog that was imported, so a before/after comparison is
the same script run against two checkouts, e.g. ``PYTHONPATH=/tmp/steplog-before/src
python benchmarks/bench_core.py --json before.json`` (``benchmarks/hot_ab.py`` runs the
hot-path figures of two checkouts interleaved, process by process).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

import steplog

Record = dict[str, Any]
MakeRecord = Callable[[int, float], Record]
INLINE = "strongest inline write (f.write(orjson.dumps(..., OPT_APPEND_NEWLINE)))"
NAIVE = "naive inline write (old reference: a method, two writes, a counter)"
#: The buffer a careful user gives the inline write's file.
INLINE_BUFFER = 64 * 1024
INLINE_TOLIST = "strongest inline write, .tolist() first"


class Logger(Protocol):
    def log(self, data: Record) -> None: ...

    def finish(self) -> Any: ...


def make_record(i: int, x: float) -> Record:
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

    def log(self, data: Record) -> None:
        self.file.write(orjson.dumps({"step": self.step, "time": time.time(), "data": data}))
        self.file.write(b"\n")
        self.step += 1

    def finish(self) -> None:
        self.file.close()


class Floor:
    """The physical floor of an in-process enqueue: deque.append(dict(d))."""

    def __init__(self) -> None:
        self.queue: deque[Record] = deque()

    def log(self, data: Record) -> None:
        self.queue.append(dict(data))
        if len(self.queue) > 65_536:
            self.queue.clear()

    def finish(self) -> None:
        self.queue.clear()


def inline_per_call(path: Path, n: int, make: MakeRecord = make_record) -> tuple[float, float]:
    """The strongest inline write's p50 and p99 per call in µs, timed inline like
    :func:`per_call_cost` times ``log()`` (timer overhead removed)."""
    clock = time.perf_counter_ns
    timer = _timer_overhead()
    samples = _samples(n)
    with open(path, "wb", buffering=INLINE_BUFFER) as f:
        for i in range(n):
            d = make(i, i * 1e-6)
            t0 = clock()
            f.write(
                orjson.dumps(
                    {"step": i, "time": time.time(), "data": d}, option=orjson.OPT_APPEND_NEWLINE
                )
            )
            samples[i] = clock() - t0
    ordered = sorted(samples)
    return (ordered[n // 2] - timer) / 1e3, (ordered[int(n * 0.99)] - timer) / 1e3


def inline_cpu(
    path: Path, n: int, make: MakeRecord = make_record, *, tolist: bool = False
) -> float:
    """Process CPU seconds of the loop with the strongest inline write (file closed).

    ``tolist``: values that have ``.tolist()`` (tensors, arrays) are converted first,
    as a user must before ``orjson.dumps``.
    """
    c0 = time.process_time()
    with open(path, "wb", buffering=INLINE_BUFFER) as f:
        if tolist:
            for i in range(n):
                d = make(i, i * 1e-6)
                d = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in d.items()}
                f.write(
                    orjson.dumps(
                        {"step": i, "time": time.time(), "data": d},
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
        else:
            for i in range(n):
                d = make(i, i * 1e-6)
                f.write(
                    orjson.dumps(
                        {"step": i, "time": time.time(), "data": d},
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
    return time.process_time() - c0


def clean(root: Path) -> None:
    """Delete the run files written so far (outside timed regions).

    Without this, a full benchmark leaves gigabytes of dirty page cache behind, and
    later measurements pay for the kernel's write-back instead of for logging.
    """
    for path in root.rglob("*.jsonl"):
        path.unlink()


#: Whether this steplog has Tracker(durability="process") (an older checkout may not).
HAS_PROCESS = "durability" in inspect.signature(steplog.Tracker.__init__).parameters
PROCESS = 'steplog JSONL (durability="process")'


def process_cpu() -> float:
    """CPU of this process plus its reaped children (the writer process, once closed)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def new_tracker(root: Path, **kwargs: Any) -> steplog.Tracker:
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="bench", **kwargs)
    tracker.init({"bench": True})
    return tracker


def _samples(n: int) -> array[int]:
    """Room for ``n`` per-call timings, allocated before the timed loop.

    (A list that grows by one int per call would allocate in the loop: a new int object
    that lives to the end, and now and then a bigger list; the heap then grows through
    the loop, and its page faults land in the calls timed next to it — about 1 % of
    calls at 200 000, which made most of the p99 of ``log()`` and of the inline write
    alike before 2026-12-07.)
    """
    return array("q", bytes(8 * n))


def _timer_overhead() -> float:
    clock = time.perf_counter_ns
    overhead = []
    for _ in range(10_000):
        t0 = clock()
        overhead.append(clock() - t0)
    return statistics.median(overhead)


def per_call_cost(
    log: Callable[[Record], None], n: int, make: MakeRecord = make_record
) -> tuple[float, float]:
    """log()'s p50 and p99 in µs, timer overhead removed."""
    clock = time.perf_counter_ns
    timer = _timer_overhead()
    samples = _samples(n)
    for i in range(n):
        record = make(i, i * 1e-6)
        t0 = clock()
        log(record)
        samples[i] = clock() - t0
    ordered = sorted(samples)
    return (ordered[n // 2] - timer) / 1e3, (ordered[int(n * 0.99)] - timer) / 1e3


def bench_log_cost(root: Path, n: int) -> dict[str, tuple[float, float]]:
    out = {}
    floor = Floor()
    out["deque.append(dict(d)) floor"] = per_call_cost(floor.log, n)
    floor.finish()
    out[INLINE] = inline_per_call(root / "inline.jsonl", n)
    naive = Naive(root / "naive.jsonl")
    out[NAIVE] = per_call_cost(naive.log, n)
    naive.finish()
    tracker = new_tracker(root)
    out["steplog JSONL (block)"] = per_call_cost(tracker.log, n)
    tracker.finish()
    tracker = new_tracker(root, snapshot=False)
    out["steplog JSONL (block, snapshot=False)"] = per_call_cost(tracker.log, n)
    tracker.finish()
    if HAS_PROCESS:
        tracker = new_tracker(root, durability="process")
        out[PROCESS] = per_call_cost(tracker.log, n)
        tracker.finish()
    clean(root)
    return out


def cpu_loop(log: Callable[[Record], None] | None, n: int, make: MakeRecord = make_record) -> float:
    c0 = time.process_time()
    if log is None:
        sink = None
        for i in range(n):
            sink = make(i, i * 1e-6)
        del sink
    else:
        for i in range(n):
            log(make(i, i * 1e-6))
    return time.process_time() - c0


def bench_cpu(root: Path, n: int, reps: int) -> dict[str, float]:
    """Net process CPU per event (µs), median over interleaved repetitions.

    ``snapshot=False`` skips log()'s look for arrays and tensors to copy. The "gc
    disabled" row is a diagnostic: events that wait in the buffer survive
    young-generation collections, which makes the cyclic GC run full collections more
    often in a process with few long-lived objects (like this benchmark).
    """
    gc_off = "steplog JSONL (block), gc disabled (diagnostic)"
    no_snapshot = "steplog JSONL (block, snapshot=False)"
    results: dict[str, list[float]] = {
        "steplog JSONL (block)": [],
        no_snapshot: [],
        gc_off: [],
        INLINE: [],
        NAIVE: [],
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
        results[INLINE].append((inline_cpu(root / "inline.jsonl", n) - base) / n * 1e6)
        naive = Naive(root / "naive.jsonl")
        c0 = time.process_time()
        cpu_loop(naive.log, n)
        naive.finish()
        results[NAIVE].append((time.process_time() - c0 - base) / n * 1e6)
        if HAS_PROCESS:
            c0 = process_cpu()  # the writer process's CPU counts once it is reaped
            tracker = new_tracker(root, durability="process")
            cpu_loop(tracker.log, n)
            tracker.finish()
            results.setdefault(PROCESS + " (with the writer process)", []).append(
                (process_cpu() - c0 - base) / n * 1e6
            )
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


def bench_slowdown(root: Path, steps: int, rounds: int) -> tuple[float, dict[str, list[float]]]:
    """Per-round wall-clock ratios vs no logging; each round runs none, steplog, naive."""
    work = calibrate_numpy_step()
    t0 = time.perf_counter()
    for _ in range(1000):
        work()
    step_us = (time.perf_counter() - t0) / 1000 * 1e6

    def loop(log: Callable[[Record], None] | None) -> float:
        start = time.perf_counter()
        for i in range(steps):
            x = work()
            record = make_record(i, x)
            if log is not None:
                log(record)
        return time.perf_counter() - start

    def inline_loop() -> float:
        start = time.perf_counter()
        with open(root / "inline.jsonl", "wb", buffering=INLINE_BUFFER) as f:
            for i in range(steps):
                x = work()
                record = make_record(i, x)
                f.write(
                    orjson.dumps(
                        {"step": i, "time": time.time(), "data": record},
                        option=orjson.OPT_APPEND_NEWLINE,
                    )
                )
        return time.perf_counter() - start

    ratios: dict[str, list[float]] = {"steplog JSONL (block)": [], INLINE: [], NAIVE: []}
    for _ in range(rounds):
        base = loop(None)
        tracker = new_tracker(root)
        t = loop(tracker.log)
        tracker.finish()
        ratios["steplog JSONL (block)"].append(t / base)
        ratios[INLINE].append(inline_loop() / base)
        naive = Naive(root / "naive.jsonl")
        t = loop(naive.log)
        naive.finish()
        ratios[NAIVE].append(t / base)
        if HAS_PROCESS:
            tracker = new_tracker(root, durability="process")
            t = loop(tracker.log)
            tracker.finish()
            ratios.setdefault(PROCESS, []).append(t / base)
        clean(root)
    return step_us, ratios


def writer_thread_class() -> tuple[Any, str]:
    """The class whose ``_thread_main`` runs the background thread, and its name.

    Code from before the writer thread (issue #11) ran an anyio worker thread instead.
    """
    try:
        from steplog import _writer
    except ImportError:
        from steplog import _worker

        return _worker.Worker, "steplog._worker.Worker (anyio loop)"
    return _writer.Writer, "steplog._writer.Writer"


def bench_breakdown(root: Path, n: int, reps: int) -> tuple[str, dict[str, dict[str, Any]]]:
    """Per-thread CPU per event (µs): the logging loop (net), the writer, the process."""
    cls, thread_name = writer_thread_class()
    if not hasattr(cls, "_thread_main"):
        raise SystemExit(f"{thread_name} has no _thread_main to time: update bench_breakdown")
    # Put by the writer thread itself as it ends, after finish() may have returned.
    writer_cpu: queue.SimpleQueue[float] = queue.SimpleQueue()
    original = cls._thread_main

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            original(self, *args, **kwargs)
        finally:
            writer_cpu.put(time.thread_time())

    variants: dict[str, Callable[[], steplog.Backend] | None] = {
        "NullBackend": steplog.NullBackend,
        "JsonlBackend": lambda: steplog.JsonlBackend(root),
        INLINE: None,
        NAIVE: None,
    }
    rows: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in variants}
    cls._thread_main = timed
    try:
        for _ in range(reps):
            for name, make in variants.items():
                t0 = time.thread_time()
                cpu_loop(None, n)
                base = time.thread_time() - t0
                logger: Logger
                p0, m0 = time.process_time(), time.thread_time()
                if name == INLINE:
                    inline_cpu(root / "inline.jsonl", n)
                else:
                    if make is None:
                        logger = Naive(root / "naive.jsonl")
                    else:
                        logger = steplog.Tracker(make(), experiment_name="breakdown")
                        logger.init()
                    cpu_loop(logger.log, n)
                    logger.finish()
                main_cpu = time.thread_time() - m0
                total = time.process_time() - p0
                writer = None if make is None else writer_cpu.get(timeout=60) / n * 1e6
                clean(root)
                rows[name].append(((main_cpu - base) / n * 1e6, writer, (total - base) / n * 1e6))
    finally:
        cls._thread_main = original
    out: dict[str, dict[str, Any]] = {}
    for name, values in rows.items():
        writers = [v[1] for v in values if v[1] is not None]
        out[name] = {
            "logging_thread_net_us": statistics.median(v[0] for v in values),
            "writer_thread_us": statistics.median(writers) if writers else None,
            "process_net_us": statistics.median(v[2] for v in values),
        }
    return thread_name, out


@dataclasses.dataclass
class Variant:
    """One logger in the scaling section: how to make it, and the tensor path to use."""

    name: str
    make: Callable[[], Logger] | None  # None: the strongest inline write, in the loop
    host_cpu: bool = True  # False: CPU tensors take the accelerator path
    tolist: bool = False  # the inline write converts values with .tolist() first


@contextlib.contextmanager
def host_cpu(on: bool) -> Iterator[None]:
    """With ``on`` False, CPU tensors report ``is_cpu`` False for the duration: steplog
    drives them through its accelerator path (as the tests' ``cpu_tensors_as_device``)."""
    if on:
        yield
        return
    import torch

    torch.Tensor.is_cpu = property(lambda self: False)
    try:
        yield
    finally:
        del torch.Tensor.is_cpu


def sized_record(keys: int) -> MakeRecord:
    """Like ``make_record`` with ``keys`` keys: floats, one int, one short string."""
    names = ["loss", *(f"metric_{j}" for j in range(keys - 3))]
    scales = [1.0 + j / keys for j in range(keys - 2)]

    def make(i: int, x: float) -> Record:
        record: Record = {name: x * scale for name, scale in zip(names, scales, strict=True)}
        record["step"] = i
        record["trigger"] = "abc xyz"
        return record

    return make


def pooled_record(pools: Sequence[Sequence[Any]]) -> MakeRecord:
    """4 values cycled from prebuilt pools (tensors or arrays) + 6 floats per step.

    Pools keep the harness cheap and steady; the values are never mutated, so steplog
    keeping references (``snapshot=False``, the accelerator path) records them right.
    """
    p0, p1, p2, p3 = (list(pool) for pool in pools)
    mask = len(p0) - 1

    def make(i: int, x: float) -> Record:
        j = i & mask
        return {
            "loss": p0[j],
            "grad_norm": p1[j],
            "kl": p2[j],
            "entropy": p3[j],
            "best_loss": x * 0.5,
            "lr": 0.001,
            "temperature": x * 0.1,
            "accept_rate": 0.25,
            "margin": x + 1.0,
            "scale": x * 2.0,
        }

    return make


def scaling_workloads(root: Path, notes: list[str]) -> list[tuple[str, MakeRecord, list[Variant]]]:
    def tracker(**kwargs: Any) -> Callable[[], Logger]:
        return lambda: new_tracker(root, **kwargs)

    def naive(cls: type[Naive] = Naive) -> Callable[[], Logger]:
        return lambda: cls(root / "naive.jsonl")

    plain = [
        Variant("steplog JSONL (block)", tracker()),
        Variant("steplog JSONL (block, snapshot=False)", tracker(snapshot=False)),
        Variant(INLINE, None),
        Variant(NAIVE, naive()),
    ]
    workloads = [(f"{keys} keys", sized_record(keys), plain) for keys in (10, 30, 100)]
    naive_tolist = Variant(INLINE_TOLIST, None, tolist=True)
    arrays = [
        Variant("steplog JSONL (block)", tracker()),
        Variant("steplog JSONL (block, snapshot=False)", tracker(snapshot=False)),
    ]
    try:
        import torch
    except ImportError:
        notes.append("torch is not importable: the CPU tensor rows are skipped")
        print("\n(torch is not importable: the CPU tensor rows are skipped)")
    else:
        tensors = list(arrays)
        tensors.append(
            Variant("steplog JSONL (block), accelerator path", tracker(), host_cpu=False)
        )
        tensors.append(naive_tolist)
        pools = [[torch.tensor(k + j / 1024) for j in range(1024)] for k in range(4)]
        workloads.append(("4 CPU torch 0-d tensors + 6 floats", pooled_record(pools), tensors))
    rng = np.random.default_rng(0)
    pools = [[rng.standard_normal(10) for _ in range(1024)] for _ in range(4)]
    workloads.append(
        ("4 numpy arrays (10 elements) + 6 floats", pooled_record(pools), [*arrays, naive_tolist])
    )
    return workloads


def bench_scaling(root: Path, n: int, reps: int, notes: list[str]) -> dict[str, Any]:
    """log() p50/p99 and net process CPU per event by record size and value kind.

    Within a repetition every variant of a workload runs once (a per-call pass, then a
    CPU pass with finish() included); figures are medians over repetitions.
    """
    out: dict[str, Any] = {}
    for workload, make, variants in scaling_workloads(root, notes):
        samples: dict[str, dict[str, list[float]]] = {
            v.name: {"p50": [], "p99": [], "cpu": []} for v in variants
        }
        for _ in range(reps):
            base = cpu_loop(None, n, make)
            for variant in variants:
                with host_cpu(variant.host_cpu):
                    if variant.make is None:
                        path = root / "inline.jsonl"
                        p50, p99 = (
                            inline_per_call(path, n, make)
                            if not variant.tolist
                            else (
                                math.nan,
                                math.nan,
                            )
                        )
                        clean(root)
                        cpu = (inline_cpu(path, n, make, tolist=variant.tolist) - base) / n * 1e6
                        clean(root)
                        samples[variant.name]["p50"].append(p50)
                        samples[variant.name]["p99"].append(p99)
                        samples[variant.name]["cpu"].append(cpu)
                        continue
                    logger = variant.make()
                    p50, p99 = per_call_cost(logger.log, n, make)
                    logger.finish()
                    clean(root)
                    logger = variant.make()
                    c0 = time.process_time()
                    cpu_loop(logger.log, n, make)
                    logger.finish()
                    cpu = (time.process_time() - c0 - base) / n * 1e6
                clean(root)
                samples[variant.name]["p50"].append(p50)
                samples[variant.name]["p99"].append(p99)
                samples[variant.name]["cpu"].append(cpu)
        rows = {
            name: {
                "p50_us": _median_or_none(s["p50"]),
                "p99_us": _median_or_none(s["p99"]),
                "cpu_us": statistics.median(s["cpu"]),
            }
            for name, s in samples.items()
        }
        inline = next((r for name, r in rows.items() if name.startswith("strongest")), None)
        for row in rows.values():
            row["cpu_x_inline"] = row["cpu_us"] / inline["cpu_us"] if inline else None
        out[workload] = rows
    return out


def _median_or_none(values: Sequence[float]) -> float | None:
    """The median, or None where the figure was not measured (NaN samples)."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else None


def fmt_us(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def git_commit(path: str) -> str | None:
    """The commit of the checkout the package at ``path`` is in, read-only.

    ``+dirty`` marks uncommitted changes in the package's directory.
    """
    where = ["git", "-C", os.path.dirname(path)]
    try:
        done = subprocess.run(
            [*where, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            [*where, "diff", "--quiet", "HEAD", "--", "."], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if not commit:
        return None
    return commit + ("+dirty" if dirty.returncode == 1 else "")


def ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def fmt_x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--core", action="store_true", help="sections 1 to 3 only")
    parser.add_argument(
        "--breakdown", action="store_true", help="the per-thread CPU breakdown (only)"
    )
    parser.add_argument(
        "--scaling", action="store_true", help="the size scaling / tensor path tables (only)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="interleaved rounds of the slowdown section (default 15; 3 with --quick)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write every figure to PATH"
    )
    args = parser.parse_args()
    scale = 0.05 if args.quick else 1.0
    n_calls = int(200_000 * scale)
    n_cpu = int(500_000 * scale)
    n_tp = int(2_000_000 * scale)
    n_breakdown = int(400_000 * scale)
    n_scaling = int(50_000 * scale)
    steps = int(20_000 * scale)
    reps = 3 if args.quick else 7
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 15)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    only = args.breakdown or args.scaling
    if args.core and only:
        parser.error("--core runs sections 1 to 3 only: leave out --breakdown and --scaling")

    commit = git_commit(steplog.__file__)
    print(
        f"steplog {steplog.__version__} from {steplog.__file__}"
        f"{f' (git {commit})' if commit else ''} · Python {platform.python_version()} · "
        f"{platform.machine()} · {os.cpu_count()} CPUs · orjson {orjson.__version__} · "
        f"numpy {np.__version__}"
    )
    figures: dict[str, Any] = {
        "meta": {
            "steplog_version": steplog.__version__,
            "steplog_file": steplog.__file__,
            "git_commit": commit,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "orjson": orjson.__version__,
            "numpy": np.__version__,
            "quick": args.quick,
            "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not only:
            log_cost = bench_log_cost(root, n_calls)
            print(f"\n### log() cost per call ({n_calls:,} calls, µs)")
            print("| logger | p50 | p99 | p99 − inline p99 |\n|---|---:|---:|---:|")
            inline_p99 = log_cost[INLINE][1]
            for name, (p50, p99) in log_cost.items():
                print(f"| {name} | {p50:.2f} | {p99:.2f} | {p99 - inline_p99:+.2f} |")
            figures["log_cost"] = {
                "n": n_calls,
                "rows": {
                    k: {"p50_us": v[0], "p99_us": v[1], "p99_minus_inline_us": v[1] - inline_p99}
                    for k, v in log_cost.items()
                },
            }

            cpu = bench_cpu(root, n_cpu, reps)
            print(f"\n### Net process CPU per event ({n_cpu:,} events, median of {reps}, µs)")
            print("| logger | CPU per event | × strongest inline |\n|---|---:|---:|")
            cpu_rows = {}
            for name, value in cpu.items():
                x = None if name.startswith("harness") else ratio(value, cpu[INLINE])
                cpu_rows[name] = {"us_per_event": value, "x_inline": x}
                print(f"| {name} | {value:.2f} | {fmt_x(x)} |")
            figures["cpu"] = {"n": n_cpu, "reps": reps, "rows": cpu_rows}

            rate, n = bench_throughput(root, n_tp, 3)
            print(f"\n### Sustained throughput into JSONL (block, {n:,} events, median of 3)")
            print(f"{rate:,.0f} events/s, nothing lost (file line count checked)")
            figures["throughput"] = {"n": n, "reps": 3, "events_per_s": rate}

        if not args.core:
            step_us, ratios = bench_slowdown(root, steps, rounds)
            inline_ratios = ratios[INLINE]
            print(
                f"\n### Slowdown of a ~{step_us:.0f} µs numpy step loop "
                f"({steps:,} steps, {rounds} interleaved rounds)"
            )
            print(
                "| logger | ratio vs no logging (median) | per-round band (min…max) "
                "| slowdown | − strongest inline (points, median [min…max] of rounds) |"
                "\n|---|---:|---:|---:|---:|"
            )
            slow_rows = {}
            for name, values in ratios.items():
                band = spread(values)
                row: dict[str, Any] = {**band, "slowdown_pct": (band["median"] - 1) * 100}
                row["per_round"] = values
                vs = "–"
                if name != INLINE:
                    diffs = [(a - b) * 100 for a, b in zip(values, inline_ratios, strict=True)]
                    row["minus_inline_points"] = {**spread(diffs), "per_round": diffs}
                    d = row["minus_inline_points"]
                    vs = f"{d['median']:+.2f} [{d['min']:+.2f}…{d['max']:+.2f}]"
                slow_rows[name] = row
                print(
                    f"| {name} | {band['median']:.4f} | {band['min']:.4f}…{band['max']:.4f} "
                    f"| {row['slowdown_pct']:+.2f} % | {vs} |"
                )
            figures["slowdown"] = {
                "step_us": step_us,
                "steps": steps,
                "rounds": rounds,
                "rows": slow_rows,
            }

        if args.breakdown or not (only or args.core):
            thread_name, breakdown = bench_breakdown(root, n_breakdown, reps)
            print(
                f"\n### Per-thread CPU per event ({n_breakdown:,} events, median of {reps}, "
                f"µs; background thread: {thread_name})"
            )
            print("| backend | logging thread (net) | writer/worker thread | whole process (net) |")
            print("|---|---:|---:|---:|")
            for name, cols in breakdown.items():
                writer = cols["writer_thread_us"]
                print(
                    f"| {name} | {cols['logging_thread_net_us']:.2f} "
                    f"| {'–' if writer is None else f'{writer:.2f}'} "
                    f"| {cols['process_net_us']:.2f} |"
                )
            figures["breakdown"] = {
                "n": n_breakdown,
                "reps": reps,
                "background_thread": thread_name,
                "rows": breakdown,
            }

        if args.scaling or not (only or args.core):
            notes: list[str] = []
            scaling = bench_scaling(root, n_scaling, reps, notes)
            print(
                f"\n### Size scaling and the tensor path ({n_scaling:,} events, "
                f"median of {reps} interleaved repetitions, µs)"
            )
            print(
                "| record | logger | log() p50 | log() p99 | CPU per event (net) | × inline |"
                "\n|---|---|---:|---:|---:|---:|"
            )
            for workload, rows in scaling.items():
                for name, r in rows.items():
                    print(
                        f"| {workload} | {name} | {fmt_us(r['p50_us'])} | {fmt_us(r['p99_us'])} "
                        f"| {r['cpu_us']:.2f} | {fmt_x(r['cpu_x_inline'])} |"
                    )
            torch = sys.modules.get("torch")
            figures["scaling"] = {
                "n": n_scaling,
                "reps": reps,
                "torch": getattr(torch, "__version__", None),
                "notes": notes,
                "workloads": scaling,
            }
    sys.stdout.flush()
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
