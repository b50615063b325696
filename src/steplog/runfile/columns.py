"""Run files as columns: the reader behind ``Run.to_pandas()`` / ``to_polars()`` /
``to_numpy()`` and :func:`steplog.scan`.

It reads the step records of a :class:`~steplog.runfile.snapshot.RunSnapshot` a block of
lines at a time (:func:`~steplog.runfile.snapshot.iter_line_blocks`, the parser's snapshot
rules: a torn last line is left out) and keeps only the keys asked for, each in one
compact typed buffer (``array.array`` of float64, int64 or int8, plus a validity mask
once a value is missing), never a Python object per value unless the values are
strings or of mixed types. Per block, the work runs in C-level loops: orjson per line,
then one comprehension per kept key.

Rules, written down once (docs/dataframes.md repeats them for users):

* Records with a ``type`` (the run start and end, and record types this version does
  not know) are never steps. A corrupt line is skipped and counted in
  ``snapshot.corrupt`` (the streaming readers' rule); :func:`scan` warns about them.
* Nested mappings become dotted keys (``{"a": {"b": 1}}`` → ``a.b``), as in
  :func:`~steplog.runfile.schema.flatten`; a data key named like one of the frame's own
  columns (``step``, ``time``, and in :func:`scan` ``run_id``, ``experiment``,
  ``status``) comes out as ``data.<key>``.
* A key's column type: float64 if its values are floats (ints exactly representable
  as float64 may be among them), int64 if they are all ints within int64, bool if all
  bools, str if all strings, and else Python objects holding each value as it was
  logged (a bool among numbers, a string among numbers, ints beyond int64 — never a
  silently converted value). A value that is missing (the key not logged in that
  step, or logged as ``None``) is NaN in numpy and pandas float columns, null in
  polars; an int or bool column with missing values becomes float64 (NaN) or object
  (``None``) in numpy and pandas (float64 only when every int is exact in float64),
  and stays Int64/Boolean with nulls in polars.
"""

from __future__ import annotations

import array
import glob
import itertools
import math
import operator
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from .._extras import require
from ..errors import RunFileError, RunFileWarning, RunNotFoundError
from .codec import decode
from .find import find_runs
from .header import read_header
from .records import step_records
from .schema import SCHEMA_VERSION
from .snapshot import RunSnapshot, gc_paused, iter_line_blocks, open_run, run_config

if TYPE_CHECKING:
    from ..events import Event

__all__ = [
    "ColumnFrame",
    "FrameBackend",
    "frame_of_events",
    "key_list",
    "numpy_columns",
    "scan",
    "to_pandas",
    "to_polars",
]

#: What :func:`scan` returns: a pandas or polars DataFrame, or a dict of numpy arrays.
FrameBackend = Literal["pandas", "polars", "numpy"]
_BACKENDS = ("pandas", "polars", "numpy")
#: Lines parsed at once: the records of a few thousand lines live together, so the
#: allocator reuses their memory instead of taking fresh pages (page faults cost ~4 µs
#: each on our VMs; 4 MiB blocks at once faulted ~150 000 times on 2 M steps, this ~80 000).
_PARSE_LINES = 4096
#: Events of an in-memory :class:`Run` handed to the column builders at once.
_EVENT_BLOCK = 65_536
#: Ints beyond this magnitude are not exact as float64: such a column stays ints or
#: becomes objects, never rounded floats.
_EXACT = 2**53
_TAG = b'"$'
_EMPTY: dict[str, Any] = {}
_NONE = type(None)
_RUN_COLUMNS = ("run_id", "experiment", "status")
_STEP, _TIME, _DATA = (operator.itemgetter(k) for k in ("step", "time", "data"))


