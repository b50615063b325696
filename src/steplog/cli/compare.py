"""``steplog compare``: runs side by side, with the configs that differ and the metrics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import _progress
from ..runfile.header import RunHeader, read_header
from ..runfile.schema import flatten
from ..runfile.snapshot import open_run
from ..runfile.stats import metric_stats
from ._common import (
    EXIT_OK,
    RUNS_HELP,
    Subparsers,
    add_command,
    add_root_option,
    check_keys,
    run_paths,
    warn_corrupt,
)
from ._format import cell, duration, print_table

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog compare``."""
    compare = add_command(
        subparsers,
        "compare",
        help="side-by-side table of runs: configs that differ, final and best metrics",
        description="One column per run: status, steps, duration, the config keys whose "
        "values differ between the runs, and per metric the last and best value (best is "
        "the minimum; name keys where higher is better with --max).",
        handler=cmd_compare,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help=RUNS_HELP)
    add_root_option(compare)
    compare.add_argument("-k", "--key", action="append", dest="keys", help="metrics to show")
    compare.add_argument(
        "--max", action="append", default=[], metavar="KEY", help="higher is better for KEY"
    )
    compare.add_argument("--all-config", action="store_true", help="show equal config too")


def cmd_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the runs side by side; returns the exit code."""
    paths = [path for spec in args.runs for path in run_paths(spec, args.root)]
    snapshots = [open_run(p) for p in paths]
    headers = [read_header(s) for s in snapshots]
    all_stats = []
    configs = []
    for path, snapshot in zip(paths, snapshots, strict=True):
        with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
            scan = metric_stats(snapshot, update)
        all_stats.append(scan.metrics)
        configs.append(flatten(scan.config(snapshot.start)))  # a resumed run's, as it stands
        warn_corrupt("compare", path, snapshot.corrupt)
    numeric = {k for s in all_stats for k, m in s.items() if m.numeric}
    check_keys(
        parser,
        "--max",
        args.max,
        numeric,
        problem="no such metric in these runs",
        listing="metrics",
    )
    check_keys(
        parser,
        "-k",
        args.keys or [],
        {k for s in all_stats for k in s},
        problem="no such key in these runs",
        listing="keys",
    )
    names = [h.run_id for h in headers]
    copies = _copies(paths)
    # One file named twice keeps its run id in both columns (a line under the table says
    # so); different files with one run id, such as a replayed copy, go by path.
    firsts = [i for i in range(len(paths)) if not any(i in group[1:] for group in copies)]
    if len({names[i] for i in firsts}) < len(firsts):
        names = [str(p) for p in paths]
    rows: list[list[str]] = [
        ["experiment", *(h.experiment for h in headers)],
        *_placement_rows(headers),
        ["status", *(h.status for h in headers)],
        ["steps", *(f"{h.steps:,}" for h in headers)],
        ["duration", *(duration(h.duration) for h in headers)],
    ]
    config_keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    for key in config_keys:
        values = [c.get(key, missing) for c in configs]
        same = all(_equal(v, values[0]) for v in values[1:])
        if same and not args.all_config:
            continue
        rows.append([f"config.{key}", *("–" if v is missing else cell(v, 30) for v in values)])
    metrics = args.keys or list(
        dict.fromkeys(k for s in all_stats for k, m in s.items() if m.numeric)
    )
    for key in metrics:
        higher = key in args.max
        lasts = [s[key].last if key in s else None for s in all_stats]
        bests: list[float | None] = []
        for s in all_stats:
            m = s.get(key)
            if m is None or not m.finite:
                bests.append(None)
            else:
                bests.append(m.max if higher else m.min)
        finite = [b for b in bests if b is not None]
        winner = (max(finite) if higher else min(finite)) if finite else None
        rows.append([f"{key} (last)", *(cell(v) if v is not None else "–" for v in lasts)])
        cells = []
        for b in bests:
            mark = " *" if b is not None and b == winner and len(paths) > 1 else ""
            cells.append("–" if b is None else cell(b) + mark)
        rows.append([f"{key} ({'max' if higher else 'min'})", *cells])
    print_table(["", *names], rows, right=set(range(1, len(names) + 1)))
    if metrics and len(paths) > 1:
        print("* best of the runs compared")
    for group in copies:
        print(f"columns {_listing(group)} are the same run ({paths[group[0]]})")
    return EXIT_OK


def _copies(paths: list[Path]) -> list[list[int]]:
    """The columns that name one file (``latest`` and its path, say), as groups of
    column indexes, in order."""
    columns: dict[tuple[int, int], list[int]] = {}
    for index, path in enumerate(paths):
        stat = path.stat()
        columns.setdefault((stat.st_dev, stat.st_ino), []).append(index)
    return [group for group in columns.values() if len(group) > 1]


def _listing(indexes: list[int]) -> str:
    """Column numbers as a reader counts them: ``1 and 2``, ``1, 3 and 4``."""
    numbers = [str(i + 1) for i in indexes]
    return f"{', '.join(numbers[:-1])} and {numbers[-1]}"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def _placement_rows(headers: list[RunHeader]) -> list[list[str]]:
    """Group and rank rows, when some run has them."""
    rows = []
    if any(h.group for h in headers):
        rows.append(["group", *(h.group or "–" for h in headers)])
    if any(h.rank is not None for h in headers):
        rows.append(["rank", *("–" if h.rank is None else str(h.rank) for h in headers)])
    return rows
