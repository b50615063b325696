"""``steplog export``: a run as CSV or Parquet, one row per step."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import _progress
from ..runfile.snapshot import open_run
from ._common import (
    EXIT_OK,
    RUN_HELP,
    Subparsers,
    add_command,
    add_root_option,
    run_path,
    warn_corrupt,
)
from ._format import count

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog export``."""
    export = add_command(
        subparsers,
        "export",
        help="write a run as CSV or Parquet: one row per step, one column per key",
        description="Writes one row per step (columns step, time, then every key; nested "
        "mappings as dotted keys, lists and mixed-type columns as JSON text). Parquet "
        "needs steplog[parquet].",
        handler=cmd_export,
    )
    export.add_argument("run", metavar="RUN", help=RUN_HELP)
    add_root_option(export)
    export.add_argument("--format", choices=("csv", "parquet"), default="csv")
    export.add_argument(
        "-o", "--output", help="output file (default: RUN_ID.csv / .parquet; '-': stdout)"
    )


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write the run as CSV or Parquet; returns the exit code."""
    from .._export import export

    if args.output == "-" and args.format != "csv":
        parser.error("only CSV can go to stdout")
    path = run_path(args.run, args.root)
    snapshot = open_run(path)
    out: Path | None = None  # stdout
    if args.output != "-":
        out = Path(args.output or f"{snapshot.start.get('run_id')}.{args.format}")
    rows, columns = export(snapshot, out, args.format, progress_factory=_bar_factory)
    warn_corrupt("export", path, snapshot.corrupt)
    if out is not None:
        print(f"wrote {out} ({count(rows, 'row')}, {count(columns, 'column')})")
    return EXIT_OK


def _bar_factory(total: int, desc: str) -> Any:
    return _progress.bar(total, desc)
