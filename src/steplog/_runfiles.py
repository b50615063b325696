"""Finding run files and reading them fast: headers from the first and last lines,
step records as a stream (for files too large to load at once, or still being written).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from ._values import decode

__all__ = [
    "MetricStats",
    "RunHeader",
    "RunNotFoundError",
    "find_runs",
    "flat_data",
    "iter_lines",
    "iter_steps",
    "last_steps",
    "metric_stats",
    "parse_line",
    "read_header",
    "resolve_run",
]

TAIL_BYTES = 64 * 1024
CHUNK_BYTES = 4 * 1024 * 1024


class RunNotFoundError(LookupError):
    """No run file matches what the user asked for (or more than one does)."""


def parse_line(line: bytes) -> dict[str, Any] | None:
    """Decode one JSONL record (``None`` if it is not a JSON object)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if b'"$' in line:
        decoded: dict[str, Any] = decode(record)
        return decoded
    return record


@dataclasses.dataclass(frozen=True, slots=True)
class RunHeader:
    """What the first and last lines of a run file say, without reading the rest."""

    path: Path
    run_id: str
    experiment: str
    start_time: float
    status: str  # the end status, "running" (writer alive on this host) or "incomplete"
    steps: int  # last step + 1 (0 when no step was written yet)
    last_time: float  # end time, or the time of the last step written
    last: dict[str, Any]  # the data of the last step records, later ones winning
    config: dict[str, Any]
    summary: dict[str, Any]
    stats: dict[str, Any] | None  # the run-end record's statistics
    host: str | None
    pid: int | None
    torn: bool  # the file ends in a line without its newline (killed or still writing)

    @property
    def duration(self) -> float:
        return max(0.0, self.last_time - self.start_time)


def read_header(path: Path, tail_bytes: int = TAIL_BYTES) -> RunHeader:
    """Read the run-start line and the tail of ``path``.

    Raises:
        ValueError: The file is not a steplog run.
    """
    with open(path, "rb") as f:
        first = f.readline()
        start = parse_line(first)
        if start is None or start.get("type") != "run_start":
            raise ValueError(f"{path}: not a steplog run file")
        size = os.fstat(f.fileno()).st_size
        offset = max(len(first), size - tail_bytes)
        f.seek(offset)
        tail = f.read()
    lines = tail.split(b"\n")
    if offset > len(first):
        lines = lines[1:]  # the first piece starts mid-line
    torn = bool(lines.pop().strip())  # empty after the final newline
    end: dict[str, Any] | None = None
    last_step: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    for line in reversed(lines):
        record = parse_line(line)
        if record is None:
            continue
        kind = record.get("type")
        if kind == "run_end":
            end = record
        elif kind is None and isinstance(record.get("data"), dict):
            if last_step is None:
                last_step = record
            for key, value in record["data"].items():
                last.setdefault(key, value)
    if end is not None:
        status = str(end.get("status"))
        last_time = float(end.get("end_time") or start["start_time"])
    else:
        status = "running" if _writer_alive(start) else "incomplete"
        last_time = float(last_step["time"]) if last_step else float(start["start_time"])
    return RunHeader(
        path=path,
        run_id=str(start.get("run_id")),
        experiment=str(start.get("experiment")),
        start_time=float(start["start_time"]),
        status=status,
        steps=int(last_step["step"]) + 1 if last_step else 0,
        last_time=last_time,
        last=last,
        config=start.get("config") or {},
        summary=(end or {}).get("summary") or {},
        stats=(end or {}).get("stats"),
        host=start.get("host"),
        pid=start.get("pid"),
        torn=torn,
    )


