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

    async def write(self, events):
        self.calls += 1
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
