"""``steplog demo``: a simulated high-frequency optimizer loop, logged to JSONL."""

from __future__ import annotations

import argparse
import math
import random
import string
import time
from pathlib import Path
from typing import Any

from .. import _progress
from .._extras import installed
from ..backends.jsonl import JsonlBackend
from ..runfile.run import read_run
from ..tracker import Tracker
from ._common import DEFAULT_ROOT, EXIT_OK, CommandError, Subparsers, add_command, plot_files
from ._format import count

__all__ = ["add_parser", "run_demo"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog demo``."""
    demo = add_command(
        subparsers,
        "demo",
        help="run a simulated high-frequency optimizer loop and log it to JSONL",
        description="Runs a simulated random-search optimizer (string trigger, noisy loss) "
        "for a few seconds, logging every step to the default JSONL backend, then prints "
        "where the run went, steps/s, what log() cost per call, and how to plot it.",
        handler=cmd_demo,
    )
    demo.add_argument("--steps", type=int, default=300_000, help="optimizer steps (300000)")
    demo.add_argument("--root", default=DEFAULT_ROOT, help="run directory (default: runs)")
    demo.add_argument("--experiment", default="demo", help="experiment name (default: demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--plot", metavar="PNG", help="also plot loss and best_loss to PNG")


def cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo with the parsed options; returns the exit code."""
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return run_demo(
        args.steps, root=args.root, experiment=args.experiment, seed=args.seed, plot=args.plot
    )


def run_demo(steps: int, *, root: str, experiment: str, seed: int, plot: str | None = None) -> int:
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
    with (
        _progress.bar(steps, "demo", unit="step", delay=0) as advance,
        tracker.run({"optimizer": "random-search", "steps": steps, "seed": seed}),
    ):
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
                if advance is not None and step % 8192 == 0 and step:
                    advance(8192)
            else:
                tracker.log(record)
        elapsed = time.perf_counter() - started
        tracker.summary.update(best_loss=best, trigger="".join(trigger))
    stats = tracker.last_stats
    path = backend.path
    if stats is None or path is None:  # pragma: no cover - run() always finishes the run
        raise CommandError("the run did not finish")
    run = read_run(path)
    samples.sort()
    overhead = _timer_overhead_ns()
    p50 = max(samples[len(samples) // 2] - overhead, 0) / 1000
    p99 = max(samples[int(len(samples) * 0.99)] - overhead, 0) / 1000
    rate = steps / elapsed
    print(
        f"steplog demo: {count(steps, 'optimizer step')} in {elapsed:.2f} s ({rate:,.0f} steps/s)"
    )
    print(f"  log() cost per call: p50 {p50:.2f} µs, p99 {p99:.2f} µs (timer overhead removed)")
    print(
        f"  logged {stats.logged:,}, written {stats.written:,}, dropped {stats.dropped:,}, "
        f"in {count(stats.batches, 'batch', 'batches')}; finish() drained in "
        f"{stats.drain_seconds * 1000:.1f} ms"
    )
    records = count(len(run.records), "step record")
    print(f"  run written to {path} ({records}, status {run.status!r})")
    print(f"  best loss {run.summary.get('best_loss'):.4f}, trigger {run.summary.get('trigger')!r}")
    print(f"  look at it:  steplog show {path}")
    plot_it = f"steplog plot {path} -k loss -k best_loss -o loss.png"
    if not installed("matplotlib"):  # name the extra here, not after a failed command
        plot_it = f'pip install "steplog[plot]" && {plot_it}'
    print(f"  plot it:     {plot_it}")
    if plot:
        return plot_files([path], ["loss", "best_loss"], Path(plot), title=None)
    return EXIT_OK


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(1000):
        t0 = clock()
        gaps.append(clock() - t0)
    gaps.sort()
    return gaps[len(gaps) // 2]
