"""Watchers (steplog.watch): checks run by the writer thread on real runs, read back
from their run files."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import steplog
from steplog import watch

from conftest import cpu_tensors_as_device, run_steplog, wait_until

pytestmark = pytest.mark.timeout(120)


def tracker_with(root, watchers, on_alert=None, **kwargs) -> tuple[steplog.Tracker, list]:
    backend = steplog.JsonlBackend(root)
    fired: list[steplog.Alert] = []
    tracker = steplog.Tracker(
        backend,
        watchers=watchers,
        on_alert=on_alert if on_alert is not None else fired.append,
        flush_interval=0.02,
        **kwargs,
    )
    tracker.init()
    return tracker, fired


def test_nonfinite_fires_once_per_episode_and_is_stored(runs_root):
    """NaN, inf and -inf fire; a run of bad values is one episode; a good value ends it."""
    w = watch.nonfinite("loss", cooldown=0)
    tracker, fired = tracker_with(runs_root, [w])
    for value in [1.0, math.nan, math.nan, 0.5, math.inf, -math.inf, 0.1]:
        tracker.log({"loss": value, "other": math.nan})
    stats = tracker.finish()
    assert [(a.step, a.watcher, a.key) for a in fired] == [
        (1, "nonfinite", "loss"),
        (4, "nonfinite", "loss"),
    ]
    assert math.isnan(fired[0].value) and fired[1].value == math.inf
    assert (w.fired, w.hits) == (2, 4)
    assert stats.alerts == 2 and stats.alert_callback_errors == 0
    run = steplog.read_run(tracker.backends[0].path)
    # The run file holds the same alerts, NaN included (compared as tuples, whose
    # comparison takes identical objects as equal: the decoded NaN is math.nan, the
    # logged one; a dataclass's own == compares field by field on 3.13, NaN != NaN).
    assert [dataclasses.astuple(a) for a in run.alerts] == [dataclasses.astuple(a) for a in fired]
    assert len(run.records) == 7  # alerts never become step records
    assert run.stats is not None and run.stats.alerts == 2


def test_bounds_fire_when_crossed_and_cooldown_counts_suppressed_episodes(runs_root):
    """above/below fire on crossing; episodes within the cooldown are counted in the
    next alert's ``suppressed``."""
    high = watch.above("loss", 10.0, cooldown=0.2)
    low = watch.below("acc", 0.5, cooldown=0)
    tracker, fired = tracker_with(runs_root, [high, low])
    tracker.log({"loss": 11.0, "acc": 0.9})  # above: fires
    tracker.log({"loss": 1.0, "acc": 0.4})  # below: fires
    tracker.log({"loss": 12.0, "acc": 0.6})  # above again, inside its cooldown
    tracker.flush()
    time.sleep(0.25)
    tracker.log({"loss": 1.0, "acc": 0.7})
    tracker.log({"loss": 13.0, "acc": 0.7})  # past the cooldown: fires, 1 suppressed
    tracker.finish()
    assert [(a.watcher, a.step, a.value, a.suppressed) for a in fired] == [
        ("above", 0, 11.0, 0),
        ("below", 1, 0.4, 0),
        ("above", 4, 13.0, 1),
    ]
    assert "above 10" in fired[0].message
    run = steplog.read_run(tracker.backends[0].path)
    assert [a.suppressed for a in run.alerts] == [0, 0, 1]


def test_diverging_fires_when_the_windowed_mean_rises_by_the_factor(runs_root):
    """The mean of the last ``window`` values over ``factor`` x its lowest fires, once."""
    tracker, fired = tracker_with(runs_root, [watch.diverging("loss", factor=2.0, window=5)])
    for step in range(30):
        tracker.log({"loss": 1.0 if step < 10 else 3.0})
    tracker.finish()
    # Means after step 10: 1.4, 1.8, 2.2 — the third crosses 2 x 1.0.
    assert [(a.watcher, a.step) for a in fired] == [("diverging", 12)]
    assert fired[0].value == pytest.approx(2.2)


def test_a_steady_loss_never_fires_and_dotted_keys_reach_nested_values(runs_root):
    """Falling values fire no diverging alert; ``"train.loss"`` watches a nested value."""
    tracker, fired = tracker_with(
        runs_root,
        [watch.diverging("train.loss", window=3), watch.nonfinite("train.loss", cooldown=0)],
    )
    for step in range(20):
        tracker.log({"train": {"loss": 1.0 / (step + 1)}})
    tracker.log({"train": {"loss": math.inf}})
    tracker.finish()
    assert [(a.watcher, a.key, a.step) for a in fired] == [("nonfinite", "train.loss", 20)]