class _Column:
    """One column as it grows: a kind and a compact buffer.

    Kinds: ``"empty"`` (every row so far is missing), ``"float"`` (``array('d')``),
    ``"int"`` (``array('q')``), ``"bool"`` (``array('b')``), ``"str"`` and
    ``"object"`` (a list, ``None`` where missing). ``valid`` is ``None`` while no row
    of a typed column is missing, then one byte per row.
    """

    __slots__ = ("kind", "size", "valid", "values")

    def __init__(self) -> None:
        self.kind = "empty"
        self.size = 0
        self.values: Any = None
        self.valid: bytearray | None = None

    def add_missing(self, count: int) -> None:
        """Append ``count`` missing rows."""
        if self.kind == "empty":
            self.size += count
        elif count:
            self._append([None] * count, missing=True)

    def add(self, values: list[Any]) -> None:
        """Append one block of values (``None``: missing)."""
        types = set(map(type, values))
        missing = _NONE in types
        types.discard(_NONE)
        if not types:
            if self.kind == "empty":
                self.size += len(values)
                return
            self._append(values, missing=True)
            return
        kind = _kind_of(types, values)
        if self.kind != kind:
            target = _merge(self, kind, values)
            if target != self.kind:  # e.g. not for ints joining a float column
                self._convert(target)
        self._append(values, missing=missing)

    def _append(self, values: list[Any], *, missing: bool) -> None:
        kind, count = self.kind, len(values)
        if kind in ("str", "object"):
            self.values.extend(values)
            self.size += count
            return
        fill: Any = math.nan if kind == "float" else 0
        try:
            self.values.fromlist([fill if v is None else v for v in values] if missing else values)
        except OverflowError:  # an int beyond int64 (fromlist leaves the array unchanged)
            self._convert("object")
            self._append(values, missing=missing)
            return
        if missing:
            if self.valid is None:
                self.valid = bytearray(b"\x01") * self.size
            self.valid += bytes([v is not None for v in values])
        elif self.valid is not None:
            self.valid += b"\x01" * count
        self.size += count

    def _convert(self, kind: str) -> None:
        old = self.kind
        if old == "empty":
            if kind in ("str", "object"):
                self.values = [None] * self.size
            else:
                code = {"float": "d", "int": "q", "bool": "b"}[kind]
                fill = math.nan if kind == "float" else 0
                self.values = array.array(code, [fill]) * self.size
                self.valid = bytearray(self.size) if self.size else None
        elif kind == "float":  # from int, every value checked exact by _merge
            self.values = array.array("d", self.values)
        elif kind == "object":
            self.values = self.objects()
            self.valid = None
        self.kind = kind

    def objects(self) -> list[Any]:
        """The values as Python objects, ``None`` where missing."""
        if self.kind in ("str", "object"):
            return list(self.values)
        if self.kind == "empty":
            return [None] * self.size
        values = self.values.tolist()
        if self.kind == "bool":
            values = [bool(v) for v in values]
        if self.valid is None:
            return values  # type: ignore[no-any-return]
        return [v if ok else None for v, ok in zip(values, self.valid, strict=True)]


def _kind_of(types: set[type], values: list[Any]) -> str:
    if len(types) == 1:
        tp = next(iter(types))
        if tp is float:
            return "float"
        if tp is int:
            return "int"
        if tp is bool:
            return "bool"
        if tp is str:
            return "str"
        return "object"
    if types == {int, float} and _exact(values):
        return "float"
    return "object"


def _exact(values: Iterable[Any]) -> bool:
    """Whether every int among ``values`` is exact as a float64."""
    return all(-_EXACT <= v <= _EXACT for v in values if type(v) is int)


def _merge(column: _Column, kind: str, values: list[Any]) -> str:
    """The kind of ``column`` once a block of ``kind`` values joins it."""
    old = column.kind
    if old in ("empty", kind):
        return kind
    if {old, kind} == {"int", "float"}:
        if old == "int":
            ints = column.values
            exact = not column.size or (min(ints) >= -_EXACT and max(ints) <= _EXACT)
        else:
            exact = _exact(values)
        return "float" if exact else "object"
    return "object"


def _lookup(datas: list[dict[str, Any]], key: str) -> list[Any]:
    """The values of the dotted ``key`` in each of ``datas`` (``None`` where absent).

    A literal key wins over a nested path; non-empty mappings are not values (their
    keys are columns of their own), as in :func:`~steplog.runfile.schema.flatten`.
    """
    try:  # the common case, a key every record has, in a C loop
        values = list(map(operator.itemgetter(key), datas))
    except KeyError:
        values = [d.get(key) for d in datas]
    if dict in set(map(type, values)):
        values = [None if type(v) is dict and v else v for v in values]
    dot = key.find(".")
    while dot > 0:
        heads = [d.get(key[:dot]) for d in datas]
        if dict in set(map(type, heads)):
            inner = [v if type(v) is dict else _EMPTY for v in heads]
            deeper = _lookup(inner, key[dot + 1 :])
            values = [d if v is None else v for v, d in zip(values, deeper, strict=True)]
        dot = key.find(".", dot + 1)
    return values


