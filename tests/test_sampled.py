"""Sampled: a thinned or reduced stream for one backend, every step for the others."""

from __future__ import annotations

import math

import pytest

import steplog
from steplog import Event


def run_with(sampled: steplog.Sampled, events: list[dict], step_time: float = 0.0):
    memory = steplog.MemoryBackend()
    tracker = steplog.Tracker(memory, sampled, experiment_name="s")
    tracker.init()
    for i, data in enumerate(events):
        tracker.log(data, step=i)
    stats = tracker.finish()
    return memory, stats


def test_every_n_thins_like_step_modulo_n_while_jsonl_keeps_everything(tmp_path):
    inner = steplog.MemoryBackend()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(jsonl, steplog.Sampled(inner, every=100), experiment_name="s")
    tracker.init()
    for i in range(10_050):
        tracker.log({"loss": float(i)})
    stats = tracker.finish()
    assert [e.step for e in inner.records] == list(range(0, 10_050, 100))
    assert [e.data["loss"] for e in inner.records] == [float(s) for s in range(0, 10_050, 100)]
    assert len(steplog.read_run(jsonl.path).records) == 10_050
    assert stats.backends["memory"].delivered == 10_050  # every event was handed to it


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [("mean", 4.5), ("min", 0.0), ("max", 9.0), ("last", 9.0)],
)
def test_windowed_reductions_over_every_n(reduce, expected):
    inner = steplog.MemoryBackend()
    run_with(
        steplog.Sampled(inner, every=10, reduce=reduce), [{"x": float(i % 10)} for i in range(35)]
    )
    points = inner.records
    assert [e.step for e in points] == [9, 19, 29, 34]  # last window sent at close
    assert [e.data["x"] for e in points[:3]] == [expected] * 3
    tail = [float(i % 10) for i in range(30, 35)]
    final = {"mean": sum(tail) / 5, "min": 0.0, "max": 4.0, "last": 4.0}[reduce]
    assert points[3].data["x"] == final


def test_reduction_keeps_strings_last_and_propagates_nan():
    sampled = steplog.Sampled(steplog.MemoryBackend(), every=3, reduce="max")
    out = sampled.sample(
        [
            Event(0, 0.0, {"x": 1.0, "s": "a", "ok": True}),
            Event(1, 0.1, {"x": math.nan, "s": "b"}),
            Event(2, 0.2, {"x": 3.0, "only_here": 7}),
        ]
    )
    assert len(out) == 1
    point = out[0]
    assert point.step == 2 and point.time == 0.2
    assert math.isnan(point.data["x"])
    assert point.data["s"] == "b" and point.data["ok"] is True and point.data["only_here"] == 7


def test_interval_windows_use_logging_time():
    sampled = steplog.Sampled(steplog.MemoryBackend(), interval=1.0)
    events = [Event(i, 100.0 + i * 0.25, {"x": i}) for i in range(20)]  # 4 events a second
    thinned = sampled.sample(events[:7]) + sampled.sample(events[7:])
    assert [e.step for e in thinned] == [0, 4, 8, 12, 16]
    mean = steplog.Sampled(steplog.MemoryBackend(), interval=1.0, reduce="mean")
    points = mean.sample(events)
    assert [(e.step, e.data["x"]) for e in points] == [(3, 1.5), (7, 5.5), (11, 9.5), (15, 13.5)]


def test_at_most_ten_points_a_second_from_a_fast_loop(tmp_path):
    """The documented example: every step to JSONL, ≤ 10 points/s to the slow backend."""
    import time

    inner = steplog.MemoryBackend()
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(
        jsonl, steplog.Sampled(inner, interval=0.1, reduce="mean"), experiment_name="s"
    )
    tracker.init()
    start = time.time()
    i = 0
    while time.time() - start < 1.0:
        tracker.log({"loss": float(i)})
        i += 1
    tracker.finish()
    records = steplog.read_run(jsonl.path).records
    assert len(records) == i > 10_000
    points = inner.records
    # At most ~10 points a second; at least one per 0.2 s that saw events. (Under "block"
    # a loop that outruns the sampled backend is paced, leaving gaps in the logging
    # times: a window only closes on an event, so a gap yields one point, not several.)
    # Both bounds come from the logging times, never from the machine's speed.
    slots = len({int((e.time - records[0].time) / 0.1) for e in records})
    span = records[-1].time - records[0].time
    assert slots // 2 <= len(points) <= span / 0.1 + 2
    # Each point is the mean over the steps since the previous point: together the
    # windows cover every step once.
    start = 0
    for point in points:
        window = [e.data["loss"] for e in records[start : point.step + 1]]
        assert point.data["loss"] == pytest.approx(sum(window) / len(window))
        assert records[point.step].time - records[start].time < 0.1  # a 0.1 s window
        start = point.step + 1
    assert start == len(records)


