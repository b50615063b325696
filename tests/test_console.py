"""ConsoleBackend: throttled, key-selected output that keeps tqdm bars intact."""

from __future__ import annotations

import io

import pytest

import steplog


def test_prints_at_most_once_per_interval_plus_final_line():
    """A fast loop prints the start line, one throttled line, and the final values."""
    out = io.StringIO()
    tracker = steplog.Tracker(
        steplog.ConsoleBackend(keys=["loss"], every=3600, file=out),
        experiment_name="exp",
        batch_size=100,
    )
    tracker.init()
    for i in range(10_000):
        tracker.log({"loss": i / 10, "other": i})
    tracker.finish({"best": 0.5})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[exp] run ") and lines[0].endswith("started")
    step_lines = [line for line in lines if " step " in line]
    assert len(step_lines) == 2  # the first batch, then the last values at close
    assert step_lines[-1] == "[exp] step 9999  loss=999.9"
    assert "other" not in out.getvalue()
    assert lines[-1].endswith("finished after 10000 steps  best=0.5")


def test_keys_missing_from_the_latest_event_show_their_last_value():
    """Keys logged only sometimes show their most recent value."""
    out = io.StringIO()
    tracker = steplog.Tracker(
        steplog.ConsoleBackend(keys=["loss", "trigger"], every=3600, file=out)
    )
    tracker.init()
    tracker.log({"loss": 1.0, "trigger": "abc"})
    tracker.flush()
    tracker.log({"loss": 0.5})
    tracker.log({"loss": 0.25})
    tracker.finish()
    assert "step 2  loss=0.25  trigger=abc" in out.getvalue()


def test_every_zero_prints_each_batch():
    """every=0 disables throttling (a line for each event flushed on its own)."""
    out = io.StringIO()
    tracker = steplog.Tracker(steplog.ConsoleBackend(every=0, file=out))
    tracker.init()
    for i in range(3):
        tracker.log({"i": i})
        tracker.flush()
    tracker.finish()
    assert [line.split("  ")[-1] for line in out.getvalue().splitlines() if " step " in line] == [
        "i=0",
        "i=1",
        "i=2",
    ]


def test_writes_through_tqdm_without_garbling_an_active_bar():
    """With a tqdm bar active, lines go through tqdm.write: each printed line is intact."""
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    tracker = steplog.Tracker(steplog.ConsoleBackend(keys=["loss"], every=0, file=out))
    tracker.init()
    with tqdm.tqdm(total=5, file=out, ascii=True, mininterval=0) as bar:
        for i in range(5):
            tracker.log({"loss": float(i)})
            tracker.flush()
            bar.update()
    tracker.finish()
    # Bars are redrawn with carriage returns; our lines must each stand on a line of
    # their own, never glued to a bar fragment.
    pieces = [p for chunk in out.getvalue().split("\n") for p in chunk.split("\r")]
    for i in range(5):
        assert f"[default] step {i}  loss={float(i):g}" in pieces


def test_bad_arguments_raise():
    """A single string as keys, or a negative interval, raise at construction."""
    with pytest.raises(TypeError, match="list"):
        steplog.ConsoleBackend(keys="loss")
    with pytest.raises(ValueError, match="every"):
        steplog.ConsoleBackend(every=-1)


def test_every_zero_prints_every_event_of_a_batch():
    """every=0 prints one line per event, also when many events arrive in one batch."""
    out = io.StringIO()
    tracker = steplog.Tracker(
        steplog.ConsoleBackend(keys=["loss"], every=0, file=out), batch_size=1000
    )
    tracker.init()
    for i in range(500):
        tracker.log({"loss": float(i)})
    tracker.finish()
    steps = [line.split()[2] for line in out.getvalue().splitlines() if " step " in line]
    assert steps == [str(i) for i in range(500)]
    assert out.getvalue().splitlines()[-1].endswith("finished after 500 steps")


def test_one_step_is_singular():
    """The final line says 'after 1 step', not '1 steps'."""
    out = io.StringIO()
    tracker = steplog.Tracker(steplog.ConsoleBackend(file=out))
    tracker.init()
    tracker.log({"loss": 1.0})
    tracker.finish()
    assert out.getvalue().splitlines()[-1].endswith("finished after 1 step")
