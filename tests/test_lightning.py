"""SteplogLogger in real Lightning fits on CPU (lightning from PyPI)."""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
import threading

import pytest

import steplog

pytest.importorskip(
    "lightning", reason="lightning is not installed (pip install 'steplog[lightning]')"
)
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from steplog.integrations.lightning import REPLAYED_KEY, SteplogLogger
from steplog.testing import SlowBackend

pytestmark = [
    # Lightning's advice for tiny CPU runs (more dataloader workers, a small log
    # interval) and its notes on the environment.
    pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:GPU available but not used"),
]


# Threads that Lightning's own check (tests/tests_pytorch/conftest.py in the Lightning
# repository, the autouse fixture ``thread_police_duuu_daaa_duuu_daaa``) lets a test leave:
# it waits for these (tensorboardX's queue feeder, torch.compile's helpers) ...
_WAITED_FOR = ("QueueFeederThread", "QueueManagerThread")
# ... and leaves these be (thread pools, torch.compile's subprocess, fsspec's loop).
_LEFT_BE = ("ThreadPoolExecutor-", "InductorSubproc", "fsspecIO")


def stop_leftover_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Lightning's check for leftover threads, re-expressed: every thread started since
    ``before`` that is a daemon with a ``stop()`` (or ``exit()``) is stopped and must be
    dead right after; the few threads of torch and fsspec it knows are waited for or let
    be; returns the others (Lightning fails the test with "Test left zombie thread")."""
    zombies = []
    for thread in set(threading.enumerate()) - before:
        stop = getattr(thread, "stop", None) or getattr(thread, "exit", None)
        if thread.daemon and callable(stop):
            stop()
            if thread.is_alive():
                zombies.append(thread)
        elif thread.name in _WAITED_FOR or "(_read_thread)" in thread.name:
            thread.join(20)
        elif not any(name in thread.name for name in _LEFT_BE):
            zombies.append(thread)
    return zombies


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Every test here passes Lightning's own check for leftover threads."""
    before = set(threading.enumerate())
    yield
    zombies = stop_leftover_threads(before)
    assert not zombies, f"the test left threads Lightning's check fails: {zombies}"


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


def trainer(logger, *, steps: int, log_every: int = 1, **options) -> pl.Trainer:
    options.setdefault("enable_checkpointing", "callbacks" in options)
    return pl.Trainer(
        logger=logger,
        max_steps=steps,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **options,
    )


def fit(model, logger, *, steps: int, log_every: int = 1) -> pl.Trainer:
    fitted = trainer(logger, steps=steps, log_every=log_every)
    fitted.fit(model, loader())
    return fitted


def train_steps(run) -> list[int]:
    return [r.step for r in run.records if "train_loss" in r.data]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_fit_that_raises_records_failed(tmp_path):
    """An exception in training_step: Lightning finalizes with "failed", the run ends
    "failed" with the steps before it."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    with pytest.raises(RuntimeError, match="loss is NaN"):
        fit(TinyModel(fail_at=20), logger, steps=100)
    run = steplog.read_run(logger.run_path)
    assert run.status == "failed"
    assert [r.step for r in run.records] == list(range(20))


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_second_fit_is_a_new_run(tmp_path):
    """The same logger in two fits writes two runs, each with its own version."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    fit(TinyModel(), logger, steps=10)
    first = logger.run_path
    fit(TinyModel(), logger, steps=10)
    assert logger.run_path != first
    assert logger.run_path.stem == logger.version
    assert steplog.read_run(first).status == steplog.read_run(logger.run_path).status == "finished"


@pytest.mark.slow
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


def test_experiment_log_takes_the_step_by_position_before_the_run_starts(tmp_path):
    """``logger.experiment.log(data, k)`` works as ``Tracker.log(data, k)`` does, also
    as the call that starts the run (a red-team trial found it a TypeError there)."""
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path))
    logger.experiment.log({"loss": 1.0}, 10)
    logger.experiment.log({"loss": 0.5}, 11)
    logger.finalize("success")
    (path,) = tmp_path.rglob("*.jsonl")
    assert [(r.step, r.data) for r in steplog.read_run(path).records] == [
        (10, {"loss": 1.0}),
        (11, {"loss": 0.5}),
    ]


# -- the generic contract ---------------------------------------------------------
# What Lightning's own tests of its loggers (tests/tests_pytorch/loggers/test_all.py and
# test_logger.py in the Lightning repository) require of every logger, re-expressed for
# SteplogLogger: it pickles with its Trainer and works under ddp_spawn, takes a prefix,
# has save_dir/name/version with their meaning (name "lightning_logs" by default), a
# fit from a checkpoint continues its run, and it leaves no thread behind.


