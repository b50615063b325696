"""TensorBoardBackend: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import steplog

pytest.importorskip("crc32c", reason="TensorBoardBackend needs crc32c (pip install -e '.[dev]')")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="reading event files back needs tensorboard (pip install -e '.[dev]')",
)


def load(path):
    accumulator = event_accumulator.EventAccumulator(
        str(path), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


def test_every_scalar_point_and_text_is_readable_by_tensorboard(tmp_path):
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tb = steplog.TensorBoardBackend(tmp_path / "tb")
    tracker = steplog.Tracker(jsonl, tb, experiment_name="exp")
    tracker.init({"lr": 0.1, "model": {"layers": 2}})
    for i in range(3000):
        loss = 1.0 / (i + 1)
        if i == 5:
            loss = math.nan
        if i == 6:
            loss = -math.inf
        tracker.log(
            {"loss": loss, "grad": {"norm": i * 0.5}, "ok": i % 3 == 0, "n": i,
             "trigger": f"t{i}" if i % 1000 == 0 else None, "list": [1, 2]}
        )  # fmt: skip
    stats = tracker.finish({"best": 0.25, "note": "fine"})
    assert stats.backends["tensorboard"].errors == 0
    local = steplog.read_run(jsonl.path)
    assert tb.path.parent == tmp_path / "tb" / "exp" / local.run_id

    acc = load(tb.path.parent)
    scalars = acc.Tags()["scalars"]
    assert {"loss", "grad/norm", "ok", "n", "summary/best"} <= set(scalars)
    assert "list" not in scalars
    loss = acc.Scalars("loss")
    assert [p.step for p in loss] == list(range(3000))
    for point, event in zip(loss, local.records, strict=True):
        assert point.wall_time == pytest.approx(event.time, abs=1e-6)
        expected = event.data["loss"]
        if math.isnan(expected):
            assert math.isnan(point.value)
        elif math.isinf(expected):
            assert point.value == -math.inf
        else:
            assert point.value == pytest.approx(expected, rel=1e-6)  # float32
    assert [p.value for p in acc.Scalars("ok")][:4] == [1.0, 0.0, 0.0, 1.0]
    assert [p.value for p in acc.Scalars("n")][-1] == 2999.0
    assert [(p.step, p.value) for p in acc.Scalars("summary/best")] == [(2999, 0.25)]

    texts = {tag: acc.Tensors(tag) for tag in acc.Tags()["tensors"]}
    assert [(e.step, e.tensor_proto.string_val[0].decode()) for e in texts["trigger"]] == [
        (0, "t0"), (1000, "t1000"), (2000, "t2000")
    ]  # fmt: skip
    assert '"lr": 0.1' in texts["config"][0].tensor_proto.string_val[0].decode()
    assert '"note": "fine"' in texts["summary"][0].tensor_proto.string_val[0].decode()


def test_replaying_into_the_same_logdir_rewrites_instead_of_doubling(tmp_path):
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(jsonl, experiment_name="exp")
    tracker.init()
    for i in range(500):
        tracker.log({"loss": float(i)})
    tracker.finish()
    for _ in range(2):
        result = steplog.replay(jsonl.path, steplog.TensorBoardBackend(tmp_path / "tb"))
        assert result["tensorboard"].delivered == 500
    run_dir = tmp_path / "tb" / "exp" / steplog.read_run(jsonl.path).run_id
    assert len(list(run_dir.iterdir())) == 1
    assert [p.value for p in load(run_dir).Scalars("loss")] == [float(i) for i in range(500)]


def test_text_false_writes_scalars_only(tmp_path):
    tb = steplog.TensorBoardBackend(tmp_path, text=False)
    tracker = steplog.Tracker(tb, experiment_name="exp")
    tracker.init()
    tracker.log({"loss": 1.0, "s": "text"})
    tracker.finish()
    acc = load(tb.path.parent)
    assert acc.Tags()["scalars"] == ["loss"]
    assert "s" not in acc.Tags()["tensors"]


@pytest.mark.parametrize("recovers", [True, False])
def test_a_write_failing_part_way_neither_duplicates_nor_tears_records(
    tmp_path, monkeypatch, recovers
):
    """A batch whose os.write fails after some bytes (ENOSPC): the retry resumes after
    them — every step once, no torn record — whether the disk recovers within the
    retries or only later (the lane then waits and sends the batch again from the run
    file: nothing is given up)."""
    import errno

    from steplog.backends import tensorboard as module

    real_write = os.write
    calls = [0]

    def flaky_write(fd, data):
        # What a filling disk does to a big batch: a short write (half of it, cutting a
        # record), then ENOSPC — once, or for longer than the retries last.
        if len(data) > 2000 or calls[0]:
            calls[0] += 1
            if calls[0] == 1:
                return real_write(fd, bytes(data[: len(data) // 2 + 3]))
            if calls[0] <= (2 if recovers else 6):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    tb = steplog.TensorBoardBackend(tmp_path / "tb")
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path / "runs"),
        tb,
        retry=steplog.RetryPolicy(backoff=0.001, probe_backoff=0.05),
        batch_size=200,
        experiment_name="x",
        delivery="thread",  # the fault is injected into this process
    )
    tracker.init()

    class FlakyOs:  # the os module as the TensorBoard backend sees it (the run file not)
        write = staticmethod(flaky_write)

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(module, "os", FlakyOs())
    for i in range(200):
        tracker.log({"loss": float(i)}, step=i)
    tracker.flush()
    for i in range(200, 250):
        tracker.log({"loss": float(i)}, step=i)
    stats = tracker.finish()
    monkeypatch.undo()
    steps = [e.step for e in load(tb.path.parent).Scalars("loss")]
    tb_stats = stats.backends["tensorboard"]
    assert steps == list(range(250))
    assert (tb_stats.delivered, tb_stats.failed, tb_stats.missing) == (250, 0, 0)
    assert tb_stats.errors == (1 if recovers else 5)
    assert len(tb_stats.outages) == (0 if recovers else 1)


# A pre-emptible training job logging to a run file and to TensorBoard: the same command
# on every (re)start, resume="latest". It flushes after logging step flush_at (so
# TensorBoard has every step up to it) and SIGKILLs itself after logging step kill_at.
TB_JOB = """
import os, sys, steplog
root, logdir, steps, flush_at, kill_at = sys.argv[1:6]
tracker = steplog.Tracker(
    steplog.JsonlBackend(root), steplog.TensorBoardBackend(logdir),
    experiment_name="job", flush_interval=0.01,
)
info = tracker.init({"lr": 0.1}, resume="latest")
for step in range(info.resumed.step if info.resumed else 0, int(steps)):
    tracker.log({"loss": 1.0 / (step + 1)})
    if step == int(flush_at):
        tracker.flush()
    if step == int(kill_at):
        os.kill(os.getpid(), 9)
