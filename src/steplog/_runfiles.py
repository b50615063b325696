"""Moved to :mod:`steplog.runfile` (kept while the CLI moves; see issue #14)."""

from .errors import RunNotFoundError
from .runfile.find import find_runs, resolve_run
from .runfile.read import (
    CHUNK_BYTES,
    TAIL_BYTES,
    CorruptLineError,
    MetricStats,
    RunHeader,
    RunSnapshot,
    StepScan,
    WriterState,
    iter_lines,
    iter_steps,
    last_steps,
    line_number,
    metric_stats,
    open_run,
    parse_line,
    parse_record,
    read_header,
    writer_state,
)
from .runfile.schema import flat_data, flatten, is_number

__all__ = [
    "CHUNK_BYTES",
    "TAIL_BYTES",
    "CorruptLineError",
    "MetricStats",
    "RunHeader",
    "RunNotFoundError",
    "RunSnapshot",
    "StepScan",
    "WriterState",
    "find_runs",
    "flat_data",
    "flatten",
    "is_number",
    "iter_lines",
    "iter_steps",
    "last_steps",
    "line_number",
    "metric_stats",
    "open_run",
    "parse_line",
    "parse_record",
    "read_header",
    "resolve_run",
    "writer_state",
]
