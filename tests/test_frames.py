"""Runs as DataFrames: ``Run.to_numpy/to_pandas/to_polars`` and ``steplog.scan``.

Real run files written by the real Tracker, checked value by value against
``read_run``; hand-written files for torn and corrupt lines, record types that are not
steps, mixed types and the value tags.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pytest

import steplog
from steplog.runfile.schema import flatten

BIG = 2**70  # beyond int64: stored as a {"$int": ...} tag


def write_run(root: Path, experiment: str, config: dict[str, Any], steps: int) -> Path:
    """A run of the real tracker: floats, ints, a sparse string, a nested key, NaN/inf."""
    backend = steplog.JsonlBackend(root)
    tracker = steplog.Tracker(backend, experiment_name=experiment)
    tracker.init(config)
    for step in range(steps):
        data: dict[str, Any] = {"loss": 1.0 / (step + 1), "count": step * 3}
        if step % 7 == 0:
            data["note"] = f"at {step}"
        if step % 5 == 0:
            data["eval"] = {"acc": step / steps, "n": step}
        if step == 11:
            data["loss"] = math.nan
        if step == 12:
            data["loss"] = math.inf
        tracker.log(data)
    tracker.finish({"best": 0.0})
    assert backend.path is not None
    return backend.path


def write_lines(path: Path, records: list[Any], *, tail: bytes = b"") -> Path:
    """A hand-written run file: a run-start line, ``records`` (bytes as they are) and
    ``tail`` (e.g. a torn line)."""
    start = {
        "type": "run_start",
        "schema": 1,
        "run_id": path.stem,
        "experiment": "hand",
        "start_time": 1.0,
        "config": {"lr": 0.5},
    }
    lines = [orjson.dumps(start)]
    for record in records:
        lines.append(record if isinstance(record, bytes) else orjson.dumps(record))
    path.write_bytes(b"\n".join(lines) + b"\n" + tail)
    return path


def step(number: int, /, **data: Any) -> dict[str, Any]:
    """A step record of a hand-written file."""
    return {"step": number, "time": 100.0 + number, "data": data}


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN, and of the same type (1 is not 1.0 nor True)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def expected_columns(run: steplog.Run) -> dict[str, list[Any]]:
    """Per flattened key, its value in every record (None where absent), from read_run."""
    flat = [flatten(e.data) for e in run.records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return {k: [f.get(k) for f in flat] for k in keys}


def test_to_numpy_pandas_polars_match_read_run_value_by_value(tmp_path):
    """Every value of a real run comes out of the three frames as read_run has it: NaN
    and inf survive, missing values are NaN (numpy, pandas) or null (polars), nested
    keys are dotted, ints stay int64 where no step lacks them."""
    run = steplog.read_run(write_run(tmp_path, "exp", {"lr": 0.1}, 300))
    expected = expected_columns(run)
    assert list(expected) == ["loss", "count", "note", "eval.acc", "eval.n"]

    arrays = run.to_numpy()
    frame = run.to_pandas()
    polars = run.to_polars()
    assert list(arrays) == ["step", "time", *expected]
    assert list(frame.columns) == list(polars.columns) == list(arrays)
    assert arrays["step"].tolist() == [e.step for e in run.records]
    assert arrays["time"].tolist() == [e.time for e in run.records]
    assert arrays["count"].dtype == np.int64 and polars["count"].dtype == pl.Int64
    assert arrays["loss"].dtype == np.float64
    # eval.n is an int missing in 4 of 5 steps: float64 NaN in numpy/pandas, Int64 nulls in polars
    assert arrays["eval.n"].dtype == np.float64 and polars["eval.n"].dtype == pl.Int64
    for key, values in expected.items():
        got_numpy = arrays[key].tolist()
        got_pandas = frame[key].tolist()
        got_polars = polars[key].to_list()
        for i, value in enumerate(values):
            if value is None:
                assert got_polars[i] is None, (key, i)
                assert got_numpy[i] is None or math.isnan(got_numpy[i]), (key, i)
                assert got_pandas[i] is None or math.isnan(got_pandas[i]), (key, i)
                continue
            want = float(value) if key == "eval.n" else value  # float64 in numpy/pandas
            assert same(got_numpy[i], want), (key, i, got_numpy[i], want)
            assert same(got_pandas[i], want), (key, i, got_pandas[i], want)
            assert same(got_polars[i], value), (key, i, got_polars[i], value)
    assert math.isnan(arrays["loss"][11]) and arrays["loss"][12] == math.inf
    assert polars["loss"][11] is not None and math.isnan(polars["loss"][11])  # NaN, not null


def test_keys_keep_only_the_columns_asked_for(tmp_path):
    """keys= keeps step, time and the keys asked for, in that order; a single string is
    one key; a nested key is asked for by its dotted name."""
    run = steplog.read_run(write_run(tmp_path, "exp", {}, 50))
    assert list(run.to_pandas(keys=["eval.acc", "loss"]).columns) == [
        "step",
        "time",
        "eval.acc",
        "loss",
    ]
    assert list(run.to_numpy("count")) == ["step", "time", "count"]
    assert run.to_polars(["eval.n"])["eval.n"].to_list()[:6] == [0, None, None, None, None, 5]


def test_a_key_no_step_has_raises_key_error_naming_it(tmp_path):
    """Asking for a key that no step record holds (a typo) raises KeyError naming it,
    rather than returning a column of NaN."""
    path = write_run(tmp_path, "exp", {}, 20)
    with pytest.raises(KeyError, match="'lsos'"):
        steplog.read_run(path).to_pandas(keys=["loss", "lsos"])
    with pytest.raises(KeyError, match="'lsos'"):
        steplog.scan(path, keys=["lsos"])


def test_scan_one_frame_across_runs_with_their_config_columns(tmp_path):
    """scan over a glob: one row per step of every run, in path order, with run_id,
    experiment, status and the flattened config of each run; a key or config entry a
    run lacks is missing there."""
    a = write_run(tmp_path, "gcg", {"lr": 0.1, "model": {"name": "gpt2"}}, 30)
    b_backend = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(b_backend, experiment_name="gcg")
    tracker.init({"lr": 0.2, "seed": 3})
    for i in range(10):
        tracker.log({"loss": float(i), "extra": i})
    tracker.finish()
    b = b_backend.path
    assert b is not None
    paths = sorted([a, b])

    frame = steplog.scan(str(tmp_path / "gcg" / "*"), keys=["loss", "extra"])
    assert list(frame.columns) == [
        "run_id",
        "experiment",
        "status",
        "config.lr",
        "config.model.name",
        "config.seed",
        "step",
        "time",
        "loss",
        "extra",
    ]
    runs = [steplog.read_run(p) for p in paths]
    assert len(frame) == sum(len(r.records) for r in runs)
    offset = 0
    for run in runs:
        rows = frame.iloc[offset : offset + len(run.records)]
        offset += len(run.records)
        assert set(rows["run_id"]) == {run.run_id}
        assert set(rows["status"]) == {"finished"}
        assert set(rows["config.lr"]) == {run.config["lr"]}
        assert rows["step"].tolist() == [e.step for e in run.records]
        loss = [e.data["loss"] for e in run.records]
        assert all(same(x, y) for x, y in zip(rows["loss"].tolist(), loss, strict=True))
        if "seed" in run.config:
            assert rows["extra"].tolist() == [float(e.data["extra"]) for e in run.records]
            assert rows["config.model.name"].isna().all()
        else:
            assert rows["extra"].isna().all()
            assert set(rows["config.model.name"]) == {"gpt2"}
    assert frame["run_id"].dtype == "category"

    polars = steplog.scan(paths, keys="loss", backend="polars")
    assert polars.columns[-3:] == ["step", "time", "loss"]
    assert polars["config.seed"].null_count() == len(runs[paths.index(a)].records)
    arrays = steplog.scan(tmp_path, keys=["loss"], backend="numpy")
    assert arrays["run_id"].tolist() == frame["run_id"].astype(str).tolist()
    assert np.array_equal(arrays["loss"], frame["loss"].to_numpy(), equal_nan=True)


def test_hand_written_file_torn_corrupt_and_other_record_types(tmp_path):
    """A torn last line is left out silently; a corrupt line is skipped with one
    RunFileWarning naming its number; records with a type (resume, system, alert,
    run_end) are never steps, even when they carry step-like fields."""
    path = write_lines(
        tmp_path / "r.jsonl",
        [
            step(0, loss=1.0),
            {"type": "system", "step": 1, "time": 1.0, "data": {"loss": 99.0}},
            b'{"step": 1, "time": 101.0, "data": {"loss": ',  # corrupt: line 4
            step(1, loss=0.5),
            {"type": "resume", "step": 0},
            {"type": "alert", "data": {"loss": -1.0}},
            step(2, loss=0.25),
            {"type": "run_end", "status": "finished", "summary": {}, "stats": {}},
        ],
        tail=b'{"step": 3, "time": 103.0, "da',
    )
    with pytest.warns(steplog.RunFileWarning, match=r"r\.jsonl: skipped 1 corrupt line \(line 4\)"):
        frame = steplog.scan(path)
    assert frame["step"].tolist() == [0, 1, 2]
    assert frame["loss"].tolist() == [1.0, 0.5, 0.25]
    assert set(frame["status"]) == {"finished"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the torn line alone
        path.write_bytes(
            path.read_bytes().replace(b'{"step": 1, "time": 101.0, "data": {"loss": \n', b"")
        )
        assert steplog.scan(path, backend="numpy")["step"].tolist() == [0, 1, 2]


def test_mixed_types_come_out_exact_never_silently_converted(tmp_path):
    """Ints and floats make a float column; a string, a bool or a list among numbers
    makes an object column holding each value as logged; ints beyond int64 (tagged or
    not) stay exact Python ints; the $float tags come back as NaN and ±inf."""
    records = [
        step(0, mix=1, text=1.5, flag=True, big=1, tag={"$float": "NaN"}, mixbig=0.5),
        step(1, mix=2.5, text="two", flag=0, big={"$int": str(BIG)}, tag=1.0, mixbig=2**53 + 1),
        b'{"step":2,"time":102.0,"data":{"mix":3,"big":18446744073709551615,'
        b'"tag":{"$float":"-Infinity"}}}',
        step(3, tag={"$float": "Infinity"}, flag=None),
    ]
    path = write_lines(tmp_path / "m.jsonl", records)
    run = steplog.read_run(path)
    for arrays in (run.to_numpy(), steplog.scan(path, backend="numpy")):
        assert arrays["mix"].dtype == np.float64
        assert arrays["mix"][:3].tolist() == [1.0, 2.5, 3.0]
        assert arrays["text"].dtype == object
        assert arrays["text"].tolist() == [1.5, "two", None, None]
        assert arrays["flag"].tolist() == [True, 0, None, None]
        assert [type(v) for v in arrays["flag"][:2]] == [bool, int]
        assert arrays["big"].tolist() == [1, BIG, 2**64 - 1, None]
        tag = arrays["tag"].tolist()
        assert math.isnan(tag[0]) and tag[1:] == [1.0, -math.inf, math.inf]
        # 2**53 + 1 has no float64: the column keeps the int rather than round it
        assert arrays["mixbig"].tolist() == [0.5, 2**53 + 1, None, None]
    polars = run.to_polars()
    assert polars["text"].dtype == pl.Object and polars["text"].to_list()[1] == "two"
    assert polars["big"].to_list()[1] == BIG


def test_int_columns_with_gaps_and_reserved_names(tmp_path):
    """An int column with missing steps: float64 NaN in pandas when exact, Int64 with
    nulls in polars; a data key named like a frame column comes out as data.<key>."""
    path = write_lines(
        tmp_path / "g.jsonl",
        [step(0, n=1, step=7), step(1, other=2.0), step(2, n=3, status="ok", time=5.0)],
    )
    frame = steplog.scan(path)
    assert frame["n"].tolist()[::2] == [1.0, 3.0] and math.isnan(frame["n"][1])
    assert frame["data.step"].tolist()[0] == 7.0
    assert frame["data.status"].tolist()[2] == "ok"
    assert frame["data.time"].tolist()[2] == 5.0
    assert frame["status"].tolist() == ["incomplete"] * 3  # no run-end record
    polars = steplog.read_run(path).to_polars()
    assert polars["n"].dtype == pl.Int64 and polars["n"].to_list() == [1, None, 3]
    assert "data.step" in polars.columns and "step" in polars.columns


def test_scan_bad_arguments_raise_at_the_call(tmp_path):
    """No match, a missing file, a file that is no run, a bad backend or bad keys each
    raise a clear error from scan()."""
    with pytest.raises(steplog.RunNotFoundError, match="no run files match"):
        steplog.scan(str(tmp_path / "nothing" / "*"))
    with pytest.raises(steplog.RunNotFoundError, match="no run file or directory"):
        steplog.scan(tmp_path / "missing.jsonl")
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(steplog.RunFileError, match="not a steplog run"):
        steplog.scan(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="backend must be one of"):
        steplog.scan(tmp_path, backend="arrow")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be"):
        steplog.scan(tmp_path, keys=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="duplicates"):
        steplog.read_run(write_run(tmp_path / "r", "e", {}, 3)).to_numpy(["loss", "loss"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        ("pandas", "steplog.scan(PATH)", "pandas"),
        ("polars", "steplog.scan(PATH, backend='polars')", "polars"),
        ("polars", "steplog.read_run(PATH).to_polars()", "polars"),
        ("numpy", "steplog.read_run(PATH).to_numpy()", "numpy"),
        ("pandas", "steplog.read_run(PATH).to_pandas()", "pandas"),
    ],
)
def test_missing_library_names_the_extra(tmp_path, blocked, call, extra):
    """Without the library a frame needs, the call raises MissingExtraError naming
    ``steplog[<extra>]`` (the library blocked in a fresh interpreter)."""
    path = write_lines(tmp_path / "e.jsonl", [step(0, loss=1.0)])
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import steplog\n"
        f"PATH = {str(path)!r}\n"
        "try:\n"
        f"    {call}\n"
        "except steplog.MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"steplog[{extra}]" in out.stdout, out.stdout


def test_frames_of_an_empty_run_have_the_fixed_columns(tmp_path):
    """A run with no step yet gives empty frames with step and time columns."""
    path = write_lines(tmp_path / "z.jsonl", [])
    frame = steplog.scan(path)
    assert list(frame.columns)[-2:] == ["step", "time"] and len(frame) == 0
    assert steplog.read_run(path).to_polars().columns == ["step", "time"]
    assert isinstance(steplog.read_run(path).to_pandas(), pd.DataFrame)


def test_types_merge_the_same_across_blocks_of_a_long_run(tmp_path):
    """A key whose type changes after the first block of 65 536 records (ints, then
    floats; floats, then an int beyond 2**53; a key that appears late) gets the column
    type the whole run calls for, with every earlier value kept."""
    run = steplog.read_run(write_lines(tmp_path / "b.jsonl", []))
    n = 70_000
    events = []
    for i in range(n):
        data: dict[str, Any] = {"a": i if i < 66_000 else i + 0.5, "b": 0.25}
        if i == n - 1:
            data["b"] = 2**53 + 1
        if i >= 69_000:
            data["late"] = i
        events.append(steplog.Event(i, float(i), data))
    arrays = dataclasses.replace(run, records=events).to_numpy()
    assert arrays["a"].dtype == np.float64
    assert arrays["a"][65_999] == 65_999.0 and arrays["a"][66_000] == 66_000.5
    assert arrays["b"].dtype == object and arrays["b"][-1] == 2**53 + 1
    assert arrays["b"][:3].tolist() == [0.25] * 3
    assert np.isnan(arrays["late"][:69_000]).all()
    assert arrays["late"][69_000:].tolist() == [float(i) for i in range(69_000, n)]


def test_readers_leave_the_garbage_collector_as_they_found_it(tmp_path):
    """scan and read_run pause the garbage collector while they read, and turn it back
    on afterwards, also when the file is refused; one that was off stays off."""
    import gc

    tracker = steplog.Tracker(steplog.JsonlBackend(tmp_path), experiment_name="gc")
    tracker.init()
    tracker.log({"loss": 1.0})
    tracker.finish()
    path = tracker.backends[0].path
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(path.read_bytes().replace(b'{"step":0', b'{"step":0,,', 1))
    assert gc.isenabled()
    steplog.read_run(path)
    steplog.scan(path, backend="numpy")
    with pytest.raises(steplog.RunFileError):
        steplog.read_run(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        steplog.read_run(path)
        assert not gc.isenabled()
    finally:
        gc.enable()