tracker.finish({"best": 0.5})
"""


def _tb_job(tmp_path: Path, steps: int, *, flush_at: int = -1, kill_at: int = -1) -> int:
    args = [str(tmp_path / "runs"), str(tmp_path / "tb"), str(steps), str(flush_at)]
    done = subprocess.run(
        [sys.executable, "-c", TB_JOB, *args, str(kill_at)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode


def _loss_points(run_dir: Path) -> dict[int, float]:
    """The ``loss`` points TensorBoard's reader finds in a run directory, by step; a
    step found twice fails."""
    points = load(run_dir).Scalars("loss")
    steps = [p.step for p in points]
    assert steps == sorted(set(steps)), "a step twice or out of order"
    return {p.step: p.value for p in points}


@pytest.mark.slow
def test_a_killed_and_resumed_run_keeps_every_point_tensorboard_had(tmp_path):
    """A job SIGKILLed twice (once just after a flush, once with 100 events still on
    their way) and restarted with resume="latest" each time: TensorBoard's reader still
    has every point it had before each resume, each step once, plus every step of the
    finishing segment, all with the run file's values. Only what the second kill caught
    on its way to TensorBoard may be missing (a tail of that segment)."""
    assert _tb_job(tmp_path, 600, flush_at=199, kill_at=199) == -signal.SIGKILL
    (run_file,) = (tmp_path / "runs" / "job").glob("*.jsonl")
    run_dir = tmp_path / "tb" / "job" / run_file.stem
    first = _loss_points(run_dir)
    assert sorted(first) == list(range(200))
    assert _tb_job(tmp_path, 600, flush_at=299, kill_at=399) == -signal.SIGKILL
    second = _loss_points(run_dir)
    assert set(range(300)) <= second.keys()
    assert _tb_job(tmp_path, 600) == 0
    final = _loss_points(run_dir)

    run = steplog.read_run(run_file)
    assert [s.status for s in run.segments] == ["incomplete", "incomplete", "finished"]
    local = {e.step: e.data["loss"] for e in run.records}
    assert sorted(local) == list(range(600))
    assert first.items() <= second.items() <= final.items()
    resumed_at = run.segments[1].first_step
    last_segment = run.segments[2].first_step
    # The second segment reached TensorBoard up to some step (a prefix of it), the last
    # one entirely.
    seen = sorted(step for step in final if resumed_at <= step < last_segment)
    assert seen == list(range(resumed_at, resumed_at + len(seen)))
    assert resumed_at == 200 and len(seen) >= 100
    assert sorted(final) == [*range(resumed_at + len(seen)), *range(last_segment, 600)]
    for step, value in final.items():
        assert value == pytest.approx(local[step], rel=1e-6)  # float32
    acc = load(run_dir)
    assert [(p.step, p.value) for p in acc.Scalars("summary/best")] == [(599, 0.5)]
    # Each segment's config once, at the segment's first step.
    assert [e.step for e in acc.Tensors("config")] == [0, resumed_at, last_segment]


def test_replaying_a_resumed_run_into_its_logdir_rewrites_it_as_one_file(tmp_path):
    """A replay of a resumed run into the log directory its live run wrote replaces the
    segments' files by one file: every step once, as for a run never resumed."""
    assert _tb_job(tmp_path, 300, flush_at=199, kill_at=199) == -signal.SIGKILL
    assert _tb_job(tmp_path, 300) == 0
    (run_file,) = (tmp_path / "runs" / "job").glob("*.jsonl")
    run_dir = tmp_path / "tb" / "job" / run_file.stem
    assert len(list(run_dir.iterdir())) == 2
    result = steplog.replay(run_file, steplog.TensorBoardBackend(tmp_path / "tb"))
    assert result["tensorboard"].delivered == 300
    assert len(list(run_dir.iterdir())) == 1
    assert sorted(_loss_points(run_dir)) == list(range(300))