def _flat_columns(datas: list[dict[str, Any]], prefix: str, out: dict[str, list[Any]]) -> None:
    """Every dotted key of ``datas`` with its values, added to ``out`` (first-seen order)."""
    for key in dict.fromkeys(itertools.chain.from_iterable(datas)):
        values = [d.get(key) for d in datas]
        name = f"{prefix}{key}"
        if dict in set(map(type, values)):
            nested = [v if type(v) is dict else _EMPTY for v in values]
            if any(nested):
                _flat_columns(nested, f"{name}.", out)
                values = [None if type(v) is dict and v else v for v in values]
                if not set(map(type, values)) - {_NONE}:
                    continue
        if name in out:  # a literal "a.b" beside a nested {"a": {"b": …}}: fill its gaps
            values = [v if v is not None else o for v, o in zip(values, out[name], strict=True)]
        out[name] = values


class ColumnFrame:
    """Step records as columns: ``step``, ``time`` and one column per kept key.

    Fed a block of records at a time (:meth:`add`), from one or more runs; for
    :func:`scan`, ``run_rows`` counts the rows of each run in turn.
    """

    def __init__(self, keys: Sequence[str] | None, reserved: Sequence[str]) -> None:
        self.keys = list(keys) if keys is not None else None
        self.reserved = {"step", "time", *reserved}
        self.step = array.array("q")
        self.time = array.array("d")
        self.columns: dict[str, _Column] = {}
        if self.keys is not None:
            self.columns = {self._name(k): _Column() for k in self.keys}
        self.rows = 0
        self.run_rows: list[int] = []  # rows per run, in order

    def _name(self, key: str) -> str:
        return f"data.{key}" if key in self.reserved else key

    def add(self, steps: list[int], times: list[float], datas: list[dict[str, Any]]) -> None:
        """Append one block of step records (their steps, times and data)."""
        count = len(datas)
        if not count:
            return
        self.step.fromlist(steps)
        self.time.fromlist(times)
        if self.keys is not None:
            found = {self._name(k): _lookup(datas, k) for k in self.keys}
        else:
            flat: dict[str, list[Any]] = {}
            _flat_columns(datas, "", flat)
            found = {self._name(k): v for k, v in flat.items()}
        for name, values in found.items():
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = _Column()
                column.add_missing(self.rows)
            column.add(values)
        for name, column in self.columns.items():
            if name not in found:
                column.add_missing(count)
        self.rows += count
        if self.run_rows:
            self.run_rows[-1] += count

    def add_snapshot(self, snapshot: RunSnapshot) -> None:
        """Append the step records of ``snapshot`` (corrupt lines: ``snapshot.corrupt``)."""
        number = 2
        with gc_paused():
            for block in iter_line_blocks(snapshot):
                for start in range(0, len(block), _PARSE_LINES):
                    lines = block[start : start + _PARSE_LINES]
                    self.add(*_parse_block(lines, number, snapshot.corrupt))
                    number += len(lines)

    def check_keys(self, where: str) -> None:
        """Raise ``KeyError`` for a key asked for that no step record holds."""
        if self.keys is None:
            return
        absent = [k for k in self.keys if self.columns[self._name(k)].kind == "empty"]
        if absent:
            names = ", ".join(repr(k) for k in absent)
            raise KeyError(f"no step record of {where} has a value for {names}")


def _parse_block(
    lines: list[bytes], first: int, corrupt: set[int]
) -> tuple[list[int], list[float], list[dict[str, Any]]]:
    """The steps, times and data of the step records among ``lines`` (line ``first``
    onwards); the numbers of corrupt lines go into ``corrupt``."""
    loads = orjson.loads
    try:
        records = list(map(loads, lines))
    except orjson.JSONDecodeError:
        records = None  # a corrupt or blank line: the careful loop below
    if records is not None and set(map(type, records)) == {dict}:
        if _TAG in b"\n".join(lines):  # one search per block; tagged values are rare
            records = [
                decode(r) if _TAG in line else r for r, line in zip(records, lines, strict=True)
            ]
        kept = [r for r in records if "type" not in r]
        try:
            steps = list(map(_STEP, kept))
            times = list(map(_TIME, kept))
            datas = list(map(_DATA, kept))
        except KeyError:
            pass
        else:
            if (
                set(map(type, steps)) <= {int}
                and set(map(type, times)) <= {float, int}
                and set(map(type, datas)) <= {dict}
            ):
                return steps, times, datas
    kept = list(step_records(lines, first, corrupt))  # a corrupt line among them
    return [r["step"] for r in kept], [r["time"] for r in kept], [r["data"] for r in kept]


