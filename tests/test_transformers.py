"""SteplogCallback in a real transformers.Trainer on a tiny random model, on CPU."""

from __future__ import annotations

import inspect
import json
import logging
import math

import pytest

import steplog

pytest.importorskip("transformers", reason="pip install 'steplog[transformers]'")
pytest.importorskip("accelerate", reason="pip install 'steplog[transformers]'")
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from steplog.integrations.transformers import RUN_FILE_NAME, SteplogCallback


class Tokens(torch.utils.data.Dataset):
    """64 random sequences of 16 tokens, the labels the inputs (a language model)."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config)


def trainer(
    tmp_path, callback, *, max_steps: int, save_steps: int | None = None, **options
) -> Trainer:
    """A Trainer of the tiny model on ``Tokens`` (also its eval set); ``options`` go to
    ``TrainingArguments``; ``callback=None`` adds none (``report_to`` may)."""
    settings = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": max_steps,
        "per_device_train_batch_size": 8,
        "logging_steps": 5,
        "learning_rate": 1e-3,
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": save_steps or 500,
        "use_cpu": True,
        "seed": 0,
    }
    args = TrainingArguments(**{**settings, **options})
    return Trainer(
        tiny_model(),
        args,
        train_dataset=Tokens(),
        eval_dataset=Tokens(),
        callbacks=None if callback is None else [callback],
    )


@pytest.mark.slow
def test_on_log_matches_the_trainers_log_history(tmp_path):
    """Every on_log call is a record at the Trainer's global step with the values of
    ``state.log_history``; the config holds the arguments and the model config; the
    summary holds the final train metrics."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"), experiment_name="lm")
    t = trainer(tmp_path, callback, max_steps=40)
    t.train()
    run = steplog.read_run(callback.run_path)
    history = t.state.log_history
    assert [r.step for r in run.records] == [e["step"] for e in history]
    assert [r.step for r in run.records] == [5, 10, 15, 20, 25, 30, 35, 40, 40]
    for record, entry in zip(run.records, history, strict=True):
        assert record.data == pytest.approx({k: v for k, v in entry.items() if k != "step"})
    assert run.status == "finished"
    assert run.config["max_steps"] == 40 and run.config["learning_rate"] == 1e-3
    assert run.config["model_config"]["n_embd"] == 16
    assert run.summary["global_step"] == 40
    assert math.isfinite(run.summary["train_loss"]) and "train_runtime" in run.summary
    saved = json.loads((tmp_path / "out" / RUN_FILE_NAME).read_text())
    assert saved["run_id"] == run.run_id
    assert saved["path"] == str(callback.run_path)


@pytest.mark.slow
def test_only_the_world_process_zero_writes(tmp_path):
    """On a process that is not the world's zero, the callback starts no run: not for
    train(), nor for evaluate() or predict() outside it."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=5)
    t.state.is_world_process_zero = False
    args, state, control = t.args, t.state, t.control
    callback.on_log(args, state, control, logs={"eval_loss": 1.0}, model=t.model)
    callback.on_predict(args, state, control, metrics={"test_loss": 1.0}, model=t.model)
    callback.on_train_begin(args, state, control, model=t.model)
    callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.on_train_end(args, state, control)
    callback.on_log(args, state, control, logs={"eval_loss": 1.0}, model=t.model)
    assert callback.run_path is None and not callback.tracker.active
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    "resume" not in inspect.signature(steplog.Tracker.init).parameters,
    reason="Tracker.init(resume=...) has not landed yet",
)
def test_a_training_resumed_from_a_checkpoint_continues_the_run(tmp_path):
    """train(resume_from_checkpoint=...) in a new Trainer and callback continues the
    same run file: the steps after the checkpoint follow the first segment's."""
    first = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    trainer(tmp_path, first, max_steps=20, save_steps=10).train()
    path = first.run_path
    second = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, second, max_steps=30, save_steps=10)
    t.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-20"))
    assert second.run_path == path
    run = steplog.read_run(path)
    assert run.status == "finished"
    assert [r.step for r in run.records if "loss" in r.data] == [5, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_steps_the_trainer_replays_after_a_resume_are_not_logged_twice(tmp_path):
    """Resumed from a checkpoint older than the run's last step, the Trainer replays the
    steps in between: those the file has are skipped (counted in the summary), so each
    step is in the run once and steps keep going up."""
    first = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    trainer(tmp_path, first, max_steps=15, save_steps=10).train()  # logs 5, 10, 15
    second = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, second, max_steps=30, save_steps=10)
    t.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-10"))
    run = steplog.read_run(first.run_path)
    steps = [r.step for r in run.records if "loss" in r.data]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert run.summary["steplog_replayed_logs_skipped"] == 1  # step 15, replayed
    assert len(run.segments) == 2