def test_contract_a_trainer_holding_the_logger_pickles(tmp_path):
    """A logger with a run under way pickles, alone and inside its Trainer; the copy
    keeps name and save_dir and logs into a run of its own (the original is still
    writing its run), and both runs hold what each was given."""
    logger = SteplogLogger(save_dir=tmp_path)
    _ = logger.experiment
    logger.log_metrics({"a": 1})
    logger.save()
    pickle.dumps(logger)
    copy = pickle.loads(pickle.dumps(pl.Trainer(max_epochs=1, logger=logger))).logger
    copy.log_metrics({"acc": 1.0})
    assert (
        (copy.name, copy.save_dir)
        == (logger.name, logger.save_dir)
        == ("lightning_logs", str(tmp_path))
    )
    assert copy.version != logger.version
    for each in (logger, copy):
        each.finalize("success")
    assert [r.data for r in steplog.read_run(logger.run_path).records] == [{"a": 1}]
    assert [r.data for r in steplog.read_run(copy.run_path).records] == [{"acc": 1.0}]


@pytest.mark.slow
def test_contract_a_spawned_copy_writes_the_run_the_logger_names(tmp_path, monkeypatch):
    """What ddp_spawn does, in this process: the Trainer is pickled before anything is
    logged and each process fits with its copy. Rank zero's copy writes the run whose id
    the original logger reports as its version (so ``logger.run_path`` finds it after
    ``fit``); the copy on rank 1 writes nothing."""
    logger = SteplogLogger(save_dir=tmp_path, name="spawned")
    sent = pickle.dumps(trainer(logger, steps=8))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    other = pickle.loads(sent)
    other.logger.log_hyperparams({"lr": 1})
    other.logger.log_metrics({"loss": 1.0}, step=0)
    other.logger.finalize("success")
    assert not (tmp_path / "spawned").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    pickle.loads(sent).fit(TinyModel(), loader())
    assert [p.name for p in (tmp_path / "spawned").glob("*.jsonl")] == [f"{logger.version}.jsonl"]
    run = steplog.read_run(logger.run_path)
    assert run.status == "finished" and train_steps(run) == list(range(8))


_SPAWN_REASON = (
    "ddp_spawn starts 2 interpreters that each import torch and Lightning (~20 s on fewer "
    "than 4 cores); set STEPLOG_TEST_SPAWN=1 to run it anyway"
)


@pytest.mark.slow
@pytest.mark.skipif(
    (os.cpu_count() or 1) < 4 and not os.environ.get("STEPLOG_TEST_SPAWN"), reason=_SPAWN_REASON
)
def test_contract_ddp_spawn_writes_one_run_from_rank_zero(tmp_path):
    """``strategy="ddp_spawn"`` with 2 CPU processes: the logger travels to both, the run
    starts in the process of rank zero only, ends finished, and is the run the logger in
    this process names."""
    logger = SteplogLogger(save_dir=tmp_path)
    spawned = trainer(logger, steps=6, strategy="ddp_spawn", devices=2)
    spawned.fit(TinyModel(), loader())
    assert [p.name for p in (tmp_path / "lightning_logs").glob("*.jsonl")] == [
        f"{logger.version}.jsonl"
    ]
    run = steplog.read_run(logger.run_path)
    assert run.status == "finished" and train_steps(run) == list(range(6))


@pytest.mark.slow
def test_contract_prefix_is_joined_to_every_key(tmp_path):
    """``prefix=`` goes before every key Lightning logs, joined by ``LOGGER_JOIN_CHAR``
    ("-", as in Lightning's own loggers)."""
    logger = SteplogLogger(save_dir=tmp_path, prefix="tmp")
    fit(TinyModel(), logger, steps=5)
    run = steplog.read_run(logger.run_path)
    assert SteplogLogger.LOGGER_JOIN_CHAR == "-"
    assert [sorted(r.data) for r in run.records] == [["tmp-epoch", "tmp-train_loss"]] * 5


@pytest.mark.slow
def test_contract_default_name_is_lightning_logs(tmp_path):
    """Without a name, the experiment is "lightning_logs", as for Lightning's loggers."""
    logger = SteplogLogger(save_dir=tmp_path)
    fit(TinyModel(), logger, steps=2)
    assert logger.name == "lightning_logs"
    assert logger.run_path.parent == tmp_path / "lightning_logs"