def frame_of_events(events: Sequence[Event], keys: Sequence[str] | None) -> ColumnFrame:
    """The columns of a run already read into memory (``Run.to_pandas()`` and co)."""
    frame = ColumnFrame(keys, ())
    for start in range(0, len(events), _EVENT_BLOCK):
        block = events[start : start + _EVENT_BLOCK]
        frame.add([e.step for e in block], [e.time for e in block], [e.data for e in block])
    frame.check_keys("the run")
    return frame


# -- output ----------------------------------------------------------------------------


def key_list(keys: str | Sequence[str] | None) -> list[str] | None:
    """``keys`` as a list (a single string is one key), or ``ValueError``/``TypeError``."""
    if keys is None:
        return None
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, Sequence):
        raise TypeError(f"keys must be a list of key names or None, not {type(keys).__name__}")
    for key in keys:
        if not isinstance(key, str) or not key:
            raise TypeError(f"keys must be non-empty strings, got {key!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys has duplicates: {list(keys)!r}")
    return list(keys)


def _numpy(column: _Column, np: Any) -> Any:
    """``column`` as a numpy array (NaN or ``None`` where missing; see the module doc)."""
    kind, size = column.kind, column.size
    if kind == "empty":
        return np.full(size, np.nan)
    if kind == "float":
        return np.frombuffer(column.values, dtype=np.float64)
    if kind == "int":
        ints = np.frombuffer(column.values, dtype=np.int64)
        if column.valid is None:
            return ints
        mask = np.frombuffer(column.valid, dtype=np.bool_)
        kept = ints[mask]
        if not kept.size or (kept.min() >= -_EXACT and kept.max() <= _EXACT):
            floats = ints.astype(np.float64)
            floats[~mask] = np.nan
            return floats
    elif kind == "bool" and column.valid is None:
        return np.frombuffer(column.values, dtype=np.int8).view(np.bool_)
    return np.fromiter(column.objects(), dtype=object, count=size)


def _polars(name: str, column: _Column, pl: Any, np: Any) -> Any:
    """``column`` as a polars Series (null where missing)."""
    kind = column.kind
    if kind == "empty":
        return pl.repeat(None, column.size, dtype=pl.Float64, eager=True).alias(name)
    if kind == "str":
        return pl.Series(name, column.values, dtype=pl.String)
    if kind == "object":
        return pl.Series(name, np.fromiter(column.values, object, column.size), dtype=pl.Object)
    dtype = {"float": np.float64, "int": np.int64, "bool": np.int8}[kind]
    series = pl.Series(name, np.frombuffer(column.values, dtype=dtype))
    if kind == "bool":
        series = series.cast(pl.Boolean)
    if column.valid is not None:
        mask = pl.Series(np.frombuffer(column.valid, dtype=np.bool_))
        series = pl.select(pl.when(mask).then(series).otherwise(None)).to_series().alias(name)
    return series


def numpy_columns(frame: ColumnFrame) -> dict[str, Any]:
    """``step``, ``time`` and the data columns of ``frame`` as numpy arrays."""
    np = require("numpy", "numpy", "Run.to_numpy()")
    out: dict[str, Any] = {
        "step": np.frombuffer(frame.step, dtype=np.int64),
        "time": np.frombuffer(frame.time, dtype=np.float64),
    }
    for name, column in frame.columns.items():
        out[name] = _numpy(column, np)
    return out


def to_pandas(frame: ColumnFrame, runs: _Runs | None = None) -> Any:
    """``frame`` as a pandas DataFrame (run columns first when ``runs`` is given)."""
    pd = require("pandas", "pandas", "Run.to_pandas() and steplog.scan()")
    data: dict[str, Any] = {}
    if runs is not None:
        data.update(runs.pandas(pd))
    data.update(numpy_columns(frame))
    return pd.DataFrame(data, copy=False)


