"""TensorBoardBackend: event files read back with TensorBoard's own reader."""

from __future__ import annotations

import math
import os

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
    them (every step once), or, when the batch is given up, the file is cut back to its
    last whole record — TensorBoard's reader still sees every later step."""
    import errno

    from steplog.backends import tensorboard as module

    real_write = os.write
    calls = [0]

    def flaky_write(fd, data):
        # What a filling disk does to a big batch: a short write (half of it, cutting a
        # record), then ENOSPC — once, or for every retry of that batch.
        if len(data) > 2000 or calls[0]:
            calls[0] += 1
            if calls[0] == 1:
                return real_write(fd, bytes(data[: len(data) // 2 + 3]))
            if calls[0] <= (2 if recovers else 5):
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    tb = steplog.TensorBoardBackend(tmp_path / "tb")
    tracker = steplog.Tracker(
        tb, retry=steplog.RetryPolicy(backoff=0.001), batch_size=200, experiment_name="x"
    )
    tracker.init()
    monkeypatch.setattr(module.os, "write", flaky_write)
    for i in range(200):
        tracker.log({"loss": float(i)}, step=i)
    tracker.flush()
    for i in range(200, 250):
        tracker.log({"loss": float(i)}, step=i)
    stats = tracker.finish()
    monkeypatch.undo()
    steps = [e.step for e in load(tb.path.parent).Scalars("loss")]
    tb_stats = stats.backends["tensorboard"]
    if recovers:
        assert steps == list(range(250))
        assert tb_stats.delivered == 250
    else:
        # The given-up batch left its whole records (a prefix) and no torn one: the
        # reader goes on to the next batch.
        assert steps == sorted(set(steps))
        assert steps[-50:] == list(range(200, 250))
        assert tb_stats.failed == 200