def test_bad_arguments_fail_at_construction():
    memory = steplog.MemoryBackend()
    with pytest.raises(ValueError, match="exactly one"):
        steplog.Sampled(memory)
    with pytest.raises(ValueError, match="exactly one"):
        steplog.Sampled(memory, every=2, interval=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        steplog.Sampled(memory, every=0)
    with pytest.raises(TypeError, match="int"):
        steplog.Sampled(memory, every=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        steplog.Sampled(memory, interval=-1)
    with pytest.raises(ValueError, match="reduce must be"):
        steplog.Sampled(memory, every=2, reduce="median")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Backend"):
        steplog.Sampled(object(), every=2)  # type: ignore[arg-type]
    assert steplog.Sampled(memory, every=2).name == "memory"


class _FailsOnce(steplog.MemoryBackend):
    """A memory backend whose first write fails (a transient error: retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.attempts: list[list[Event]] = []  # what each write was given, failed or not

    async def write(self, events):
        self.calls += 1
        self.attempts.append(list(events))
        if self.calls == 1:
            raise ConnectionError("transient")
        await super().write(events)


@pytest.mark.parametrize("every", [3, 1])
def test_a_retried_batch_is_sampled_once(every):
    """The worker retries a failed write with the same batch: Sampled sends the same
    points again instead of sampling the batch twice (issue #14: it delivered (1,
    1.333) instead of (2, 1.0) and counted 8 events received for 4)."""
    inner = _FailsOnce()
    sampled = steplog.Sampled(inner, every=every, reduce="mean")
    tracker = steplog.Tracker(
        sampled, retry=steplog.RetryPolicy(backoff=0.001), batch_size=100, experiment_name="s"
    )
    tracker.init()
    for i in range(4):
        tracker.log({"x": float(i)}, step=i)
    stats = tracker.finish()
    assert inner.calls >= 2  # it did fail once and was retried
    points = [(e.step, e.data["x"]) for e in inner.records]
    if every == 3:
        assert points == [(2, 1.0), (3, 3.0)]
    else:
        assert points == [(i, float(i)) for i in range(4)]
    assert sampled.received == 4
    assert stats.backends["_failsonce"].delivered == 4


@pytest.mark.parametrize("every", [3, 1])
def test_a_retried_batch_with_extremes_resends_the_same_points(every):
    """With extremes=True a retry still resends the very points of the failed write —
    the same min, max and count — and the windows are not sampled twice."""
    inner = _FailsOnce()
    sampled = steplog.Sampled(inner, every=every, reduce="mean", extremes=True)
    tracker = steplog.Tracker(
        sampled, retry=steplog.RetryPolicy(backoff=0.001), batch_size=100, experiment_name="s"
    )
    tracker.init()
    for i in range(4):
        tracker.log({"x": float(i)}, step=i)
    stats = tracker.finish()
    assert inner.calls >= 2
    assert inner.attempts[1] == inner.attempts[0]  # the retry sent what failed, unchanged
    points = [
        (e.step, e.data["x"], e.data["x/min"], e.data["x/max"], e.data["sampled/count"])
        for e in inner.records
    ]
    if every == 3:
        # The first event is a window of its own; then one window of 3.
        assert points == [(0, 0.0, 0.0, 0.0, 1), (3, 2.0, 1.0, 3.0, 3)]
    else:
        assert points == [(i, float(i), float(i), float(i), 1) for i in range(4)]
    assert sampled.received == 4
    assert stats.backends["_failsonce"].delivered == 4


def _loss_run(sampled: steplog.Sampled, n: int, spikes: dict[int, float], batch_size=64):
    """A run of ``n`` steps of loss 1.0, with ``spikes`` (step → value) in it."""
    tracker = steplog.Tracker(sampled, batch_size=batch_size, experiment_name="s")
    tracker.init()
    for step in range(n):
        tracker.log({"loss": spikes.get(step, 1.0)})
    tracker.finish()


def test_extremes_keep_a_spike_that_a_window_mean_hides():
    """A 1e6 spike at one step of a 1000-step mean window shows as that window's
    loss/max (and a -1e6 dip as loss/min), while the mean only moves by ~1e3."""
    inner = steplog.MemoryBackend()
    _loss_run(
        steplog.Sampled(inner, every=1000, reduce="mean", extremes=True),
        3000,
        {1500: 1e6, 2600: -1e6},
    )
    points = {e.step: e.data for e in inner.records}
    assert list(points) == [0, 1000, 2000, 2999]  # first event, windows of 1000, last
    assert points[2000]["loss/max"] == 1e6  # the window (1000, 2000] held the spike
    assert points[2000]["loss/min"] == 1.0
    assert points[2000]["loss"] == pytest.approx((999 + 1e6) / 1000)
    assert points[2999]["loss/min"] == -1e6  # the final, partial window held the dip
    assert points[2999]["loss/max"] == 1.0
    assert points[1000]["loss/min"] == points[1000]["loss/max"] == 1.0


@pytest.mark.parametrize("reduce", steplog.backends.sampled.REDUCTIONS)
@pytest.mark.parametrize(("every", "interval"), [(7, None), (None, 0.0005)])
def test_window_counts_add_up_to_the_events_of_the_run(reduce, every, interval):
    """sampled/count of the points sums to the number of events logged, whatever the
    reduction, window rule and batching; each point's count is its window's size."""
    inner = steplog.MemoryBackend()
    sampled = steplog.Sampled(inner, every=every, interval=interval, reduce=reduce, extremes=True)
    _loss_run(sampled, 1000, {}, batch_size=13)
    counts = [e.data["sampled/count"] for e in inner.records]
    assert sum(counts) == 1000 == sampled.received
    assert counts[0] == 1  # the first event, as logged
    if every is not None:
        assert counts[1:-1] == [7] * (len(counts) - 2)
        assert counts[-1] == ((1000 - 1) % 7 or 7)


def test_the_first_point_is_the_first_event_as_logged():
    """With extremes (or endpoints=True) the run's first event goes through as logged,
    at its own step, instead of disappearing into the first window's mean; extremes
    only add their keys to it."""
    first = {"loss": 9.5, "acc": 3, "phase": "warmup", "opt": {"lr": 0.1}, "ok": True}
    later = {"loss": 1.0, "acc": 1, "phase": "train", "opt": {"lr": 0.01}, "ok": False}
    inner = steplog.MemoryBackend()
    run_with(steplog.Sampled(inner, every=10, reduce="mean", extremes=True), [first] + [later] * 20)
    point = inner.records[0]
    assert point.step == 0
    assert {k: point.data[k] for k in first} == first
    assert point.data["loss/min"] == point.data["loss/max"] == 9.5
    assert point.data["acc/min"] == point.data["acc/max"] == 3
    assert point.data["sampled/count"] == 1
    assert inner.records[1].data["loss"] == 1.0  # the next window does not include it

    plain = steplog.MemoryBackend()
    run_with(
        steplog.Sampled(plain, every=10, reduce="mean", endpoints=True), [first] + [later] * 20
    )
    assert plain.records[0].step == 0 and plain.records[0].data == first
    assert [e.step for e in plain.records] == [0, 10, 20]


@pytest.mark.parametrize("n", [1, 2, 10, 11, 35, 10_001, 10_050])
@pytest.mark.parametrize("reduce", [None, "mean"])
def test_the_last_point_is_at_the_last_step(n, reduce):
    """With endpoints, the chart ends at the run's last step, once: a reduced stream
    sends its open window at close, a thinned one its last event unless it already went
    through (thinning alone stops at the last multiple of every)."""
    inner = steplog.MemoryBackend()
    run_with(
        steplog.Sampled(inner, every=10, reduce=reduce, endpoints=True),
        [{"x": float(i)} for i in range(n)],
    )
    steps = [e.step for e in inner.records]
    assert steps[0] == 0 and steps[-1] == n - 1
    assert steps == sorted(set(steps))  # no step twice
    if reduce is None:
        assert steps == sorted({*range(0, n, 10), n - 1})
        assert inner.records[-1].data == {"x": float(n - 1)}  # the event as logged
    else:
        assert steps == sorted({0, *range(10, n, 10), n - 1})


def test_nan_in_a_window_propagates_to_its_min_and_max():
    """A NaN in a window makes that window's min and max NaN (as the min/max reductions
    do), so a diverged step is not hidden; the other windows are not affected."""
    inner = steplog.MemoryBackend()
    _loss_run(
        steplog.Sampled(inner, every=10, reduce="mean", extremes=True, endpoints=False),
        30,
        {15: math.nan},
    )
    points = {e.step: e.data for e in inner.records}
    assert list(points) == [9, 19, 29]
    assert math.isnan(points[19]["loss/min"]) and math.isnan(points[19]["loss/max"])
    assert math.isnan(points[19]["loss"])
    for step in (9, 29):
        assert points[step]["loss/min"] == points[step]["loss/max"] == 1.0


def test_only_numeric_keys_get_min_and_max():
    """Strings, bools, None, lists and nested mappings are not reduced, so they get no
    min/max (nor does a key whose last value in the window is not a number); ints get
    int extremes; keys logged in only part of the window count the events having them."""
    inner = steplog.MemoryBackend()
    events = [
        {"n": 3, "s": "a", "b": True, "none": None, "l": [1, 2], "m": {"a": 1.0}, "mix": 1.0},
        {"n": -2, "s": "b", "b": False, "none": None, "l": [3], "m": {"a": 2.0}, "mix": "x"},
        {"n": 7, "sometimes": 4.0},
    ]
    run_with(steplog.Sampled(inner, every=3, reduce="mean", extremes=True, endpoints=False), events)
    (point,) = inner.records
    derived = {k for k in point.data if k.endswith(("/min", "/max"))}
    assert derived == {"n/min", "n/max", "sometimes/min", "sometimes/max"}
    assert point.data["n/min"] == -2 and point.data["n/max"] == 7
    assert point.data["sometimes/min"] == point.data["sometimes/max"] == 4.0
    assert point.data["sampled/count"] == 3
    assert point.data["m"] == {"a": 2.0} and point.data["mix"] == "x"  # last seen, as before


def test_extremes_never_overwrite_keys_the_run_logs():
    """A run that logs loss/max or sampled/count itself keeps its own values."""
    inner = steplog.MemoryBackend()
    events = [{"loss": float(i), "loss/max": -1.0, "sampled/count": 42} for i in range(4)]
    run_with(steplog.Sampled(inner, every=4, reduce="last", extremes=True, endpoints=False), events)
    (point,) = inner.records
    assert point.data["loss"] == 3.0 and point.data["loss/min"] == 0.0
    assert point.data["loss/max"] == -1.0 and point.data["sampled/count"] == 42


def test_extremes_without_endpoints_keep_the_windows_of_today():
    """endpoints=False: the same windows as without extremes ([9, 19, 29, 34]), only
    with their min, max and count."""
    inner = steplog.MemoryBackend()
    run_with(
        steplog.Sampled(inner, every=10, reduce="mean", extremes=True, endpoints=False),
        [{"x": float(i % 10)} for i in range(35)],
    )
    points = [
        (e.step, e.data["x/min"], e.data["x/max"], e.data["sampled/count"]) for e in inner.records
    ]
    assert points == [(9, 0.0, 9.0, 10), (19, 0.0, 9.0, 10), (29, 0.0, 9.0, 10), (34, 0.0, 4.0, 5)]


def test_extremes_need_a_reduction_and_flags_are_bools():
    """Thinning sends single events, which have no window min/max: extremes=True without
    reduce= is refused at construction, with a message naming the fix."""
    memory = steplog.MemoryBackend()
    with pytest.raises(ValueError, match="extremes=True needs a reduction"):
        steplog.Sampled(memory, every=10, extremes=True)
    with pytest.raises(TypeError, match="extremes must be a bool"):
        steplog.Sampled(memory, every=10, reduce="mean", extremes="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="endpoints must be"):
        steplog.Sampled(memory, every=10, endpoints=1)  # type: ignore[arg-type]
    sampled = steplog.Sampled(memory, every=10, reduce="mean", extremes=True)
    assert sampled.endpoints is True
    assert repr(sampled).endswith("reduce='mean', extremes=True)")


class _RefusesStep(steplog.MemoryBackend):
    """A memory backend that refuses every write holding a point at ``step``."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    async def write(self, events):
        if any(event.step == self.step for event in events):
            raise steplog.PermanentBackendError("refused")
        await super().write(events)


