"""Bad input never crashes the worker: arbitrary values round-trip or are recorded as documented.

Property-based (hypothesis) over nested values: NaN/inf, ints beyond 64 bits, non-str
keys, bytes, sets, tuples, datetimes, enums, dataclasses, huge strings and lists.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steplog


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: Any
    y: Any


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=10),
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.sampled_from(Color),
    st.frozensets(st.integers(min_value=0, max_value=50), max_size=5),
)
KEYS = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(KEYS, children, max_size=4),
        st.dictionaries(st.integers(min_value=100, max_value=200), children, max_size=3),
        st.builds(Point, children, children),
    ),
    max_leaves=12,
)


def expected(value: Any) -> Any:
    """The documented JSONL representation of ``value`` (docs/schema.md), as read back."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return expected(value.value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        return repr(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return list(value)  # in the set's own iteration order
    if isinstance(value, (list, tuple)):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        return {str(k): expected(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {f.name: expected(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise AssertionError(f"no expectation for {type(value)}")


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN, and int/float kinds must match."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(
    max_examples=int(os.environ.get("STEPLOG_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(VALUES, min_size=1, max_size=10))
def test_arbitrary_values_round_trip_or_are_recorded_as_documented(tmp_path, values):
    """Any nested value: log() accepts it, the worker survives, the file reads as documented."""
    backend = steplog.JsonlBackend(tmp_path / "runs")
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(backend, mem)
    tracker.init()
    for value in values:
        tracker.log({"v": value})
    tracker.log({"after": True})  # the worker is still alive afterwards
    stats = tracker.finish()
    assert stats.backends["jsonl"].delivered == len(values) + 1
    run = steplog.read_run(backend.path)
    assert run.records[-1].data == {"after": True}
    for value, event in zip(values, run.records, strict=False):
        assert same(event.data["v"], expected(value)), (value, event.data["v"])


def test_very_deep_nesting_is_cut_with_a_marker(runs_root, caplog):
    """Nesting deeper than the encoder's limit is recorded with a marker, not a crash."""
    deep: Any = "bottom"
    for _ in range(500):
        deep = [deep]
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    with caplog.at_level(logging.WARNING, logger="steplog"):
        tracker.log({"deep": deep, "ok": 1})
        tracker.log({"after": 2})
        tracker.finish()
    run = steplog.read_run(backend.path)
    level, depth = run.records[0].data["deep"], 0
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level.startswith("<nesting deeper than")
    assert depth < 500
    assert run.records[0].data["ok"] == 1
    assert run.records[1].data == {"after": 2}


def test_huge_strings_and_lists_are_stored_whole(runs_root):
    """Large but sane values (a 5 MB string, a 200 000-item list) are written as they are."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init()
    tracker.log({"s": "x" * 5_000_000, "l": list(range(200_000))})
    tracker.finish()
    data = steplog.read_run(backend.path).records[0].data
    assert len(data["s"]) == 5_000_000
    assert data["l"][-1] == 199_999


@pytest.mark.parametrize("bad", [b"bytes", {1, 2}, 3 + 4j, object()])
def test_odd_values_reach_other_backends_as_the_run_file_stores_them(bad, runs_root):
    """Every backend gets an odd value as the run file records it (log() encodes once)."""
    jsonl = steplog.JsonlBackend(runs_root)
    mem = steplog.MemoryBackend()
    tracker = steplog.Tracker(jsonl, mem)
    tracker.init()
    tracker.log({"v": bad})
    tracker.finish()
    stored = steplog.read_run(jsonl.path).records[0].data["v"]
    assert mem.records[0].data["v"] == stored
    assert type(stored) in (str, list)