def test_stall_is_detected_by_the_writer_clock_only_after_the_first_log(runs_root):
    """No alert for setup before the first log(); a pause longer than ``seconds`` between
    log() calls fires once, with the idle time as its value."""
    tracker, fired = tracker_with(runs_root, [watch.stalled(0.15, cooldown=0)])
    time.sleep(0.3)  # setup before the first log(): no stall
    tracker.log({"loss": 1.0})
    logged = time.monotonic()
    # A real stall of the loop, as long as the writer takes to see it (not a guess).
    assert wait_until(lambda: fired, timeout=30)
    idle = time.monotonic() - logged
    tracker.log({"loss": 0.9})
    tracker.log({"loss": 0.8})
    tracker.finish()
    assert [(a.watcher, a.step, a.key) for a in fired] == [("stalled", None, None)]
    assert 0.15 <= fired[0].value <= idle  # the idle time, as far as the writer saw it
    assert "no log()" in fired[0].message
    run = steplog.read_run(tracker.backends[0].path)
    assert [a.watcher for a in run.alerts] == ["stalled"]


def test_slower_fires_when_steps_per_second_drop(runs_root):
    """A loop that goes from bursts of 200 events to one event per 50 ms fires
    ``slower``."""
    tracker, fired = tracker_with(runs_root, [watch.slower(0.5, window=0.2, cooldown=0)])
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        for _ in range(200):
            tracker.log({"loss": 1.0})
        time.sleep(0.01)
    for _ in range(12):
        tracker.log({"loss": 1.0})
        time.sleep(0.05)
    tracker.finish()
    assert [a.watcher for a in fired][:1] == ["slower"]
    assert "steps/s dropped" in fired[0].message


def test_callback_errors_are_contained_logged_once_and_counted(runs_root, caplog):
    """An on_alert that raises never reaches the loop: every alert is still stored,
    the error is logged once and counted in the statistics."""

    def broken(alert: steplog.Alert) -> None:
        raise RuntimeError("callback bug")

    tracker, _ = tracker_with(runs_root, [watch.above("x", 0, cooldown=0)], on_alert=broken)
    with caplog.at_level(logging.WARNING, logger="steplog"):
        for value in [1, -1, 2, -1, 3]:
            tracker.log({"x": value})
        stats = tracker.finish()
    assert stats.alerts == 3 and stats.alert_callback_errors == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "on_alert" in errors[0].getMessage()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("steplog alert [above]" in m for m in warnings) == 3
    run = steplog.read_run(tracker.backends[0].path)
    assert [a.step for a in run.alerts] == [0, 2, 4]
    assert run.status == "finished"


def test_a_watcher_starts_fresh_in_each_run(runs_root):
    """Reusing a tracker (and its watchers) for a second run forgets the first run's
    episodes and counts."""
    w = watch.above("x", 0, cooldown=3600)
    tracker, fired = tracker_with(runs_root, [w])
    tracker.log({"x": 1})
    tracker.finish()
    tracker.init()
    tracker.log({"x": 1})  # inside the first run's cooldown, but a new run
    tracker.finish()
    assert len(fired) == 2 and w.fired == 1


def test_value_watchers_see_the_lines_under_durability_process(runs_root):
    """With the writer process writing the file, value watchers still fire (through
    logging and on_alert)."""
    tracker, fired = tracker_with(
        runs_root, [watch.nonfinite("loss", cooldown=0)], durability="process"
    )
    tracker.log({"loss": 1.0})
    tracker.log({"loss": math.nan})
    stats = tracker.finish()
    assert [a.step for a in fired] == [1]
    assert stats.written == 2
    assert len(steplog.read_run(tracker.backends[0].path).records) == 2