def test_the_inner_backend_is_closed_when_the_last_write_fails():
    """The open window's point, written at close, can fail: the inner backend is closed
    all the same (it was left open, its status never set)."""
    inner = _RefusesStep(34)
    run_with(steplog.Sampled(inner, every=10, reduce="mean"), [{"x": 1.0}] * 35)
    assert [e.step for e in inner.records] == [9, 19, 29]
    assert inner.status == "finished"


# -- determinism: what a lane re-reading the run file relies on -------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _records(times: list[float], boundaries: set[int]) -> list[tuple[str, Event | None, int, int]]:
    """A run file's records: step events, with a segment boundary (a resume record)
    before each index in ``boundaries``; each with its byte range."""
    out, offset = [], 0
    for i, t in enumerate(times):
        if i in boundaries:
            out.append(("boundary", None, offset, offset + 7))
            offset += 7
        size = 10 + i % 3
        out.append(("step", Event(i, t, {"x": float(i % 5), "s": str(i)}), offset, offset + size))
        offset += size
    return out


def _one_pass(sampled: steplog.Sampled, records) -> list[Event]:
    sampler = sampled.sampler()
    points: list[Event] = []
    for kind, event, start, end in records:
        pairs = sampler.add(event, start, end) if kind == "step" else sampler.end_segment(end)
        points += [p for p, _ in pairs]
    points += [p for p, _ in sampler.end_segment(records[-1][3])]
    return points