def _writer_alive(start: dict[str, Any]) -> bool:
    pid = start.get("pid")
    if not isinstance(pid, int) or start.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_steps(path: Path, count: int) -> tuple[list[dict[str, Any]], int]:
    """The last ``count`` step records, and the offset just after the last complete line.

    Reads backwards from the end in growing blocks, so a long file is not read whole.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        block = TAIL_BYTES
        while True:
            offset = max(0, size - block)
            f.seek(offset)
            data = f.read(size - offset)
            end = data.rfind(b"\n") + 1  # after the last complete line
            lines = data[:end].split(b"\n")[:-1]
            if offset > 0:
                lines = lines[1:]  # starts mid-line
            steps = []
            for line in lines:
                record = parse_line(line) if not line.startswith(b'{"type"') else None
                if record is not None and "type" not in record and "data" in record:
                    steps.append(record)
            if len(steps) >= count or offset == 0:
                return (steps[-count:] if count else []), offset + end
            block *= 4


def find_runs(root: Path) -> list[Path]:
    """Every ``*.jsonl`` file under ``root`` (``root/<experiment>/<run id>.jsonl``)."""
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.jsonl"))


def resolve_run(spec: str, root: Path) -> Path:
    """Turn what the user typed into one run file.

    ``spec`` may be a file; a directory (its most recent run); ``latest``; a run id, a
    unique prefix of one, or ``experiment/run-id`` under ``root``.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        return _latest(find_runs(path), spec)
    if spec == "latest":
        return _latest(find_runs(root) if root.is_dir() else [], f"{root}/")
    if not root.is_dir():
        raise RunNotFoundError(f"no run file {spec!r}, and no run directory {str(root)!r}")
    experiment, _, run_id = spec.rpartition("/")
    matches = [
        p
        for p in find_runs(root)
        if p.stem.startswith(run_id) and (not experiment or p.parent.name == experiment)
    ]
    exact = [p for p in matches if p.stem == run_id]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"no run matches {spec!r} under {str(root)!r}")
    names = ", ".join(str(p) for p in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{spec!r} matches {len(matches)} runs: {names}{more}")


def _latest(paths: list[Path], where: str) -> Path:
    if not paths:
        raise RunNotFoundError(f"no runs under {where!r}")
    return max(paths, key=lambda p: p.stat().st_mtime)


def iter_lines(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Complete lines of ``path``, read in large chunks; a torn last line is left out."""
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(CHUNK_BYTES):
            if progress is not None:
                progress(len(chunk))
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines


def iter_steps(
    path: Path, progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Step records of ``path`` (``{"step", "time", "data"}``), in file order."""
    loads = orjson.loads
    for line in iter_lines(path, progress):
        # The hot loop of show/export/compare on long runs: orjson straight on the
        # line, the tag-decoding walk only where a tagged value ($float, $int) is.
        if not line or line.startswith(b'{"type"'):
            continue
        try:
            record = loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(record) is not dict or "type" in record or type(record.get("data")) is not dict:
            continue
        if b'"$' in line:
            record = decode(record)
        yield record


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(slots=True)
class MetricStats:
    """Running statistics of one key over a run."""

    count: int = 0
    first: Any = None
    last: Any = None
    numeric: int = 0
    nan: int = 0
    inf: int = 0
    min: float = math.inf
    min_step: int | None = None
    max: float = -math.inf
    max_step: int | None = None
    total: float = 0.0
    finite: int = 0

    def add(self, step: int, value: Any) -> None:
        if self.count == 0:
            self.first = value
        self.count += 1
        self.last = value
        if type(value) is not float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return
            try:
                value = float(value)
            except OverflowError:  # an int beyond float range (stored as a $int tag)
                value = math.inf if value > 0 else -math.inf
        self.numeric += 1
        if value - value != 0:  # NaN or ±inf (and never true for finite values)
            if value != value:
                self.nan += 1
            else:
                self.inf += 1
            return
        self.finite += 1
        self.total += value
        if value < self.min:
            self.min, self.min_step = value, step
        if value > self.max:
            self.max, self.max_step = value, step

    @property
    def mean(self) -> float | None:
        return self.total / self.finite if self.finite else None


def metric_stats(
    path: Path, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, MetricStats], int]:
    """Per-key statistics over every step record of ``path``, and the record count."""
    stats: dict[str, MetricStats] = {}
    records = 0
    for record in iter_steps(path, progress):
        records += 1
        step = record["step"]
        for key, value in flat_data(record["data"]).items():
            entry = stats.get(key)
            if entry is None:
                entry = stats[key] = MetricStats()
            entry.add(step, value)
    return stats, records


def flat_data(data: dict[str, Any]) -> dict[str, Any]:
    """A step's data with dotted keys: ``data`` itself unless it holds a nested mapping
    (the common case, so long runs skip building a copy of every record)."""
    for value in data.values():
        if type(value) is dict:
            return flatten(data)
    return data


def flatten(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings become joined keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``.

    Empty mappings stay as values. Shared by the CLI and the backends that need flat
    keys (MLflow params and metrics, TensorBoard tags with ``sep="/"``).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, sep, f"{name}{sep}"))
        else:
            out[name] = value
    return out
