"""Lightning benchmark (issue #17): what per-step metric tensors cost a ``Trainer.fit``.

A small MLP (width 256, batch 64 by default) trained by a real ``lightning.pytorch``
``Trainer`` with :class:`steplog.integrations.lightning.SteplogLogger` as its logger, in
interleaved repetitions of three modes:

* ``none``: no per-step logging;
* ``log_dict``: ``self.log_dict({...4 tensors...})`` in ``training_step`` with
  ``log_every_n_steps=1`` (Lightning keeps them in its result collection and calls
  ``.item()`` on each at every logging step, then hands floats to the logger);
* ``experiment``: ``self.logger.experiment.log({...the same 4 tensors...})``, straight
  to steplog (no ``.item()``; the writer thread reads them back a batch at a time).

The time per step is the median gap between consecutive ``on_train_batch_end`` calls
(first 20 steps of a fit left out); a mode's figure is the median over repetitions,
all measured in one run. Run::

    python benchmarks/integrations_lightning.py            # CPU
    python benchmarks/integrations_lightning.py --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import statistics
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import steplog
from steplog.integrations.lightning import SteplogLogger

MODES = ("none", "log_dict", "experiment")
WARMUP = 20


class MLP(pl.LightningModule):
    def __init__(self, width: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = torch.nn.functional.mse_loss(out, y)
        if self.mode != "none":
            metrics = {
                "loss": loss.detach(),
                "out_mean": out.detach().mean(),
                "out_std": out.detach().std(),
                "target_mean": y.mean(),
            }
            if self.mode == "log_dict":
                self.log_dict(metrics)
            else:
                self.logger.experiment.log(metrics, step=self.global_step)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class StepClock(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(time.perf_counter())

    def ms_per_step(self) -> float:
        t = self.times[WARMUP:]
        return statistics.median(b - a for a, b in itertools.pairwise(t)) * 1e3


def fit_once(mode: str, *, steps: int, width: int, batch: int, device: str, root: str) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 32, width, generator=g)
    data = DataLoader(TensorDataset(x, x[:, :1]), batch_size=batch, shuffle=False)
    clock = StepClock()
    trainer = pl.Trainer(
        logger=SteplogLogger(steplog.JsonlBackend(root), experiment_name=mode),
        callbacks=[clock],
        max_steps=steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator=device,
        devices=1,
    )
    trainer.fit(MLP(width, mode), data)
    return clock.ms_per_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.repeats):
            for mode in MODES:
                ms = fit_once(
                    mode,
                    steps=args.steps,
                    width=args.width,
                    batch=args.batch,
                    device=args.device,
                    root=root,
                )
                results[mode].append(ms)
    print(
        f"lightning {pl.__version__}, torch {torch.__version__}, {platform.machine()},"
        f" device {args.device}, MLP width {args.width} batch {args.batch}, {args.steps} steps x "
        f"{args.repeats} repeats (interleaved), torch threads 1"
    )
    base = statistics.median(results["none"])
    print(f"{'mode':<12} {'ms/step':>8} {'+ms vs none':>12}   per repeat")
    for mode in MODES:
        med = statistics.median(results[mode])
        runs = " ".join(f"{v:.3f}" for v in results[mode])
        print(f"{mode:<12} {med:8.3f} {med - base:12.3f}   {runs}")


if __name__ == "__main__":
    main()