@pytest.mark.slow
def test_a_second_train_starts_a_new_run_that_later_evaluations_join(tmp_path):
    """train() twice with one callback makes two runs (a run holds one training); an
    evaluate() goes into the run of the latest training, at its global step."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=5)
    t.train()
    first = callback.run_path
    t.evaluate()
    t.train()
    second = callback.run_path
    metrics = t.evaluate()
    assert second != first
    assert [r.step for r in steplog.read_run(first).records if "eval_loss" in r.data] == [5]
    run = steplog.read_run(second)
    assert (run.records[-1].step, run.records[-1].data) == (5, pytest.approx(metrics))
    assert run.status == "finished"


@pytest.mark.slow
def test_evaluations_before_train_are_continued_by_the_training(tmp_path):
    """evaluate() and predict() before any train() start the callback's run; each call
    leaves it finished, the next one continues it, and train() continues it too (one
    run per callback until a training is in it, as W&B's and MLflow's callbacks keep
    theirs): a baseline evaluation at step 0, then the training, in one run."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=10)
    t.evaluate()
    path = callback.run_path
    assert steplog.read_run(path).status == "finished"
    t.evaluate()
    t.predict(Tokens())
    t.train()
    t.evaluate()
    assert callback.run_path == path
    assert list((tmp_path / "runs" / "transformers").glob("*.jsonl")) == [path]
    run = steplog.read_run(path)
    assert run.status == "finished"
    assert [(r.step, sorted(r.data)[0]) for r in run.records] == [
        (0, "epoch"),  # evaluate(): epoch, eval_loss, ...
        (0, "epoch"),
        (0, "test_loss"),  # predict()
        (5, "epoch"),  # train(): epoch, grad_norm, learning_rate, loss
        (10, "epoch"),
        (10, "epoch"),  # train()'s last log: epoch, total_flos, train_loss, ...
        (10, "epoch"),  # evaluate() after train()
    ]
    assert [r.step for r in run.records if "eval_loss" in r.data] == [0, 0, 10]
    assert run.config["max_steps"] == 10
    saved = json.loads((tmp_path / "out" / RUN_FILE_NAME).read_text())
    assert saved["run_id"] == run.run_id


