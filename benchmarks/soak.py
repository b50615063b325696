"""Memory soak (issue #4): RSS stays flat however long the run, drops counted.

1. 5 M events through the default JSONL backend (``overflow="block"``).
2. 5 M events into a backend that never returns, with ``overflow="drop_oldest"``:
   memory still flat (bounded by ``buffer_size``), drops counted exactly.

Prints RSS at checkpoints and the growth after the first checkpoint (the steady state).

Run: ``python benchmarks/soak.py`` (``--events N`` to change the length).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

import steplog


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StalledBackend(steplog.Backend):
    """Accepts nothing until released (a backend whose server stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def open(self, run: steplog.RunInfo) -> None:
        pass

    async def write(self, events: Sequence[steplog.Event]) -> None:
        while not self.release.is_set():
            await anyio.sleep(0.01)

    async def close(self, end: steplog.RunEnd) -> None:
        pass


def soak(name: str, tracker: steplog.Tracker, events: int, after: object = None) -> None:
    tracker.init({"soak": name})
    marks = sorted({events // 10, events // 4, events // 2, (3 * events) // 4, events})
    rows = []
    start = time.perf_counter()
    data = {"loss": 0.5, "step": 0, "name": "soak", **{f"m{i}": i * 0.1 for i in range(7)}}
    for i in range(1, events + 1):
        data["step"] = i
        data["loss"] = 1.0 / i
        tracker.log(data)
        if i in marks:
            rows.append((i, rss_mib(), time.perf_counter() - start))
    if isinstance(after, StalledBackend):
        after.release.set()
    stats = tracker.finish()
    assert stats is not None
    print(f"\n### {name}")
    print(
        f"logged {stats.logged:,}, written {stats.written:,}, dropped {stats.dropped:,}; "
        f"per backend: "
        + ", ".join(
            f"{n}: delivered {b.delivered:,} dropped {b.dropped:,} failed {b.failed:,}"
            for n, b in stats.backends.items()
        )
    )
    print("| events | RSS (MiB) | seconds |\n|---:|---:|---:|")
    for i, rss, secs in rows:
        print(f"| {i:,} | {rss:.0f} | {secs:.1f} |")
    print(f"growth after the first checkpoint: {rows[-1][1] - rows[0][1]:+.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    args = parser.parse_args()
    print(
        f"steplog {steplog.__version__} · {os.cpu_count()} CPUs · RSS at start {rss_mib():.0f} MiB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        soak("JSONL, block", steplog.Tracker(steplog.JsonlBackend(root)), args.events)
        for path in root.rglob("*.jsonl"):
            path.unlink()
        stalled = StalledBackend()
        tracker = steplog.Tracker(stalled, overflow="drop_oldest")
        soak("stalled backend, drop_oldest", tracker, args.events, after=stalled)


if __name__ == "__main__":
    main()