def to_polars(frame: ColumnFrame, runs: _Runs | None = None) -> Any:
    """``frame`` as a polars DataFrame (run columns first when ``runs`` is given)."""
    pl = require("polars", "polars", "Run.to_polars() and steplog.scan(backend='polars')")
    np = require("numpy", "polars", "Run.to_polars() and steplog.scan(backend='polars')")
    series: list[Any] = []
    if runs is not None:
        series.extend(runs.polars(pl, np))
    series.append(pl.Series("step", np.frombuffer(frame.step, dtype=np.int64)))
    series.append(pl.Series("time", np.frombuffer(frame.time, dtype=np.float64)))
    series.extend(_polars(name, column, pl, np) for name, column in frame.columns.items())
    return pl.DataFrame(series)


# -- scan ------------------------------------------------------------------------------


class _Runs:
    """Per-run columns of :func:`scan`: ``run_id``, ``experiment``, ``status`` and the
    flattened config (``config.<key>``), one value per run, spread over its rows."""

    def __init__(self, headers: list[dict[str, Any]], rows: list[int]) -> None:
        self.rows = rows
        flat: dict[str, list[Any]] = {}
        _flat_columns([{k: h[k] for k in _RUN_COLUMNS} for h in headers], "", flat)
        configs = [h["config"] for h in headers]
        config: dict[str, list[Any]] = {}
        _flat_columns([c if isinstance(c, dict) else {} for c in configs], "config.", config)
        self.columns: dict[str, _Column] = {}
        for name, values in {**flat, **config}.items():
            column = self.columns[name] = _Column()
            column.add(values)

    def _codes(self, np: Any) -> Any:
        return np.repeat(np.arange(len(self.rows)), self.rows)

    def numpy(self, np: Any) -> dict[str, Any]:
        codes = self._codes(np)
        return {name: _numpy(c, np)[codes] for name, c in self.columns.items()}

    def pandas(self, pd: Any) -> dict[str, Any]:
        np = require("numpy", "pandas", "steplog.scan()")
        codes = self._codes(np)
        out: dict[str, Any] = {}
        for name, column in self.columns.items():
            if column.kind == "str":  # one category per run at most, codes per row
                categorical = pd.Categorical(column.values)
                out[name] = pd.Categorical.from_codes(
                    categorical.codes[codes], categories=categorical.categories
                )
            else:
                out[name] = _numpy(column, np)[codes]
        return out

    def polars(self, pl: Any, np: Any) -> list[Any]:
        codes = pl.Series(self._codes(np))
        out = []
        for name, column in self.columns.items():
            series = _polars(name, column, pl, np)
            if column.kind == "str":  # a category per run: 4 bytes a row, not a string
                series = series.cast(pl.Categorical)
            out.append(series.gather(codes))
        return out