def test_only_the_top_level_key_is_read_not_nested_ones_or_text(runs_root):
    """Flat ``"loss"`` is the top-level key: a nested ``loss`` or the text ``"loss":``
    inside a string value is not it (both batch shapes: flat events and nested ones)."""
    tracker, fired = tracker_with(runs_root, [watch.above("loss", 100.0, cooldown=0)])
    tracker.log({"note": 'says "loss":1e9', "loss": 1.0})  # a batch of flat events
    tracker.flush()
    tracker.log({"grads": {"loss": 1e9}, "loss": 2.0})  # a batch with nested objects
    tracker.flush()
    tracker.log({"grads": {"loss": 1.0}, "loss": 1e9})
    tracker.flush()
    tracker.log({"loss": 500.0, "note": "x"})
    tracker.finish()
    assert [(a.step, a.value) for a in fired] == [(2, 1e9)]


def test_without_watchers_there_is_no_monitor_and_no_records(runs_root):
    """The default tracker runs no monitor at all and writes only step records."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    assert tracker._run is not None and tracker._run.writer.monitor is None
    tracker.log({"loss": math.nan})
    stats = tracker.finish()
    run = steplog.read_run(backend.path)
    assert run.alerts == [] and run.system == [] and stats.alerts == 0
    types = {json.loads(line).get("type") for line in backend.path.read_text().splitlines()}
    assert types == {"run_start", None, "run_end"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: watch.above("loss", "10"), "needs a number"),
        (lambda: watch.below("loss", math.nan), "needs a number"),
        (lambda: watch.above("", 1.0), "non-empty string"),
        (lambda: watch.nonfinite(3), "non-empty string"),  # type: ignore[arg-type]
        (lambda: watch.diverging("loss", factor=1.0), "factor above 1"),
        (lambda: watch.diverging("loss", window=0), "window must be a positive integer"),
        (lambda: watch.stalled(0), "positive number of seconds"),
        (lambda: watch.slower(1.5), "between 0 and 1"),
        (lambda: watch.slower(0.5, window=-1), "positive number of seconds"),
        (lambda: watch.nonfinite("loss", cooldown=-1), "cooldown"),
    ],
)
def test_bad_watcher_arguments_fail_at_construction(make, message):
    """Each constructor checks its arguments and names the problem."""
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_bad_tracker_watch_options_fail_at_construction():
    """watchers must come from steplog.watch; on_alert must be callable and needs
    watchers."""
    with pytest.raises(TypeError, match="list of watchers"):
        steplog.Tracker(watchers=watch.nonfinite("loss"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"made by steplog\.watch"):
        steplog.Tracker(watchers=["loss"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="on_alert must be a callable"):
        steplog.Tracker(watchers=[watch.stalled(1)], on_alert=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no watchers"):
        steplog.Tracker(on_alert=print)


def test_show_lists_the_alerts_that_fired(runs_root):
    """``steplog show`` prints the alerts (text and JSON)."""
    tracker, _ = tracker_with(runs_root, [watch.nonfinite("loss", cooldown=0)])
    tracker.log({"loss": 1.0})
    tracker.log({"loss": math.nan})
    tracker.finish()
    path = str(tracker.backends[0].path)

    def show(*extra: str) -> str:
        out = run_steplog("show", path, *extra)
        assert out.returncode == 0, out.stderr
        return out.stdout

    text = show()
    assert "alerts (1 fired)" in text
    assert "nonfinite" in text and "loss is nan at step 1" in text
    assert "alerts 1" in text  # in the statistics line
    alerts = json.loads(show("--json"))["alerts"]
    assert [(a["watcher"], a["step"], a["key"]) for a in alerts] == [("nonfinite", 1, "loss")]


def test_alerts_of_one_batch_are_recorded_in_step_order(tmp_path):
    """Alerts that different watchers raise in one batch reach the run file in the
    order of their steps, not grouped by watcher."""
    tracker = steplog.Tracker(
        steplog.JsonlBackend(tmp_path),
        watchers=[steplog.watch.above("loss", 10.0), steplog.watch.nonfinite("loss")],
        batch_size=1024,
        flush_interval=60.0,
    )
    tracker.init()
    for step in range(100):
        loss = math.nan if step == 20 else (50.0 if step == 70 else 1.0)
        tracker.log({"loss": loss})
    tracker.finish()
    run = steplog.read_run(tracker.backends[0].path)
    assert [(a.watcher, a.step) for a in run.alerts] == [("nonfinite", 20), ("above", 70)]


ALERT_LOGS = """
import math, sys, steplog
from steplog import watch
tracker = None
def on_alert(alert):
    tracker.log({"alert_at": alert.step})  # into its own tracker, buffer full or not
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), buffer_size=1024, overflow="block",
    watchers=[watch.nonfinite("loss", cooldown=0)], on_alert=on_alert,
)
tracker.init()
for step in range(20_000):
    tracker.log({"loss": math.nan if step % 50 == 0 else 1.0, "step_seen": step})