@pytest.mark.slow
def test_without_a_run_file_an_evaluation_after_train_is_a_run_of_its_own(tmp_path, caplog):
    """With only in-process backends there is no run file to continue: an evaluate()
    after train() is still recorded, at the global step, in a new finished run with the
    same config, and one warning (not one per call) says why."""
    caplog.set_level(logging.WARNING, logger="steplog")
    memory = steplog.MemoryBackend()
    callback = SteplogCallback(memory)
    t = trainer(tmp_path, callback, max_steps=5)
    t.train()
    training = memory.info.run_id
    t.evaluate()
    metrics = t.evaluate()
    assert memory.info.run_id != training
    assert [(e.step, e.data) for e in memory.records] == [(5, pytest.approx(metrics))]
    assert memory.status == "finished"
    assert memory.config["max_steps"] == 5
    warned = [r for r in caplog.records if "JsonlBackend" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.slow
def test_report_to_steplog_works_after_register_report_to(tmp_path, monkeypatch):
    """transformers refuses ``report_to="steplog"`` (its list of integrations is closed)
    until ``register_report_to()`` adds SteplogCallback to the registry the Trainer reads
    (``INTEGRATION_TO_CALLBACK``); then the Trainer makes a SteplogCallback with the
    defaults (JSONL under ``$STEPLOG_ROOT``) and it records the training. Registering
    twice is harmless."""
    from transformers.integrations import integration_utils

    from steplog.integrations.transformers import register_report_to

    monkeypatch.setenv("STEPLOG_ROOT", str(tmp_path / "runs"))
    monkeypatch.delitem(integration_utils.INTEGRATION_TO_CALLBACK, "steplog", raising=False)
    with pytest.raises(ValueError, match="steplog is not supported"):
        trainer(tmp_path, None, max_steps=10, report_to="steplog")
    try:
        register_report_to()
        register_report_to()
        t = trainer(tmp_path, None, max_steps=10, report_to="steplog")
        [callback] = [c for c in t.callback_handler.callbacks if isinstance(c, SteplogCallback)]
        t.train()
    finally:
        integration_utils.INTEGRATION_TO_CALLBACK.pop("steplog", None)
    assert callback.run_path.parent == tmp_path / "runs" / "transformers"
    run = steplog.read_run(callback.run_path)
    assert run.status == "finished"
    assert [r.step for r in run.records if "loss" in r.data] == [5, 10]


def test_register_report_to_says_when_transformers_has_no_registry(monkeypatch):
    """A transformers without ``INTEGRATION_TO_CALLBACK`` (not a documented API: it may
    go) gets an error that says to pass the callback instead."""
    from transformers.integrations import integration_utils

    from steplog.integrations.transformers import register_report_to

    monkeypatch.delattr(integration_utils, "INTEGRATION_TO_CALLBACK")
    with pytest.raises(RuntimeError, match=r"callbacks=\[SteplogCallback"):
        register_report_to()


# -- The generic contract ------------------------------------------------------------
# What a reporting callback owes a Trainer user whatever it writes to, re-expressed from
# transformers' own callback tests (tests/trainer/test_trainer_callback.py: a callback
# sees on_log then on_evaluate for every evaluation, inside train() or not, and
# on_predict for predict()) and from what its MLflow, TensorBoard and W&B callbacks
# record: an evaluate() after train() (W&B: in the same run; TensorBoard: in the same log
# directory; both at the global step), an evaluate() or predict() with no train() (MLflow
# and W&B start their run on the first log), predict()'s metrics (W&B's on_predict), and
# nothing to warn about on a plain run.


@pytest.mark.slow
def test_evaluate_after_train_is_recorded_in_the_training_run_at_the_global_step(tmp_path):
    """trainer.evaluate() after train() adds its metrics to the run train() wrote, at the
    Trainer's global step, and leaves that run finished (no second run file); the
    evaluations inside train() (``eval_strategy="steps"``) stay among the training's
    records; the summary gains the evaluation's values and keeps the training's."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=10, eval_strategy="steps", eval_steps=5)
    t.train()
    path = callback.run_path
    metrics = t.evaluate()
    assert callback.run_path == path
    assert list((tmp_path / "runs" / "transformers").glob("*.jsonl")) == [path]
    run = steplog.read_run(path)
    assert run.status == "finished"
    assert [r.step for r in run.records if "eval_loss" in r.data] == [5, 10, 10]
    assert t.state.global_step == 10
    assert (run.records[-1].step, run.records[-1].data) == (10, pytest.approx(metrics))
    assert run.summary["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert math.isfinite(run.summary["train_loss"])
    assert run.summary["global_step"] == 10


@pytest.mark.slow
def test_evaluate_without_train_starts_a_run(tmp_path):
    """trainer.evaluate() with no train() starts a run on its log (as MLflow's and W&B's
    callbacks do): its config the arguments and the model config, the metrics at the
    global step (0), finished when evaluate() returns."""
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=10)
    metrics = t.evaluate()
    assert callback.run_path is not None
    run = steplog.read_run(callback.run_path)
    assert run.status == "finished"
    assert [(r.step, r.data) for r in run.records] == [(0, pytest.approx(metrics))]
    assert run.config["max_steps"] == 10
    assert run.config["model_config"]["n_embd"] == 16
    assert run.summary["eval_loss"] == pytest.approx(metrics["eval_loss"])


@pytest.mark.slow
def test_predict_metrics_are_recorded(tmp_path):
    """trainer.predict() (on_predict, no on_log) records its metrics at the global step:
    in the training's run after train(), in a run of its own without one (as W&B's
    on_predict does); either way the run is finished when predict() returns."""
    alone = SteplogCallback(steplog.JsonlBackend(tmp_path / "alone"))
    output = trainer(tmp_path, alone, max_steps=10).predict(Tokens())
    assert alone.run_path is not None
    run = steplog.read_run(alone.run_path)
    assert run.status == "finished"
    assert [(r.step, r.data) for r in run.records] == [(0, pytest.approx(output.metrics))]

    after = SteplogCallback(steplog.JsonlBackend(tmp_path / "after"))
    t = trainer(tmp_path, after, max_steps=10)
    t.train()
    output = t.predict(Tokens())
    run = steplog.read_run(after.run_path)
    assert run.status == "finished"
    assert (run.records[-1].step, run.records[-1].data) == (10, pytest.approx(output.metrics))
    assert run.summary["test_loss"] == pytest.approx(output.metrics["test_loss"])


@pytest.mark.slow
def test_a_plain_run_logs_no_warning(tmp_path, caplog):
    """train(), evaluate() and predict() with a stock model config log no steplog
    warning and raise none (pytest turns warnings into errors here): the int keys every
    ``PretrainedConfig.id2label`` has are recorded as strings, as config.json has them."""
    caplog.set_level(logging.WARNING, logger="steplog")
    callback = SteplogCallback(steplog.JsonlBackend(tmp_path / "runs"))
    t = trainer(tmp_path, callback, max_steps=10)
    t.train()
    t.evaluate()
    t.predict(Tokens())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("steplog")] == []
    run = steplog.read_run(callback.run_path)
    assert run.config["model_config"]["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    assert run.config["model_config"]["label2id"] == {"LABEL_0": 0, "LABEL_1": 1}
