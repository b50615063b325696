"""SteplogLogger in real Lightning fits on CPU (lightning from PyPI)."""

from __future__ import annotations

import math
import signal

import pytest

import steplog

pytest.importorskip(
    "lightning", reason="lightning is not installed (pip install 'steplog[lightning]')"
)
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from steplog.integrations.lightning import SteplogLogger

pytestmark = [
    # Lightning's advice for tiny CPU runs (more dataloader workers, a small log
    # interval) and its notes on the environment.
    pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
]


class TinyModel(pl.LightningModule):
    """A 4→8→1 MLP; logs through ``self.log`` and, optionally, straight to steplog."""

    def __init__(self, lr: float = 0.05, *, direct: bool = False, fail_at: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at is not None and self.global_step == self.hparams.fail_at:
            raise RuntimeError("loss is NaN")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        if self.hparams.direct:
            self.logger.experiment.log({"direct_loss": loss.detach()}, step=self.global_step)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def fit(model, logger, *, steps: int, log_every: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(
        logger=logger,
        max_steps=steps,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader())
    return trainer


def test_every_metric_lands_in_the_run_at_its_step(tmp_path):
    """A 300-step fit: the hyperparameters are the config, each logged step is a record
    at Lightning's step, the run ends finished, and the run file sits at
    save_dir/name/version.jsonl."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path), experiment_name="mlp",
                           experiment_config={"seed": 0})  # fmt: skip
    fit(TinyModel(lr=0.05), logger, steps=300)
    run = steplog.read_run(logger.run_path)
    assert logger.run_path == tmp_path / "mlp" / f"{logger.version}.jsonl"
    assert logger.save_dir == str(tmp_path) and logger.name == "mlp"
    assert run.status == "finished"
    assert run.config == {"seed": 0, "lr": 0.05, "direct": False, "fail_at": None}
    train = [r for r in run.records if "train_loss" in r.data]
    assert [r.step for r in train] == list(range(300))
    assert all(math.isfinite(r.data["train_loss"]) for r in train)
    assert all(r.data["epoch"] == r.step // 16 for r in train)  # 16 batches an epoch


def test_experiment_log_writes_tensors_at_the_given_step(tmp_path):
    """``self.logger.experiment.log`` from training_step records the tensors as
    numbers in the same run as Lightning's own metrics."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    fit(TinyModel(direct=True), logger, steps=50, log_every=10)
    run = steplog.read_run(logger.run_path)
    direct = {r.step: r.data["direct_loss"] for r in run.records if "direct_loss" in r.data}
    lightning = {r.step: r.data["train_loss"] for r in run.records if "train_loss" in r.data}
    assert sorted(direct) == list(range(50))
    assert sorted(lightning) == list(range(9, 50, 10))  # every 10th step
    assert all(direct[s] == pytest.approx(lightning[s]) for s in lightning)


def test_a_fit_that_raises_records_failed(tmp_path):
    """An exception in training_step: Lightning finalizes with "failed", the run ends
    "failed" with the steps before it."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    with pytest.raises(RuntimeError, match="loss is NaN"):
        fit(TinyModel(fail_at=20), logger, steps=100)
    run = steplog.read_run(logger.run_path)
    assert run.status == "failed"
    assert [r.step for r in run.records] == list(range(20))


def test_ctrl_c_records_interrupted(tmp_path):
    """A KeyboardInterrupt in the fit: Lightning calls finalize("failed") and exits;
    steplog records "interrupted"."""

    class Interrupted(TinyModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 5:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into sys.exit(1) ...
            fit(Interrupted(), logger, steps=100)
    finally:
        signal.signal(signal.SIGINT, sigint)  # ... after ignoring SIGINT for good
    assert steplog.read_run(logger.run_path).status == "interrupted"


def test_two_loggers_side_by_side(tmp_path):
    """Two steplog loggers and Lightning's CSVLogger in one Trainer: each steplog run
    holds every step."""
    first = SteplogLogger(steplog.JsonlBackend(tmp_path / "a"), experiment_name="a")
    second = SteplogLogger(steplog.JsonlBackend(tmp_path / "b"), experiment_name="b")
    csv = CSVLogger(tmp_path / "csv")
    fit(TinyModel(), [first, second, csv], steps=40)
    for logger in (first, second):
        run = steplog.read_run(logger.run_path)
        assert run.status == "finished"
        assert [r.step for r in run.records if "train_loss" in r.data] == list(range(40))
    assert first.version != second.version
    assert (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").exists()


def test_a_second_fit_is_a_new_run(tmp_path):
    """The same logger in two fits writes two runs, each with its own version."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    fit(TinyModel(), logger, steps=10)
    first = logger.run_path
    fit(TinyModel(), logger, steps=10)
    assert logger.run_path != first
    assert logger.run_path.stem == logger.version
    assert steplog.read_run(first).status == steplog.read_run(logger.run_path).status == "finished"


def test_off_rank_zero_nothing_is_written(tmp_path, monkeypatch):
    """On a rank other than zero (as DDP sets it), the logger writes no run and
    ``experiment.log`` is a no-op."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.experiment.log({"loss": 1.0})
    logger.finalize("success")
    assert not logger.tracker.active
    assert not list(tmp_path.iterdir())


def test_pickling_the_logger_says_why_it_cannot(tmp_path):
    """Pickling (what ddp_spawn does to a Trainer's loggers) raises a TypeError that
    names the way out, not a bare lock error."""
    import pickle

    with pytest.raises(TypeError, match="ddp_spawn"):
        pickle.dumps(SteplogLogger(steplog.JsonlBackend(tmp_path)))