def _with_crashes(sampled: steplog.Sampled, records, acks: list[int]) -> list[Event]:
    """Read with crashes: after every ``acks[k]`` records the points sent so far are
    acknowledged only in part (``acks[k] % 3``: none, half, all), the reader crashes
    and starts again from the checkpoint of the last acknowledged point."""
    delivered: list[Event] = []
    offset, state = 0, None
    position = 0  # index of the record at ``offset``
    for budget in [*acks, len(records) * 2]:
        sampler = sampled.sampler(state)
        sampler.start(offset)
        sent: list[tuple[Event, tuple]] = []
        index = position
        while index < len(records) and index - position < budget:
            kind, event, start, end = records[index]
            sent += sampler.add(event, start, end) if kind == "step" else sampler.end_segment(end)
            index += 1
        done = index == len(records)
        if done:
            sent += sampler.end_segment(records[-1][3])
        acked = len(sent) if done else (len(sent) * (budget % 3)) // 2
        delivered += [p for p, _ in sent[:acked]]
        if done:
            return delivered
        if acked == len(sent):
            checkpoint = sampler.safe
        elif acked:
            checkpoint = sent[acked - 1][1]
        else:
            continue  # nothing acknowledged: the cursor stays
        offset, _, state = checkpoint
        position = (
            next(i for i, r in enumerate(records) if r[2] == offset)
            if offset < (records[-1][3])
            else len(records)
        )
    return delivered