stats = tracker.finish()
print(stats.alerts, stats.alert_callback_errors, stats.logged, stats.written, stats.dropped)
"""


def test_on_alert_that_logs_into_its_own_full_tracker_never_deadlocks(runs_root):
    """An on_alert that logs into its own tracker while the buffer is full under
    'block' neither deadlocks the writer nor the loop (before: both hung): on_alert runs
    in a thread of its own, and its records are in the file after the alerts' steps."""
    done = subprocess.run(
        [sys.executable, "-c", ALERT_LOGS, str(runs_root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    alerts, errors, logged, written, dropped = map(int, done.stdout.split())
    assert (alerts, dropped) == (400, 0) and logged == written
    (path,) = runs_root.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert run.history["step_seen"] == list(range(20_000))
    seen = [e for e in run.records if "alert_at" in e.data]
    # Every alert's record, but those whose callback ran once finish() had begun (its
    # log() raised InactiveRunError: counted as a callback error) — also one whose log()
    # was under way as the run ended (before: it could return and be lost, logged + 1).
    assert 0 < len(seen) <= 400 and logged == 20_000 + len(seen)
    assert len(seen) + errors == 400
    nan_steps = [e.step for e in run.records if "loss" in e.data and math.isnan(e.data["loss"])]
    assert [e.data["alert_at"] for e in seen] == nan_steps[: len(seen)]


REPR_LOGS = """
import sys, numpy, steplog
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), buffer_size=8, overflow="block", snapshot=False,
    durability=sys.argv[2],
)
class Chatty:  # encoded by the writer thread (snapshot=False keeps references)
    def __repr__(self):
        tracker.log({"from_repr": 1})
        return "chatty"
tracker.init()
for step in range(200):
    tracker.log({"value": Chatty()})
tracker.flush()  # every row encoded (its repr called) while the run is active
stats = tracker.finish()
print(stats.logged, stats.written, stats.dropped)
"""


@pytest.mark.parametrize("durability", ["thread", "process"])
def test_a_log_from_the_writer_thread_never_waits_for_room(runs_root, durability):
    """A log() made on the writer thread (here from a value's __repr__, which the
    writer calls while it encodes a batch) goes in over the limit instead of waiting
    for room only the writer itself can make — nor for the writer process's ring lock,
    which a producer waiting for room holds (before: a deadlock under 'block')."""
    pytest.importorskip("numpy")
    done = subprocess.run(
        [sys.executable, "-c", REPR_LOGS, str(runs_root), durability],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    logged, written, dropped = map(int, done.stdout.split())
    assert (logged, written, dropped) == (400, 400, 0)
    (path,) = runs_root.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert [e.data.get("value") for e in run.records].count("chatty") == 200
    assert sum(1 for e in run.records if "from_repr" in e.data) == 200


ALERT_BLOCKS = """
import math, sys, threading, time, steplog
from steplog import watch
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), watchers=[watch.nonfinite("loss")],
    on_alert=lambda alert: threading.Event().wait(),  # never returns
)
tracker.init()
for step in range(1_000):
    tracker.log({"loss": math.nan if step == 10 else 1.0})
started = time.monotonic()
stats = tracker.finish(timeout=1)
print(round(time.monotonic() - started, 2), stats.logged, stats.alerts, flush=True)
"""


def test_a_blocking_on_alert_cannot_stop_finish_timeout_from_holding(runs_root):
    """finish(timeout=1) returns within its deadline (plus the close grace) even when
    on_alert never returns, and the run end is written with every event (before:
    finish never returned and the run had no end)."""
    done = subprocess.run(
        [sys.executable, "-c", ALERT_BLOCKS, str(runs_root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    took, logged, alerts = done.stdout.split()
    assert float(took) < 3.0 and (logged, alerts) == ("1000", "1")
    assert "on_alert had not returned" in done.stderr
    (path,) = runs_root.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert run.status == "finished" and len(run.records) == 1_000


ALERT_FINISHES = """
import math, sys, steplog
from steplog import watch
tracker = None
def on_alert(alert):
    tracker.finish({"stopped_at": alert.step})  # an early stop on a NaN
tracker = steplog.Tracker(
    steplog.JsonlBackend(sys.argv[1]), watchers=[watch.nonfinite("loss")], on_alert=on_alert,
)
tracker.init()
for step in range(100):
    if tracker.active:
        tracker.log({"loss": math.nan if step == 10 else 1.0})
import time; time.sleep(1.0)
"""


def test_on_alert_may_finish_its_own_run_without_a_warning(runs_root):
    """An on_alert that ends the run (an early stop) ends it with its summary, and no
    spurious 'on_alert had not returned' warning (it was the one asking)."""
    done = subprocess.run(
        [sys.executable, "-c", ALERT_FINISHES, str(runs_root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "had not returned" not in done.stderr
    (path,) = runs_root.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert run.status == "finished" and run.summary == {"stopped_at": 10}


@pytest.mark.parametrize("path", ["host", "accelerator", "references"])
def test_values_that_are_no_plain_numbers_are_checked_as_the_file_has_them(
    runs_root, monkeypatch, path
):
    """Value watchers read tensors and numpy values as the run file records them, in
    logging order with the plain ones: CPU tensors and numpy scalars read on the spot,
    tensors the writer reads back (the accelerator path, exercised on CPU), and
    references kept with ``snapshot=False``; arrays (lists in the file) fire nothing."""
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    if path == "accelerator":
        cpu_tensors_as_device(monkeypatch)
    tracker, fired = tracker_with(
        runs_root,
        [watch.above("loss", 10.0, cooldown=0), watch.nonfinite("grad.norm", cooldown=0)],
        snapshot=path != "references",
    )
    t = torch.tensor
    values = [1.0, t(20.0), np.float32(3.0), t([50.0, 60.0]), 40.0, np.float64(2.0), t(99.0)]
    norms = [t(1.0), 2.0, t(float("nan")), 1.0, np.float32("inf"), 1.0, 1.0]
    for loss, norm in zip(values, norms, strict=True):
        tracker.log({"loss": loss, "grad": {"norm": norm}})
    tracker.finish()
    got = [(a.watcher, a.step) for a in fired]
    assert got == [("above", 1), ("nonfinite", 2), ("above", 4), ("nonfinite", 4), ("above", 6)]
    records = steplog.read_run(tracker.backends[0].path).records
    assert [r.step for r in records] == list(range(7))


@settings(max_examples=200, deadline=None)
@given(
    # (whole numbers: every sum is exact, so batch splits cannot change a rounding)
    values=st.lists(st.integers(1, 1_000).map(float), min_size=1, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    window=st.integers(1, 8),
    factor=st.floats(1.01, 4.0),
)
def test_diverging_fires_exactly_as_checked_one_value_at_a_time(values, cuts, window, factor):
    """However the values are split into batches, ``diverging`` fires at exactly the
    steps a plain one-value-at-a-time reading of its definition gives (the batch check
    takes a shortcut for quiet batches; it must never change an outcome)."""
    w = watch.diverging("x", factor=factor, window=window, cooldown=0)
    w.reset()
    steps = list(range(len(values)))
    fired = []
    bounds = sorted({0, len(values), *(c for c in cuts if c < len(values))})
    for start, end in itertools.pairwise(bounds):
        alerts = w.check_batch(steps[start:end], values[start:end], 0.0, 1.0)
        fired += [a.step for a in alerts]
    expected, best, active = [], math.inf, False
    for j in range(window - 1, len(values)):
        mean = sum(values[j - window + 1 : j + 1]) / window
        best = min(best, mean)
        if best > 0 and mean > factor * best:
            if not active:
                expected.append(j)
            active = True
        else:
            active = False
    assert fired == expected


@pytest.mark.parametrize(
    "nest",
    [
        collections.OrderedDict,
        lambda **kw: collections.defaultdict(int, kw),
        type("Metrics", (dict,), {}),
    ],
    ids=["OrderedDict", "defaultdict", "dict subclass"],
)
def test_a_dotted_key_reaches_into_dict_subclasses(runs_root, nest):
    """A watched "train.loss" is found inside a nested dict subclass, which the file
    stores as an object (before: only inside a plain dict, so no alert fired)."""
    tracker = steplog.Tracker(
        steplog.JsonlBackend(runs_root), watchers=[steplog.watch.nonfinite("train.loss")]
    )
    with tracker.run():
        tracker.log({"train": nest(loss=1.0)})
        tracker.log({"train": nest(loss=math.inf)})
    (path,) = runs_root.rglob("*.jsonl")
    run = steplog.read_run(path)
    assert [e.data["train"]["loss"] for e in run.records] == [1.0, math.inf]
    assert [(a.watcher, a.step) for a in run.alerts] == [("nonfinite", 1)]


_BATCH_VALUES = st.lists(
    st.one_of(
        st.sampled_from([0.5, 5.0, 20.0, math.nan, math.inf, -math.inf]),
        st.floats(-50, 50),
        st.integers(-30, 30),  # an int in the batch: the per-value path
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    values=_BATCH_VALUES,
    cuts=st.lists(st.integers(0, 60), max_size=6),
    kind=st.sampled_from(["nonfinite", "above", "below"]),
    cooldown=st.sampled_from([0.0, 1.5, 1e9]),
)
def test_a_batch_fires_counts_and_suppresses_as_one_value_at_a_time(values, cuts, kind, cooldown):
    """The batch check of nonfinite/above/below (outcomes at C speed, episodes run by
    run) gives the same alerts — steps, values, messages, suppressed counts — and the
    same hit and fire counts as checking the values one at a time, however the values
    are split into batches and wherever the cooldown ends."""

    def make() -> watch.Watcher:
        if kind == "nonfinite":
            return watch.nonfinite("x", cooldown=cooldown)
        return getattr(watch, kind)("x", 10.0, cooldown=cooldown)

    batched, single = make(), make()
    steps = list(range(len(values)))
    bounds = sorted({0, len(values), *(c for c in cuts if c < len(values))})
    got, expected = [], []
    for mono, (start, end) in enumerate(itertools.pairwise(bounds)):
        alerts = batched.check_batch(steps[start:end], values[start:end], 0.0, float(mono))
        got += [(a.step, a.value, a.message, a.suppressed) for a in alerts]
        for step in steps[start:end]:
            alert = single.check(step, values[step], 0.0, float(mono))
            if alert is not None:
                expected.append((alert.step, alert.value, alert.message, alert.suppressed))
    assert repr(got) == repr(expected)  # (repr: NaN values compare equal)
    assert (batched.hits, batched.fired) == (single.hits, single.fired)


def test_diverging_fills_its_window_from_batches_smaller_than_it():
    """A diverging() fed one value at a time, or in batches under half its window,
    keeps the last window - 1 values (it kept fewer, so no window ever filled and it
    never fired: found by a red-team trial, present since the watcher's start)."""
    values = [1.0] * 20 + [100.0] * 40
    for size in (1, 4, 60):
        w = watch.diverging("x", factor=2.0, window=10, cooldown=0)
        w.reset()
        fired = []
        for start in range(0, len(values), size):
            steps = list(range(start, min(start + size, len(values))))
            fired += [a.step for a in w.check_batch(steps, values[start : start + size], 0, 0)]
        assert fired == [20], size  # the first window holding a 100.0 (mean 10.9 > 2 x 1)


def test_diverging_takes_window_sums_beyond_float_range():
    """A window whose sum overflows (a loss exploding to huge finite values) is an
    infinite mean, not an exception (math.fsum raised "intermediate overflow")."""
    w = watch.diverging("x", factor=2.0, window=2, cooldown=0)
    w.reset()
    assert w.check_batch([0, 1], [1.0, 1.0], 0, 0) == []
    alerts = w.check_batch([2, 3], [1e308, 1e308], 0, 0)
    assert [a.step for a in alerts] == [2]


@pytest.mark.parametrize("kind", ["nonfinite", "above", "below", "diverging"])
def test_watchers_survive_values_the_writer_cannot_take_as_floats(runs_root, kind):
    """An int beyond float range under a watched key is ±infinity to the watchers (it
    ended the writer thread: the run was left incomplete and later events were lost);
    the run ends normally with every event."""
    made = {
        "nonfinite": lambda: watch.nonfinite("loss", cooldown=0),
        "above": lambda: watch.above("loss", 10.0, cooldown=0),
        "below": lambda: watch.below("loss", 0.0, cooldown=0),
        "diverging": lambda: watch.diverging("loss", window=2, cooldown=0),
    }[kind]
    tracker, fired = tracker_with(runs_root, [made()])
    for value in (1.5, 1.0, 2**1100, -(2**1100), 1.0, 0.5):
        tracker.log({"loss": value})
        tracker.flush(timeout=10)
    tracker.finish()
    run = steplog.read_run(tracker.backends[0].path)
    assert run.status == "finished"
    assert [r.step for r in run.records] == list(range(6))
    if kind in ("above", "below"):  # past the bound, as ±infinity
        assert fired, kind


def test_a_watcher_that_raises_is_logged_and_the_run_goes_on(runs_root, caplog):
    """A watcher's exception on a batch is a warning (once) and a count, not the end
    of the writer thread: later events are written and the run ends normally."""
    watcher = watch.above("loss", 10.0)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in a watcher")

    watcher.check_batch = broken  # type: ignore[method-assign]
    tracker, _ = tracker_with(runs_root, [watcher])
    with caplog.at_level(logging.WARNING, logger="steplog"):
        for i in range(5):
            tracker.log({"loss": float(i)})
            tracker.flush(timeout=10)
        tracker.finish()
    run = steplog.read_run(tracker.backends[0].path)
    assert run.status == "finished"
    assert [r.step for r in run.records] == list(range(5))
    assert sum("the watcher" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("keys", [["loss"], ["loss", "acc", "nested.x"]])
def test_values_logged_from_many_threads_reach_the_watchers_each_once_with_its_step(
    runs_root, log_impl, keys
):
    """Threads log watched floats (and numpy floats, and rows read back) at once, with
    thread switches forced every microsecond, while the writer swaps the queues after
    every small batch: every watcher gets each logged value exactly once, beside the
    step it was logged at, in each thread's order (the queue holds steps and values side
    by side; a swap between a step and its value would misalign them)."""
    np = pytest.importorskip("numpy")
    seen: dict[str, list[tuple[int, float]]] = {key: [] for key in keys}
    watchers = []
    for key in keys:
        watcher = watch.above(key, 0.0)
        check_batch = watcher.check_batch

        def spy(steps, values, now, mono, check_batch=check_batch, key=key):
            seen[key].extend(zip(steps, values, strict=True))
            return check_batch(steps, values, now, mono)

        watcher.check_batch = spy
        watchers.append(watcher)
    tracker, _ = tracker_with(runs_root, watchers, batch_size=16, overflow="block")
    per_thread, threads = 4_000, 4

    def work(thread: int) -> None:
        for i in range(per_thread):
            value = thread * 1e6 + i + 0.5  # a float no step equals
            if i % 97 == 0:
                value = np.float64(value)  # not a plain float: through capture()
            data = {"loss": value, "acc": value, "nested": {"x": value}, "thread": thread}
            if i % 89 == 0:
                data["t"] = np.arange(2)  # a value the fast path cannot encode
            tracker.log(data)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    stats = tracker.finish()
    assert stats.logged == stats.written == per_thread * threads
    run = steplog.read_run(tracker.backends[0].path)
    steps_of = {event.data["loss"]: event.step for event in run.records}  # as the file has it
    for key in keys:
        pairs = seen[key]
        assert all(type(s) is int and type(v) is float for s, v in pairs), key
        assert sorted(v for _, v in pairs) == sorted(steps_of), key  # each value once
        assert all(steps_of[v] == s for s, v in pairs), key  # beside its own step
        for thread in range(threads):
            mine = [v for _, v in pairs if int(v // 1e6) == thread]
            assert mine == sorted(mine), (key, thread)
    assert all(w.hits == per_thread * threads for w in watchers)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_window_given_as_an_int_subclass_counts_as_its_value(runs_root, compiled, monkeypatch):
    """diverging(window=...) given an IntEnum member (an int subclass) fires as with the
    plain int (the compiled check raised TypeError on every batch: the watcher never
    fired; a red-team trial)."""
    import enum

    class Config(enum.IntEnum):
        WINDOW = 5

    if not compiled:
        monkeypatch.setattr(watch, "_COMPILED", None)
    watcher = watch.diverging("loss", factor=2.0, window=Config.WINDOW)
    assert type(watcher.window) is int and watcher.window == 5
    tracker, fired = tracker_with(runs_root, [watcher])
    for i in range(20):
        tracker.log({"loss": 1.0 if i < 10 else 10.0})
    stats = tracker.finish()
    assert [a.step for a in fired] == [10] and stats.alerts == 1