@pytest.mark.slow
def test_contract_save_dir_name_version_place_the_run_and_its_checkpoints(tmp_path):
    """``save_dir``, ``name`` and ``version`` are where runs go, the experiment and the run
    id: the run is ``save_dir/name/version.jsonl`` with that id, and ModelCheckpoint
    writes into ``save_dir/name/version/checkpoints``."""
    logger = SteplogLogger(save_dir=tmp_path, name="exp", version="first-try")
    checkpoints = ModelCheckpoint(every_n_train_steps=5)
    trainer(logger, steps=10, callbacks=[checkpoints]).fit(TinyModel(), loader())
    assert (logger.save_dir, logger.name, logger.version) == (str(tmp_path), "exp", "first-try")
    run = steplog.read_run(tmp_path / "exp" / "first-try.jsonl")
    assert run.run_id == "first-try" and run.status == "finished"
    assert [p.name for p in (tmp_path / "exp" / "first-try" / "checkpoints").iterdir()] == [
        "epoch=0-step=10.ckpt"
    ]


def every_epoch() -> ModelCheckpoint:
    return ModelCheckpoint(every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=-1)


def crash_after_a_checkpoint(tmp_path) -> tuple[SteplogLogger, str]:
    """A fit that saves a checkpoint every epoch (16 steps) and raises at step 21;
    returns its logger and the checkpoint of step 16."""
    logger = SteplogLogger(save_dir=tmp_path)
    crashing = trainer(logger, steps=40, callbacks=[every_epoch()])
    with pytest.raises(RuntimeError, match="loss is NaN"):
        crashing.fit(TinyModel(fail_at=21), loader())
    directory = tmp_path / "lightning_logs" / logger.version / "checkpoints"
    return logger, str(directory / "epoch=0-step=16.ckpt")


# Lightning says so whenever a resumed fit checkpoints into its version's directory again
# (for CSVLogger and TensorBoardLogger given their version too).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("how", ["version", "resume_id", "resume_latest"])
def test_contract_fit_from_a_checkpoint_continues_the_run(tmp_path, how):
    """After a crash, a new logger naming the run (``version=`` its id, ``resume=`` its id
    or ``"latest"``) and ``fit(ckpt_path=...)`` continue the same run file: a second
    segment, finished, the config merged, every step once — the 5 steps Lightning replays
    between its checkpoint (16) and the crash (21) are skipped and counted — and the
    checkpoints go on in the run's directory."""
    crashed, checkpoint = crash_after_a_checkpoint(tmp_path)
    assert steplog.read_run(crashed.run_path).status == "failed"
    option = {
        "version": {"version": crashed.version},
        "resume_id": {"resume": crashed.version},
        "resume_latest": {"resume": "latest"},
    }[how]
    logger = SteplogLogger(save_dir=tmp_path, **option)
    assert logger.version == crashed.version  # before the run starts: ModelCheckpoint asks
    resumed = trainer(logger, steps=40, callbacks=[every_epoch()])
    resumed.fit(TinyModel(lr=0.01), loader(), ckpt_path=checkpoint)
    run = steplog.read_run(crashed.run_path)
    assert [p.name for p in (tmp_path / "lightning_logs").glob("*.jsonl")] == [
        f"{crashed.version}.jsonl"
    ]
    assert run.status == "finished" and [s.status for s in run.segments] == ["failed", "finished"]
    assert train_steps(run) == list(range(40))
    assert run.config["lr"] == 0.01 and run.config["fail_at"] is None
    assert run.summary[REPLAYED_KEY] == 5
    checkpoints = tmp_path / "lightning_logs" / crashed.version / "checkpoints"
    assert "epoch=2-step=40.ckpt" in {p.name for p in checkpoints.iterdir()}


_NEVER_FINISHED = {
    "jsonl": list,
    "console (fan-out thread)": lambda: [steplog.ConsoleBackend(file=io.StringIO())],
    "remote, lane in a thread": lambda: [SlowBackend(0.001)],
    "remote, delivery process": lambda: [
        pytest.importorskip("steplog.backends.tensorboard").TensorBoardBackend("tb")
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("backends", list(_NEVER_FINISHED), ids=list(_NEVER_FINISHED))
def test_contract_a_run_never_finished_leaves_no_thread_lightning_flags(
    tmp_path, monkeypatch, backends
):
    """A logger whose run is never finished (used outside a Trainer, as Lightning's own
    pickling test does) leaves only threads that Lightning's check can stop: each is a
    daemon whose ``stop()`` ends the run as the end of the process would ("unfinished",
    every event written) and returns once the thread is gone."""
    monkeypatch.chdir(tmp_path)
    before = set(threading.enumerate())
    logger = SteplogLogger(*_NEVER_FINISHED[backends](), save_dir=tmp_path)
    for step in range(100):
        logger.log_metrics({"loss": 1 / (step + 1)}, step=step)
    assert set(threading.enumerate()) - before  # the run's threads are running
    assert stop_leftover_threads(before) == []
    assert not logger.tracker.active
    run = steplog.read_run(logger.run_path)
    assert run.status == "unfinished" and [r.step for r in run.records] == list(range(100))


# -- options and errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bogus": 1}, TypeError, "SteplogLogger got an unexpected keyword argument 'bogus'"),
        ({"buffer_size": 0}, ValueError, "SteplogLogger: buffer_size"),
        ({"name": "a/b"}, ValueError, "SteplogLogger: name 'a/b'"),
        ({"version": 3}, TypeError, "SteplogLogger: version must be a str"),
        ({"version": "a", "resume": "b"}, ValueError, "SteplogLogger: version='a' and resume"),
        ({"prefix": None}, TypeError, "SteplogLogger: prefix must be a str"),
    ],
)
def test_constructor_errors_name_the_logger(kwargs, error, match):
    """A wrong option is an error that names SteplogLogger and the option, not one of
    steplog's internal classes."""
    with pytest.raises(error, match=match):
        SteplogLogger(**kwargs)


