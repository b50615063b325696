"""Command line: ``steplog demo`` (``python -m steplog demo``)."""

from __future__ import annotations

import argparse
import math
import random
import string
import sys
import time
from collections.abc import Sequence
from typing import Any

from .backends.jsonl import JsonlBackend
from .reader import read_run
from .tracker import Tracker

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``steplog`` command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="steplog", description="Experiment tracking that is free for the hot loop."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a simulated high-frequency optimizer loop and log it to JSONL",
        description=(
            "Runs a simulated random-search optimizer (string trigger, noisy loss) for "
            "a few seconds, logging every step to the default JSONL backend, then prints "
            "where the run went and what logging cost per step."
        ),
    )
    demo.add_argument(
        "--steps", type=int, default=300_000, help="optimizer steps (default: 300000)"
    )
    demo.add_argument("--root", default="runs", help="run directory (default: runs)")
    demo.add_argument("--experiment", default="demo", help="experiment name (default: demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1:
            parser.error("--steps must be at least 1")
        return run_demo(args.steps, root=args.root, experiment=args.experiment, seed=args.seed)
    parser.print_help()
    return 2


def run_demo(steps: int, *, root: str, experiment: str, seed: int) -> int:
    """Run the demo loop; returns the exit code."""
    rng = random.Random(seed)
    backend = JsonlBackend(root)
    tracker = Tracker(backend, experiment_name=experiment, experiment_config={"demo": True})
    alphabet = string.ascii_lowercase
    trigger = [rng.choice(alphabet) for _ in range(12)]
    target = "experimentum"
    best = math.inf
    current = len(target)
    temperature = 1.0
    sample_every = 64  # time every 64th log() call, to measure without slowing the loop
    samples: list[int] = []
    clock = time.perf_counter_ns
    with tracker.run({"optimizer": "random-search", "steps": steps, "seed": seed}):
        started = time.perf_counter()
        for step in range(steps):
            # One optimizer step: mutate one position, score against a hidden target.
            candidate = trigger.copy()
            candidate[rng.randrange(len(candidate))] = rng.choice(alphabet)
            mismatches = sum(a != b for a, b in zip(candidate, target, strict=True))
            loss = max(0.0, mismatches / len(target) + rng.gauss(0.0, 0.02))
            if mismatches <= current or rng.random() < temperature * 0.01:
                trigger, current = candidate, mismatches
            best = min(best, loss)
            temperature *= 0.99997
            record: dict[str, Any] = {"loss": loss, "best_loss": best, "temperature": temperature}
            if step % 1000 == 0:
                record["trigger"] = "".join(trigger)
            if step % sample_every == 0:
                t0 = clock()
                tracker.log(record)
                samples.append(clock() - t0)
            else:
                tracker.log(record)
        elapsed = time.perf_counter() - started
        tracker.summary.update(best_loss=best, trigger="".join(trigger))
    stats = tracker.last_stats
    path = backend.path
    if stats is None or path is None:  # pragma: no cover - run() always finishes the run
        print("steplog demo: the run did not finish", file=sys.stderr)
        return 1
    run = read_run(path)
    samples.sort()
    overhead = _timer_overhead_ns()
    p50 = max(samples[len(samples) // 2] - overhead, 0) / 1000
    p99 = max(samples[int(len(samples) * 0.99)] - overhead, 0) / 1000
    rate = steps / elapsed
    print(f"steplog demo: {steps:,} optimizer steps in {elapsed:.2f} s ({rate:,.0f} steps/s)")
    print(f"  log() cost per call: p50 {p50:.2f} µs, p99 {p99:.2f} µs (timer overhead removed)")
    print(
        f"  logged {stats.logged:,}, written {stats.written:,}, dropped {stats.dropped:,}, "
        f"in {stats.batches:,} batches; finish() drained in {stats.drain_seconds * 1000:.1f} ms"
    )
    print(f"  run written to {path} ({len(run.records):,} step records, status {run.status!r})")
    print(f"  best loss {run.summary.get('best_loss'):.4f}, trigger {run.summary.get('trigger')!r}")
    print(
        f"  read it back: python -c \"import steplog; print(steplog.read_run('{path}').summary)\""
    )
    return 0


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(1000):
        t0 = clock()
        gaps.append(clock() - t0)
    gaps.sort()
    return gaps[len(gaps) // 2]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