def _rule(key: str, value: object, reduce: str | None, extremes: bool, endpoints: bool):
    return {key: value, "reduce": reduce, "extremes": extremes and reduce is not None,
            "endpoints": endpoints}  # fmt: skip


rules = st.one_of(
    st.builds(_rule, st.just("every"), st.integers(1, 6),
              st.sampled_from([None, "mean", "last", "max"]), st.booleans(), st.booleans()),
    st.builds(_rule, st.just("interval"), st.sampled_from([0.5, 1.0, 2.5]),
              st.sampled_from([None, "mean", "min", "last"]), st.booleans(), st.booleans()),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    rule=rules,
    steps=st.lists(st.floats(-0.3, 1.5), min_size=1, max_size=60),
    boundaries=st.sets(st.integers(1, 59), max_size=4),
    acks=st.lists(st.integers(1, 12), max_size=8),
)
def test_a_reader_resuming_from_any_checkpoint_sends_the_same_points(rule, steps, boundaries, acks):
    """The windows depend on the events only: a reader that crashes at any moment and
    starts again from the checkpoint of the last point the backend acknowledged
    delivers exactly the points one pass gives — none twice, none missing, no window
    merged — and their counts add up to the events (extremes)."""
    times, now = [], 100.0
    for delta in steps:  # mostly forward in time, sometimes back (threads, clock steps)
        now += delta
        times.append(now)
    sampled = steplog.Sampled(steplog.MemoryBackend(), **rule)
    records = _records(times, boundaries)
    expected = _one_pass(sampled, records)
    assert _with_crashes(sampled, records, acks) == expected
    if sampled.extremes:
        assert sum(p.data["sampled/count"] for p in expected) == len(times)


def test_interval_windows_are_fixed_buckets_and_never_span_segments():
    """interval=1 windows are the seconds of logging time [k, k+1): the same whatever
    the first event's time; a segment boundary (a resumed process) ends the window."""
    sampled = steplog.Sampled(steplog.MemoryBackend(), interval=1.0, reduce="mean",
                              extremes=True, endpoints=False)  # fmt: skip
    times = [10.2, 10.5, 10.9, 11.1, 11.4, 11.6, 12.3]
    records = _records(times, {5})  # events 5 and 6 in a new segment
    points = _one_pass(sampled, records)
    assert [(p.step, p.data["sampled/count"]) for p in points] == [(2, 3), (4, 2), (5, 1), (6, 1)]
