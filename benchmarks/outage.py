"""A remote backend down for a long stretch of a fast run (issues #15, #23).

JSONL plus a backend that raises ConnectionError (as an unreachable server does) while a
flag file exists, for ``--outage`` seconds in the middle of a run logging at ``--rate``
events/s. The backend follows the run file through its lane: in the delivery process
(``--delivery process``, the default) or in a thread of this process. Prints, every few
seconds, the RSS of this (the logging) process and of the delivery process; log()
p50/p99 before, during and after the outage; and how long the backend took to have
every event once it was back.

Run: ``python benchmarks/outage.py`` (defaults: 100 000 events/s, 60 s outage).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence

import steplog


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Unreachable(steplog.Backend):
    """Stores nothing; raises while the file ``flag`` exists; writes how many events it
    has got to ``count`` (it may run in the delivery process: files cross over)."""

    def __init__(self, flag: str, count: str) -> None:
        self.flag = flag
        self.count = count
        self.received = 0

    async def open(self, run: steplog.RunInfo) -> None:
        self.received = 0

    async def write(self, events: Sequence[steplog.Event]) -> None:
        if os.path.exists(self.flag):
            raise ConnectionError("unreachable")
        self.received += len(events)
        with open(self.count, "w") as f:
            f.write(str(self.received))

    async def close(self, end: steplog.RunEnd) -> None:
        pass


def received(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def child_rss_mib() -> float | None:
    """RSS of this process's delivery process (its child running the lanes), if any."""
    found = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "_delivery_process"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if not found:
        return None
    try:
        with open(f"/proc/{found[0]}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None


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
    parser.add_argument("--delivery", choices=["process", "thread"], default="process")
    args = parser.parse_args()
    retry = steplog.RetryPolicy(probe_backoff=1.0, max_probe_backoff=5.0)
    with tempfile.TemporaryDirectory() as root:
        flag, count = os.path.join(root, "down"), os.path.join(root, "count")
        remote = Unreachable(flag, count)
        tracker = steplog.Tracker(
            steplog.JsonlBackend(root), remote, retry=retry, delivery=args.delivery
        )
        tracker.init()
        phases = {"before": Histogram(), "during": Histogram(), "after": Histogram()}
        total = args.before + args.outage + args.after
        start = time.perf_counter()
        step, next_rss = 0, 0.0
        back_at: float | None = None
        print(
            f"{args.rate:,} events/s; down from {args.before:.0f} s for {args.outage:.0f} s; "
            f"delivery={args.delivery!r}"
        )
        while (now := time.perf_counter() - start) < total:
            phase = (
                "before"
                if now < args.before
                else "during"
                if now < args.before + args.outage
                else "after"
            )
            if phase == "during" and back_at is None and not os.path.exists(flag):
                open(flag, "w").close()
            elif phase == "after" and os.path.exists(flag):
                os.unlink(flag)
                back_at = time.perf_counter()
            if now >= next_rss:
                child = child_rss_mib()
                extra = f", delivery process {child:6.1f} MiB" if child is not None else ""
                print(
                    f"  t={now:5.1f} s  logging process {rss_mib():6.1f} MiB{extra}  "
                    f"({phase}, {step:,} events, backend has {received(count):,})"
                )
                next_rss += 5.0
            target = int(now * args.rate)
            while step < target:
                t0 = time.perf_counter_ns()
                tracker.log({"loss": 1.0 / (step + 1), "step_value": step})
                phases[phase].add(time.perf_counter_ns() - t0)
                step += 1
            time.sleep(0.0005)
        logged = step
        while received(count) < logged and back_at is not None:
            if time.perf_counter() - back_at > 600:
                break
            time.sleep(0.05)
        caught_up_in = time.perf_counter() - back_at if back_at is not None else float("nan")
        stats = tracker.finish()
        got = stats.backends["unreachable"]
        for phase, calls in phases.items():
            if calls.count:
                print(
                    f"log() {phase:6s}: p50 {calls.percentile(0.5):.2f} µs, "
                    f"p99 {calls.percentile(0.99):.2f} µs ({calls.count:,} calls)"
                )
        print(
            f"logged {stats.logged:,}; the backend had every event {caught_up_in:.1f} s after "
            f"it was back; delivered {got.delivered:,}, missing {got.missing:,}, outages "
            f"{[(round(e - s, 1) if e else None) for s, e in got.outages]} s"
        )


if __name__ == "__main__":
    main()