def test_a_path_where_backends_go_points_to_save_dir(tmp_path):
    """A directory passed positionally (as ``CSVLogger("logs")`` takes it) is refused with
    a pointer to ``save_dir=``; a save_dir that disagrees with the JsonlBackend given is
    refused too."""
    with pytest.raises(TypeError, match=f"pass save_dir={str(tmp_path)!r}"):
        SteplogLogger(str(tmp_path))
    with pytest.raises(ValueError, match="SteplogLogger: save_dir="):
        SteplogLogger(steplog.JsonlBackend(tmp_path / "a"), save_dir=tmp_path / "b")
    logger = SteplogLogger(steplog.JsonlBackend(tmp_path), save_dir=tmp_path)
    assert logger.save_dir == str(tmp_path)


def test_pickling_a_backend_that_does_not_pickle_names_it(tmp_path):
    """A logger whose backend cannot be pickled says which backend, as a TypeError."""

    class Unpicklable(steplog.MemoryBackend):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    logger = SteplogLogger(Unpicklable(), save_dir=tmp_path)
    with pytest.raises(TypeError, match="its backend 'unpicklable'"):
        pickle.dumps(logger)


@pytest.mark.slow
def test_resume_latest_after_a_finished_run_starts_a_new_one(tmp_path):
    """``resume="latest"`` continues only a run that did not finish: after a finished run
    the logger's version is a new id, and its run is a new file."""
    first = SteplogLogger(save_dir=tmp_path)
    fit(TinyModel(), first, steps=3)
    again = SteplogLogger(save_dir=tmp_path, resume="latest")
    assert again.version != first.version
    fit(TinyModel(), again, steps=3)
    run = steplog.read_run(again.run_path)
    assert run.run_id == again.version and [s.status for s in run.segments] == ["finished"]


class ModelWithTestStep(TinyModel):
    """TinyModel with a test step that logs ``test_loss``."""

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))


@pytest.mark.slow
def test_a_fixed_version_is_one_run_across_fit_and_test(tmp_path):
    """With ``version=`` given, a second stage (``trainer.test`` after ``fit``) continues
    that run as a new segment instead of starting another run."""
    logger = SteplogLogger(save_dir=tmp_path, version="one")
    fitted = fit(ModelWithTestStep(), logger, steps=4)
    fitted.test(fitted.lightning_module, loader(), verbose=False)
    assert [p.name for p in (tmp_path / "lightning_logs").glob("*.jsonl")] == ["one.jsonl"]
    run = steplog.read_run(logger.run_path)
    assert [s.status for s in run.segments] == ["finished", "finished"]
    assert "test_loss" in run.records[-1].data


@pytest.mark.slow
def test_a_test_continuing_a_run_keeps_its_logs_at_any_step(tmp_path):
    """Only a fit restored from a checkpoint replays steps: ``trainer.test`` in a new
    Trainer (its steps start at 0, below the run's) with ``version=`` of a finished run
    continues that run and keeps its test logs, nothing counted as replayed."""
    first = SteplogLogger(save_dir=tmp_path)
    fit(ModelWithTestStep(), first, steps=6)
    logger = SteplogLogger(save_dir=tmp_path, version=first.version)
    trainer(logger, steps=6).test(ModelWithTestStep(), loader(), verbose=False)
    run = steplog.read_run(first.run_path)
    assert [s.status for s in run.segments] == ["finished", "finished"]
    assert [r.step for r in run.records if "test_loss" in r.data] == [0]
    assert REPLAYED_KEY not in run.summary