def test_a_resumed_segment_that_logs_nothing_puts_the_summary_at_the_last_step(tmp_path):
    """The summary of a resumed run that logs no new step goes at the run's last step,
    not at step 0 before every point."""
    runs, logdir = tmp_path / "runs", tmp_path / "tb"
    tracker = steplog.Tracker(steplog.JsonlBackend(runs), steplog.TensorBoardBackend(logdir))
    info = tracker.init()
    for i in range(10):
        tracker.log({"loss": float(i)})
    tracker.finish()
    again = steplog.Tracker(steplog.JsonlBackend(runs), steplog.TensorBoardBackend(logdir))
    again.init(resume=info.run_id)
    again.finish({"final": 0.25})
    acc = load(logdir / info.experiment / info.run_id)
    assert [(p.step, p.value) for p in acc.Scalars("summary/final")] == [(9, 0.25)]
    assert [p.step for p in acc.Scalars("loss")] == list(range(10))


def test_a_resumed_segments_file_sorts_after_every_file_already_there(tmp_path):
    """TensorBoard reads a run directory's event files in name order (a live TensorBoard
    never goes back to a name before the one it reads), so a resumed segment's file is
    named to sort after every event file there — also after one whose time is ahead of
    this machine's clock, and when the resume comes within the second of the start."""
    runs, logdir = tmp_path / "runs", tmp_path / "tb"
    first = steplog.TensorBoardBackend(logdir)
    tracker = steplog.Tracker(steplog.JsonlBackend(runs), first)
    info = tracker.init()
    for i in range(5):
        tracker.log({"loss": float(i)})
    tracker.finish()
    run_dir = first.path.parent
    (run_dir / "events.out.tfevents.4102444800.clock-ahead").write_bytes(b"")  # 2100
    resumed = []
    for segment in range(2):
        tb = steplog.TensorBoardBackend(logdir)
        again = steplog.Tracker(steplog.JsonlBackend(runs), tb)
        again.init(resume=info.run_id)
        for i in range(5):
            again.log({"loss": float(5 + 5 * segment + i)})
        again.finish()
        resumed.append(tb.path.name)
    names = sorted(path.name for path in run_dir.iterdir())
    assert names == [first.path.name, "events.out.tfevents.4102444800.clock-ahead", *resumed]
    assert [p.step for p in load(run_dir).Scalars("loss")] == list(range(15))
