"""GPU benchmark (issues #3 and #12): what logging tensors costs a training loop.

An MLP training step at three sizes (width/batch 256/64 — launch-bound —, 1024/256,
4096/512 — GPU-bound), in interleaved repetitions of five modes:

* ``none``: no logging;
* ``item``: ``float(loss.item())`` per step (one device synchronisation per step);
* ``item_all``: ``.item()`` on all four metrics (what most trackers make you do);
* ``steplog``: ``tracker.log()`` of the four metric tensors to JSONL (no
  synchronisation, and for fresh tensors no kernel launch, on the loop's thread);
* ``steplog_nosnap``: the same with ``snapshot=False``.

Reports steps/s (median over repetitions), the ratio against ``none`` and the extra
µs per step, then checks that the values steplog recorded equal the ``.item()`` values
step by step. ``--micro`` instead measures single calls (CPU time on the calling
thread): ``log()`` of 4 floats, of 4 fresh CUDA 0-d tensors (default and
``snapshot=False``), a kernel launch, a stack, ``current_stream()``, ``detach()``,
``_version`` and ``.item()``. ``--soak N`` logs N steps of tensor metrics and reports
host RSS and device memory (the buffer is bounded, so neither may grow with N).
``benchmarks/gpu_check.sh`` runs all of it, plus the CUDA tests, in under 5 minutes.

Run on a GPU machine::

    pip install -e ".[dev]" && python benchmarks/gpu_loop.py

It also runs on CPU (``--device cpu --quick``) as a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import steplog

SIZES = [(256, 64), (1024, 256), (4096, 512)]


class Loop:
    """One MLP, optimizer and fixed batch: ``step()`` returns the loss and 3 metrics."""

    def __init__(self, width: int, batch: int, device: str) -> None:
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, 1),
        ).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(batch, width, generator=gen).to(device)
        self.y = torch.randn(batch, 1, generator=gen).to(device)
        self.last = self.model[-1]

    def step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        loss = torch.nn.functional.mse_loss(out, self.y)
        loss.backward()
        self.opt.step()
        grad = self.last.weight.grad
        assert grad is not None
        return loss.detach(), out.detach().mean(), grad.norm(), self.last.weight.detach().norm()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


MODES = ["none", "item", "item_all", "steplog", "steplog_nosnap"]


def run_mode(loop: Loop, mode: str, steps: int, device: str, root: Path) -> float:
    tracker = None
    if mode.startswith("steplog"):
        tracker = steplog.Tracker(
            steplog.JsonlBackend(root), experiment_name="gpu", snapshot=mode == "steplog"
        )
        tracker.init({"mode": mode})
    sink: list[dict[str, Any]] = []
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss, out_mean, grad_norm, weight_norm = loop.step()
        if mode == "item":
            sink.append({"loss": float(loss.item())})
        elif mode == "item_all":
            sink.append(
                {
                    "loss": loss.item(),
                    "out_mean": out_mean.item(),
                    "grad_norm": grad_norm.item(),
                    "w_norm": weight_norm.item(),
                }
            )
        if len(sink) > 1024:
            sink.clear()
        elif tracker is not None:
            tracker.log(
                {"loss": loss, "out_mean": out_mean, "grad_norm": grad_norm, "w_norm": weight_norm}
            )
    sync(device)
    elapsed = time.perf_counter() - start
    if tracker is not None:
        tracker.finish()
    for path in root.rglob("*.jsonl"):
        path.unlink()
    return steps / elapsed


def verify(loop: Loop, steps: int, root: Path) -> int:
    """Log steps with steplog and compare every recorded loss with its .item() value."""
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, experiment_name="verify")
    tracker.init()
    kept = []
    for _ in range(steps):
        loss, out_mean, grad_norm, weight_norm = loop.step()
        kept.append((loss, grad_norm))
        tracker.log(
            {"loss": loss, "out_mean": out_mean, "grad_norm": grad_norm, "w_norm": weight_norm}
        )
    stats = tracker.finish()
    assert backend.path is not None and stats is not None
    run = steplog.read_run(backend.path)
    mismatches = 0
    for event, (loss, grad_norm) in zip(run.records, kept, strict=True):
        if event.data["loss"] != loss.item() or event.data["grad_norm"] != grad_norm.item():
            mismatches += 1
    print(
        f"verify: {len(run.records)} steps, {mismatches} mismatches against .item(), "
        f"{stats.device_syncs} device syncs and {stats.device_copies} device copies in "
        f"{stats.batches} batches, {stats.changed_values} values marked as changed"
    )
    return mismatches


def soak(steps: int, device: str, root: Path) -> None:
    """Log ``steps`` steps of fresh tensor metrics (no model: the logging is what soaks)."""
    tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="soak")
    tracker.init()
    acc = torch.zeros((), device=device)
    vec = torch.zeros(8, device=device)

    def memory() -> tuple[float, float]:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        dev = torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
        return rss, dev

    checkpoints = []
    marks = {steps // 10, steps // 2, steps - 1}
    for step in range(steps):
        loss = torch.rand((), device=device)
        acc += loss
        vec += 1
        tracker.log({"loss": loss, "acc": acc, "vec": vec, "lr": 0.001})
        if step in marks:
            tracker.flush()
            checkpoints.append((step + 1, *memory()))
    stats = tracker.finish()
    assert stats is not None
    print(f"soak: {steps:,} steps on {device}, logged {stats.logged:,}, written {stats.written:,}")
    print("| steps | RSS (MiB) | device memory allocated (MiB) |\n|---:|---:|---:|")
    for step, rss, dev in checkpoints:
        print(f"| {step:,} | {rss:.0f} | {dev:.1f} |")


def micro(device: str, calls: int, root: Path) -> None:
    """CPU time per call on this thread (median of 5 blocks of ``calls`` calls)."""
    floats = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}

    def fresh() -> dict[str, torch.Tensor]:
        return {k: torch.full((), v, device=device) for k, v in floats.items()}

    scalars = [fresh() for _ in range(calls)]
    x = scalars[0]["a"]
    cases: dict[str, Any] = {}
    for label, kwargs in (("default", {}), ("snapshot=False", {"snapshot": False})):
        tracker = steplog.Tracker(steplog.JsonlBackend(root), experiment_name="micro", **kwargs)
        tracker.init()
        cases[f"log() of 4 floats ({label})"] = (tracker, lambda t, i: t.log(floats))
        cases[f"log() of 4 fresh {device} 0-d tensors ({label})"] = (
            tracker,
            lambda t, i: t.log(scalars[i]),
        )
    cases["one kernel launch (torch.add)"] = (None, lambda t, i: torch.add(x, 1))
    cases["torch.stack of 4 0-d tensors"] = (
        None,
        lambda t, i: torch.stack(list(scalars[i].values())),
    )
    if device.startswith("cuda"):
        cases["torch.cuda.current_stream(device)"] = (
            None,
            lambda t, i: torch.cuda.current_stream(x.device),
        )
    cases["tensor.detach()"] = (None, lambda t, i: x.detach())
    cases["tensor._version"] = (None, lambda t, i: x._version)
    cases[".item() on one scalar (includes the sync)"] = (None, lambda t, i: x.item())
    print(f"| call ({calls:,} calls, median of 5 blocks) | µs per call |\n|---|---:|")
    for name, (tracker, call) in cases.items():
        blocks = []
        for _ in range(5):
            sync(device)
            t0 = time.thread_time()
            for i in range(calls):
                call(tracker, i)
            blocks.append((time.thread_time() - t0) / calls * 1e6)
        print(f"| {name} | {statistics.median(blocks):.2f} |")
    for tracker, _ in cases.values():
        if tracker is not None and tracker.active:
            tracker.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per repetition")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--soak", type=int, default=0, metavar="N", help="memory soak of N steps")
    parser.add_argument("--micro", action="store_true", help="per-call costs only")
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    print(
        f"steplog {steplog.__version__} · torch {torch.__version__} · {device} ({name}) · "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.soak:
            soak(args.soak, device, root)
            return
        if args.micro:
            micro(device, 300 if args.quick else 3_000, root)
            return
        sizes = [(64, 16)] if args.quick else SIZES
        steps = args.steps or (50 if args.quick else 400)
        reps = args.reps or (2 if args.quick else 5)
        modes = MODES
        print(
            "| width/batch | mode | steps/s | ratio vs none | extra µs/step |"
            "\n|---|---|---:|---:|---:|"
        )
        failures = 0
        for width, batch in sizes:
            loop = Loop(width, batch, device)
            run_mode(loop, "none", steps, device, root)  # warm-up (kernels, allocator)
            rates: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(reps):
                for mode in modes:
                    rates[mode].append(run_mode(loop, mode, steps, device, root))
            base = statistics.median(rates["none"])
            for mode in modes:
                rate = statistics.median(rates[mode])
                extra = (1 / rate - 1 / base) * 1e6
                print(
                    f"| {width}/{batch} | {mode} | {rate:,.0f} | {rate / base:.3f} | {extra:+.1f} |"
                )
            failures += verify(loop, steps, root)
        if failures:
            raise SystemExit(f"{failures} recorded values differ from .item()")


if __name__ == "__main__":
    main()