def _run_paths(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The run files named by ``source``: files, directories (every ``*.jsonl`` under
    them) and glob patterns (matching files ending in ``.jsonl`` and directories)."""
    if isinstance(source, (str, os.PathLike)):
        items: list[Any] = [source]
    elif isinstance(source, Iterable) and not isinstance(source, bytes):
        items = list(source)
    else:
        raise TypeError(f"scan() takes a path, a glob pattern or a list of them, not {source!r}")
    paths: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"scan() takes paths or glob patterns, not {item!r}")
        text = os.fspath(item)
        if not isinstance(text, str):
            raise TypeError(f"scan() takes str paths, not {item!r}")
        if isinstance(item, str) and any(c in text for c in "*?["):
            found: list[Path] = []
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
                path = Path(match)
                if path.is_dir():
                    found.extend(find_runs(path))
                elif path.suffix == ".jsonl":
                    found.append(path)
            if not found:
                raise RunNotFoundError(f"no run files match {text!r}")
            paths.extend(found)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            runs = find_runs(path)
            if not runs:
                raise RunNotFoundError(f"no run files under {text!r}")
            paths.extend(runs)
        elif path.is_file():
            paths.append(path)
        else:
            raise RunNotFoundError(f"no run file or directory {text!r}")
    if not paths:
        raise RunNotFoundError("scan() was given no paths")
    return list(dict.fromkeys(paths))


def _warn_corrupt(path: Path, numbers: set[int]) -> None:
    listed = sorted(numbers)
    shown = ", ".join(str(n) for n in listed[:10])
    if len(listed) > 10:
        shown += f" and {len(listed) - 10:,} more"
    which = "line" if len(listed) == 1 else "lines"
    warnings.warn(
        f"{path}: skipped {len(listed):,} corrupt {which} ({which} {shown})",
        RunFileWarning,
        stacklevel=3,
    )


def scan(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    keys: str | Sequence[str] | None = None,
    backend: FrameBackend = "pandas",
) -> Any:
    """Read the steps of one or many runs into one frame, reading only ``keys``.

    One row per step record, in file order, runs in path order. The columns:
    ``run_id``, ``experiment``, ``status`` (as :func:`steplog.read_run` or ``steplog ls``
    reports it), the run's config flattened (``config.lr``, ``config.model.name``),
    then ``step``, ``time`` and the keys (nested keys dotted: ``eval.acc``). A key a
    run did not log is missing there (NaN in pandas and numpy, null in polars).

    Memory grows with the rows and the columns kept, not with the file: each key is
    held as one typed buffer while reading (2 M steps × 3 keys: see
    docs/benchmarks.md). A corrupt line is skipped with a :class:`steplog.RunFileWarning`
    naming its file and number; a torn last line (a writer killed mid-line, or still
    writing) is left out silently.

    Args:
        source: A run file, a directory (every ``*.jsonl`` under it), a glob pattern
            (``"runs/gcg/*"``, ``"runs/**/*.jsonl"``), or a list of these.
        keys: The data keys to read (a single string is one key); ``None`` reads
            every key. A key that no run holds raises ``KeyError``.
        backend: ``"pandas"`` (a ``pandas.DataFrame``; ``run_id``, ``experiment``,
            ``status`` and string config columns are categoricals), ``"polars"``
            (a ``polars.DataFrame``; those columns are ``pl.Categorical``) or
            ``"numpy"`` (a ``dict`` of column name → ``numpy.ndarray``).

    Returns:
        The frame of every step record of every run.

    Raises:
        RunNotFoundError: A path does not exist, or a pattern matches no run file.
        RunFileError: A file is not a steplog run, or of a newer schema.
        MissingExtraError: The backend's library is not installed
            (``pip install "steplog[pandas]"``, ``[polars]``, ``[numpy]``).
        KeyError: A key of ``keys`` is in no step record of any of the runs.
    """
    wanted = key_list(keys)
    if backend not in _BACKENDS:
        choices = ", ".join(map(repr, _BACKENDS))
        raise ValueError(f"backend must be one of {choices}, not {backend!r}")
    # Before reading anything: a missing library is reported at once, not after minutes.
    if backend == "polars":
        require("polars", "polars", "steplog.scan(backend='polars')")
    require("numpy", backend, f"steplog.scan(backend={backend!r})")
    if backend == "pandas":
        require("pandas", "pandas", "steplog.scan()")
    paths = _run_paths(source)
    frame = ColumnFrame(wanted, (*_RUN_COLUMNS, "config"))
    headers: list[dict[str, Any]] = []
    for path in paths:
        snapshot = open_run(path)
        schema = snapshot.start.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise RunFileError(
                f"{path}: record schema {schema!r} is not supported by this steplog "
                f"(it reads versions up to {SCHEMA_VERSION}); upgrade steplog"
            )
        header = read_header(snapshot)
        headers.append(
            {
                "run_id": header.run_id,
                "experiment": header.experiment,
                "status": header.status,
                "config": run_config(snapshot),  # a resumed run's, as it stands
            }
        )
        frame.run_rows.append(0)
        frame.add_snapshot(snapshot)
        if snapshot.corrupt:
            _warn_corrupt(path, snapshot.corrupt)
    frame.check_keys(f"{len(paths)} run(s)" if len(paths) > 1 else str(paths[0]))
    runs = _Runs(headers, frame.run_rows)
    if backend == "pandas":
        return to_pandas(frame, runs)
    if backend == "polars":
        return to_polars(frame, runs)
    np = require("numpy", "numpy", "steplog.scan(backend='numpy')")
    return {**runs.numpy(np), **numpy_columns(frame)}
