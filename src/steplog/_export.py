"""``steplog export``: one row per step, one column per key, as CSV or Parquet.

Two streaming passes over a snapshot of the run file: the first finds the columns and
their types, the second writes rows, so memory stays flat however long the run, and
both passes see the same records while another process appends to the file.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from ._extras import require
from .runfile.schema import flat_data
from .runfile.snapshot import RunSnapshot, iter_steps

__all__ = ["export"]

ROW_GROUP = 100_000
_INT64 = (-(2**63), 2**63 - 1)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "str"
    if isinstance(value, float):
        return "float"
    return "str"


def _merge(old: str | None, new: str) -> str:
    if old is None or old == new:
        return new
    if {old, new} == {"int", "float"}:
        return "float"
    return "str"


def scan_columns(
    snapshot: RunSnapshot, progress: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Columns in first-seen order with their type."""
    kinds: dict[str, str] = {}
    for record in iter_steps(snapshot, progress):
        for key, value in flat_data(record["data"]).items():
            if value is not None:
                kinds[key] = _merge(kinds.get(key), _kind(value))
            else:
                kinds.setdefault(key, "str")
    return kinds


def _text(value: Any) -> str:
    """A cell of a text column: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def export(
    snapshot: RunSnapshot,
    out: Path | None,
    fmt: str,
    progress_factory: Callable[[int, str], Any] | None = None,
) -> tuple[int, int]:
    """Write the snapshot as ``fmt`` to ``out`` (``None``: stdout, CSV only).

    Returns:
        The rows written and the number of columns.
    """
    if fmt == "parquet":
        require("pyarrow.parquet", "parquet", "steplog export --format parquet")
    size = snapshot.end - snapshot.body
    with _maybe_bar(progress_factory, 2 * size, f"export {snapshot.path.name}") as update:
        kinds = scan_columns(snapshot, update)
        columns = list(kinds)
        if fmt == "csv":
            rows = _write_csv(snapshot, out, columns, kinds, update)
        else:
            assert out is not None
            rows = _write_parquet(snapshot, out, columns, kinds, update)
    return rows, len(columns) + 2


class _maybe_bar:
    def __init__(self, factory: Callable[[int, str], Any] | None, total: int, desc: str) -> None:
        self._cm = factory(total, desc) if factory is not None else None

    def __enter__(self) -> Callable[[int], None] | None:
        return self._cm.__enter__() if self._cm is not None else None

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def _write_csv(
    snapshot: RunSnapshot,
    out: Path | None,
    columns: list[str],
    kinds: dict[str, str],
    progress: Callable[[int], None] | None,
) -> int:
    text_columns = [c for c in columns if kinds[c] == "str"]
    handle: IO[str] = sys.stdout if out is None else open(out, "w", newline="")  # noqa: SIM115
    rows = 0
    try:
        writer = csv.writer(handle)
        writer.writerow(["step", "time", *columns])
        for record in iter_steps(snapshot, progress):
            rows += 1
            data = flat_data(record["data"])
            for column in text_columns:
                value = data.get(column)
                if value is not None and not isinstance(value, str):
                    data[column] = _text(value)
            writer.writerow(
                [record["step"], record["time"], *(_cell(data.get(c)) for c in columns)]
            )
    finally:
        if out is not None:
            handle.close()
    return rows


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    return value


def _write_parquet(
    snapshot: RunSnapshot,
    out: Path,
    columns: list[str],
    kinds: dict[str, str],
    progress: Callable[[int], None] | None,
) -> int:
    pa: Any = require("pyarrow", "parquet", "steplog export --format parquet")
    pq: Any = require("pyarrow.parquet", "parquet", "steplog export --format parquet")

    types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    schema = pa.schema(
        [("step", pa.int64()), ("time", pa.float64())] + [(c, types[kinds[c]]) for c in columns]
    )
    names = ["step", "time", *columns]
    convert: list[Callable[[Any], Any]] = [int, float]
    for column in columns:
        kind = kinds[column]
        if kind == "str":
            convert.append(lambda v: None if v is None else _text(v))
        elif kind == "float":
            convert.append(lambda v: None if v is None else float(v))
        else:
            convert.append(lambda v: v)

    def flush(buffers: list[list[Any]], writer: Any) -> None:
        arrays = [pa.array(b, type=schema.field(i).type) for i, b in enumerate(buffers)]
        writer.write_table(pa.Table.from_arrays(arrays, schema=schema))

    rows = 0
    with pq.ParquetWriter(out, schema) as writer:
        buffers: list[list[Any]] = [[] for _ in names]
        for record in iter_steps(snapshot, progress):
            rows += 1
            data = flat_data(record["data"])
            values = [record["step"], record["time"], *(data.get(c) for c in columns)]
            for buffer, fn, value in zip(buffers, convert, values, strict=True):
                buffer.append(fn(value))
            if len(buffers[0]) >= ROW_GROUP:
                flush(buffers, writer)
                buffers = [[] for _ in names]
        if buffers[0] or not columns:
            flush(buffers, writer)
    return rows
