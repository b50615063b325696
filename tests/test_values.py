"""How values are encoded to JSONL and decoded back."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import math

import orjson
import pytest

import steplog


def roundtrip(runs_root, *records, config=None):
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init(config)
    for record in records:
        tracker.log(record)
    tracker.finish()
    return steplog.read_run(backend.path)


def test_nan_and_infinities_survive_the_round_trip(runs_root):
    """NaN, +inf and -inf come back as themselves, not as null/None."""
    run = roundtrip(
        runs_root,
        {"loss": math.nan, "up": math.inf, "down": -math.inf, "ok": 1.5},
        {"nested": {"v": [1.0, math.nan, {"deep": -math.inf}]}},
        {"none": None},
    )
    first = run.records[0].data
    assert math.isnan(first["loss"])
    assert first["up"] == math.inf
    assert first["down"] == -math.inf
    assert first["ok"] == 1.5
    nested = run.records[1].data["nested"]["v"]
    assert nested[0] == 1.0 and math.isnan(nested[1]) and nested[2] == {"deep": -math.inf}
    assert run.records[2].data == {"none": None}  # a real None stays None


def test_non_finite_values_in_config_and_summary_survive(runs_root):
    """The encoding applies to the run-start and run-end records too."""
    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    tracker.init({"clip": math.inf})
    tracker.finish({"best_loss": math.nan})
    run = steplog.read_run(backend.path)
    assert run.config == {"clip": math.inf}
    assert math.isnan(run.summary["best_loss"])


def test_non_finite_encoding_is_the_documented_tag(runs_root):
    """On disk NaN is {"$float": "NaN"} (documented in docs/schema.md), never null."""
    run = roundtrip(runs_root, {"loss": math.nan, "x": math.inf, "y": -math.inf})
    line = run.path.read_text().splitlines()[1]
    assert '{"$float":"NaN"}' in line
    assert '{"$float":"Infinity"}' in line
    assert '{"$float":"-Infinity"}' in line
    assert "null" not in line


def test_numpy_scalars_and_arrays_serialize(runs_root):
    """numpy scalars become numbers, arrays nested lists; NaN inside arrays survives."""
    np = pytest.importorskip("numpy")
    run = roundtrip(
        runs_root,
        {
            "f32": np.float32(0.5),
            "f64": np.float64(0.25),
            "i64": np.int64(7),
            "b": np.bool_(True),
            "arr": np.arange(4, dtype=np.int32).reshape(2, 2),
            "farr": np.array([1.0, np.nan, np.inf]),
            "strided": np.arange(10.0)[::3],
        },
    )
    data = run.records[0].data
    assert data["f32"] == 0.5 and data["f64"] == 0.25 and data["i64"] == 7
    assert data["b"] is True
    assert data["arr"] == [[0, 1], [2, 3]]
    assert data["farr"][0] == 1.0 and math.isnan(data["farr"][1]) and data["farr"][2] == math.inf
    assert data["strided"] == [0.0, 3.0, 6.0, 9.0]


def test_nested_structures_serialize(runs_root):
    """Nested dicts, lists and tuples round-trip (tuples as lists)."""
    value = {"a": {"b": [1, 2, {"c": "d"}]}, "t": (1, "x"), "s": "text"}
    run = roundtrip(runs_root, value)
    assert run.records[0].data == {"a": {"b": [1, 2, {"c": "d"}]}, "t": [1, "x"], "s": "text"}


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def test_unknown_type_is_recorded_as_repr_with_one_warning_per_type(runs_root, caplog):
    """A value orjson cannot encode is stored as repr(), reported once per type."""
    with caplog.at_level(logging.WARNING, logger="steplog"):
        run = roundtrip(runs_root, *({"o": Opaque(), "i": i} for i in range(50)))
    assert [e.data["o"] for e in run.records] == ["<Opaque thing>"] * 50
    assert [e.data["i"] for e in run.records] == list(range(50))
    assert orjson.loads(run.path.read_bytes().splitlines()[-1])["encoding_fallbacks"] == 50
    reports = [r for r in caplog.records if "Opaque" in r.getMessage()]
    assert len(reports) == 1
    assert "repr" in reports[0].getMessage()


def test_huge_integers_round_trip(runs_root):
    """Integers beyond 64 bits (which orjson rejects) round-trip exactly."""
    big = 2**100 + 1
    run = roundtrip(runs_root, {"big": big, "neg": -(2**70), "ok": 2**63})
    assert run.records[0].data == {"big": big, "neg": -(2**70), "ok": 2**63}


def test_non_string_keys_are_stringified_with_a_warning(runs_root, caplog):
    """Non-str keys are recorded with str(key) and reported; the rest of the event is kept."""
    with caplog.at_level(logging.WARNING, logger="steplog"):
        run = roundtrip(runs_root, {"per_class": {0: 0.5, 1: 0.25}, "loss": 1.0})
    assert run.records[0].data == {"per_class": {"0": 0.5, "1": 0.25}, "loss": 1.0}
    assert any("not strings" in r.getMessage() for r in caplog.records)


def test_sets_datetimes_enums_and_dataclasses(runs_root):
    """Sets become lists; datetime, enum and dataclass use orjson's native encodings."""

    class Color(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Point:
        x: float
        y: float

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    run = roundtrip(runs_root, {"s": {3}, "when": when, "c": Color.RED, "p": Point(1.0, math.nan)})
    data = run.records[0].data
    assert data["s"] == [3]
    assert data["when"] == "2026-01-02T03:04:05+00:00"
    assert data["c"] == "red"
    assert data["p"]["x"] == 1.0 and math.isnan(data["p"]["y"])


def test_self_referencing_container_does_not_crash_the_worker(runs_root, caplog):
    """A list containing itself is recorded with a marker; later events still arrive."""
    loop = [1]
    loop.append(loop)
    with caplog.at_level(logging.WARNING, logger="steplog"):
        run = roundtrip(runs_root, {"loop": loop}, {"after": 1})
    assert run.records[0].data == {"loop": [1, "<circular reference>"]}
    assert run.records[1].data == {"after": 1}


def test_string_that_looks_like_null_is_untouched(runs_root):
    """Strings containing 'null' are stored verbatim (the NaN scan has no false positives)."""
    run = roundtrip(runs_root, {"s": "null", "t": "nullable", "n": None})
    assert run.records[0].data == {"s": "null", "t": "nullable", "n": None}


def test_events_over_the_size_cap_are_recorded_as_a_marker_with_a_warning(runs_root, caplog):
    """An absurdly large event becomes {"$too_large": {...}} (keys, size); others are kept."""
    backend = steplog.JsonlBackend(runs_root, max_event_bytes=2048)
    tracker = steplog.Tracker(backend)
    tracker.init()
    with caplog.at_level(logging.WARNING, logger="steplog"):
        tracker.log({"ok": 1})
        tracker.log({"blob": "x" * 10_000, "loss": 0.5})
        tracker.log({"blob": "y" * 10_000})
        tracker.log({"ok": 2})
        tracker.finish()
    run = steplog.read_run(backend.path)
    data = [e.data for e in run.records]
    assert data[0] == {"ok": 1}
    assert data[1] == {
        "$too_large": {"bytes": data[1]["$too_large"]["bytes"], "keys": ["blob", "loss"]}
    }
    assert data[1]["$too_large"]["bytes"] > 10_000
    assert data[2]["$too_large"]["keys"] == ["blob"]
    assert data[3] == {"ok": 2}
    assert len([r for r in caplog.records if "max_event_bytes" in r.getMessage()]) == 1


def test_colliding_non_string_keys_never_lose_a_value(runs_root, caplog):
    """{1: "a", "1": "b"}: the string key keeps its name, the int key gets its type."""
    with caplog.at_level(logging.WARNING, logger="steplog"):
        run = roundtrip(
            runs_root, {"m": {1: "a", "1": "b", 2: "c"}}, config={"ids": {1: "x", "1": "y"}}
        )
    assert run.records[0].data == {"m": {"1 (int)": "a", "1": "b", "2": "c"}}
    assert run.config == {"ids": {"1 (int)": "x", "1": "y"}}
    assert "same str() as another key" in caplog.text


def test_paths_are_stored_as_their_string(runs_root, caplog):
    """pathlib paths in config, summary and steps are their path, not their repr."""
    import pathlib

    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend)
    with caplog.at_level(logging.WARNING, logger="steplog"):
        tracker.init({"data_dir": pathlib.Path("/data/set"), "files": [pathlib.PurePath("a/b")]})
        tracker.log({"ckpt": pathlib.Path("ckpt/3.pt")})
        tracker.finish({"best": pathlib.Path("ckpt/best.pt")})
    run = steplog.read_run(backend.path)
    assert run.config == {"data_dir": "/data/set", "files": ["a/b"]}
    assert run.records[0].data == {"ckpt": "ckpt/3.pt"}
    assert run.summary == {"best": "ckpt/best.pt"}
    assert "repr" not in caplog.text


def test_namespace_and_dataclass_configs_are_accepted(runs_root):
    """argparse.Namespace and dataclass instances are configs (their fields), for init()
    and experiment_config alike; anything else is a TypeError naming what is accepted."""
    import argparse

    @dataclasses.dataclass
    class Train:
        lr: float = 0.1
        steps: int = 10

    backend = steplog.JsonlBackend(runs_root)
    tracker = steplog.Tracker(backend, experiment_config=Train())
    tracker.init(argparse.Namespace(steps=5, optimizer="gcg"))
    tracker.finish()
    assert steplog.read_run(backend.path).config == {"lr": 0.1, "steps": 5, "optimizer": "gcg"}
    with pytest.raises(TypeError, match=r"argparse\.Namespace, a dataclass instance"):
        tracker.init([("lr", 0.1)])
