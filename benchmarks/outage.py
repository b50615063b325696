"""A remote backend down for a long stretch of a fast run (issue #15).

JSONL plus a backend that raises ConnectionError (as an unreachable server does) for
``--outage`` seconds in the middle of a run logging at ``--rate`` events/s. Prints RSS
every few seconds, log() p50/p99 before, during and after the outage, and how the
backend caught up from the run file (events, seconds, rate).

Run: ``python benchmarks/outage.py`` (defaults: 100 000 events/s, 60 s outage).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Sequence

import steplog


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Unreachable(steplog.Backend):
    """Stores nothing, raises while ``down`` is set; counts what it was sent."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.received = 0
        self.back_at: float | None = None
        self.caught_up_at: float | None = None

    async def open(self, run: steplog.RunInfo) -> None:
        pass

    async def write(self, events: Sequence[steplog.Event]) -> None:
        if self.down.is_set():
            raise ConnectionError("unreachable")
        self.received += len(events)

    async def close(self, end: steplog.RunEnd) -> None:
        pass


class Histogram:
    """log() times in 50 ns buckets up to 1 ms: fixed memory, so it does not blur RSS."""

    def __init__(self) -> None:
        self.buckets = [0] * 20_001
        self.count = 0

    def add(self, ns: int) -> None:
        self.buckets[min(ns // 50, 20_000)] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        """In µs."""
        seen, rank = 0, q * self.count
        for index, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return index * 0.05
        return 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100_000, help="events per second")
    parser.add_argument("--before", type=float, default=5.0, help="seconds up before")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds down")
    parser.add_argument("--after", type=float, default=10.0, help="seconds up after")
    args = parser.parse_args()
    remote = Unreachable()
    retry = steplog.RetryPolicy(probe_backoff=1.0, max_probe_backoff=5.0)
    with tempfile.TemporaryDirectory() as root:
        tracker = steplog.Tracker(steplog.JsonlBackend(root), remote, retry=retry)
        tracker.init()
        phases = {"before": Histogram(), "during": Histogram(), "after": Histogram()}
        total = args.before + args.outage + args.after
        start = time.perf_counter()
        step, next_rss = 0, 0.0
        print(f"{args.rate:,} events/s; down from {args.before:.0f} s for {args.outage:.0f} s")
        while (now := time.perf_counter() - start) < total:
            phase = (
                "before"
                if now < args.before
                else "during"
                if now < args.before + args.outage
                else "after"
            )
            if phase == "during":
                remote.down.set()
            elif remote.down.is_set():
                remote.down.clear()
                remote.back_at = time.perf_counter()
            if now >= next_rss:
                print(f"  t={now:5.1f} s  RSS {rss_mib():6.1f} MiB  ({phase}, {step:,} events)")
                next_rss += 5.0
            target = int(now * args.rate)
            while step < target:
                t0 = time.perf_counter_ns()
                tracker.log({"loss": 1.0 / (step + 1), "step_value": step})
                phases[phase].add(time.perf_counter_ns() - t0)
                step += 1
            time.sleep(0.0005)
        stats = tracker.finish()
    got = stats.backends["unreachable"]
    for phase, calls in phases.items():
        if calls.count:
            print(
                f"log() {phase:6s}: p50 {calls.percentile(0.5):.2f} µs, "
                f"p99 {calls.percentile(0.99):.2f} µs ({calls.count:,} calls)"
            )
    print(
        f"logged {stats.logged:,}; backend delivered {got.delivered:,} "
        f"({got.caught_up:,} caught up from the file), failed {got.failed:,}, "
        f"outages {[(round(e - s, 1) if e else None) for s, e in got.outages]} s"
    )


if __name__ == "__main__":
    main()
