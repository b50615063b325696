"""``steplog ls``: the runs under a directory, one line each."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..runfile.codec import ValueEncoder
from ..runfile.find import find_runs
from ..runfile.header import RunHeader, read_header
from ..runfile.schema import is_number
from ..runfile.snapshot import open_run
from ._common import DEFAULT_ROOT, EXIT_OK, CommandError, Subparsers, add_command
from ._format import cell, clock, duration, print_table

__all__ = ["SORT_KEYS", "add_parser"]

SORT_KEYS = ("start", "experiment", "run", "status", "steps", "duration", "metric")


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog ls``."""
    ls = add_command(
        subparsers,
        "ls",
        help="list runs: experiment, id, status, steps, duration, start, last metric value",
        description="Lists the runs under ROOT. Reads only the first line and the tail of "
        "each file, so hundreds of large runs list in a moment. Status is the run's end "
        "status, 'running' when its writer is alive on this host, or 'incomplete' (killed).",
        handler=cmd_ls,
    )
    ls.add_argument(
        "root_dir",
        nargs="?",
        metavar="ROOT",
        help="the run directory (default: --root, $STEPLOG_ROOT or runs)",
    )
    ls.add_argument("--root", help="the run directory, as for the other commands")
    ls.add_argument("--sort", choices=SORT_KEYS, default="start", help="sort key (start)")
    ls.add_argument("-r", "--reverse", action="store_true", help="reverse the order")
    ls.add_argument("-m", "--metric", default="loss", help="metric column (default: loss)")
    ls.add_argument("-e", "--experiment", help="only this experiment")
    ls.add_argument("-s", "--status", help="only runs with this status")
    ls.add_argument("-g", "--group", help="only the runs of this group")
    ls.add_argument("-t", "--tag", action="append", dest="tags", help="only runs with this tag")
    ls.add_argument("-n", "--limit", type=int, help="show at most N runs (after sorting)")
    ls.add_argument("--json", action="store_true", help="one JSON object per run")


def cmd_ls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """List the runs under the run directory; returns the exit code."""
    if args.root_dir is not None and args.root is not None and args.root_dir != args.root:
        parser.error("name the run directory once: as ROOT or as --root")
    if args.limit is not None and args.limit < 0:
        parser.error("-n must be 0 or more")
    root = Path(args.root_dir or args.root or os.environ.get("STEPLOG_ROOT", DEFAULT_ROOT))
    if not root.exists():
        raise CommandError(f"no run directory {str(root)!r}")
    headers: list[RunHeader] = []
    unreadable = 0
    for path in find_runs(root):
        try:
            header = read_header(open_run(path))
        except (OSError, ValueError):
            unreadable += 1
            continue
        if args.experiment and header.experiment != args.experiment:
            continue
        if args.status and header.status != args.status:
            continue
        if args.group and header.group != args.group:
            continue
        if args.tags and not set(args.tags) <= set(header.tags):
            continue
        headers.append(header)
    metric = args.metric

    def metric_value(h: RunHeader) -> float:
        value: Any = h.last.get(metric)
        return float(value) if is_number(value) else math.inf

    # The runs of a group (the ranks of one job) are listed together, by rank, where
    # the group's first run falls.
    group_start: dict[str, float] = {}
    for h in headers:
        if h.group is not None:
            group_start[h.group] = min(group_start.get(h.group, math.inf), h.start_time)

    def by_start(h: RunHeader) -> Any:
        if h.group is None:
            return (h.start_time, "", -1, h.start_time)
        rank = h.rank if h.rank is not None else math.inf
        return (group_start[h.group], h.group, rank, h.start_time)

    keys: dict[str, Callable[[RunHeader], Any]] = {
        "start": by_start,
        "experiment": lambda h: (h.experiment, h.start_time),
        "run": lambda h: h.run_id,
        "status": lambda h: (h.status, h.start_time),
        "steps": lambda h: h.steps,
        "duration": lambda h: h.duration,
        "metric": metric_value,
    }
    headers.sort(key=keys[args.sort], reverse=args.reverse)
    if args.limit is not None:
        headers = headers[: args.limit]
    if unreadable:
        what = "file that is not a steplog run" if unreadable == 1 else "files that are not runs"
        print(f"steplog ls: skipped {unreadable:,} {what}", file=sys.stderr)
    if args.json:
        for h in headers:
            row = {
                "experiment": h.experiment,
                "run_id": h.run_id,
                "status": h.status,
                "steps": h.steps,
                "duration": round(h.duration, 3),
                "start_time": h.start_time,
                "path": str(h.path),
                "group": h.group,
                "rank": h.rank,
                "world_size": h.world_size,
                "tags": list(h.tags),
                metric: h.last.get(metric),
            }
            # Values as the run file stores them: NaN, infinities and big ints tagged.
            row = ValueEncoder().sanitize(row)
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
        return EXIT_OK
    if not headers:
        filters = [
            f"{flag} {value}"
            for flag, value in (
                ("-e", args.experiment),
                ("-s", args.status),
                ("-g", args.group),
                *(("-t", tag) for tag in args.tags or ()),
            )
            if value
        ]
        if filters:
            print(f"no runs under {str(root)!r} match {' '.join(filters)}", file=sys.stderr)
        else:
            print(f"no runs under {str(root)!r}", file=sys.stderr)
        return EXIT_OK
    rows = [
        [
            h.experiment,
            h.run_id,
            h.status,
            f"{h.steps:,}",
            duration(h.duration),
            clock(h.start_time),
            cell(h.last.get(metric)),
        ]
        for h in headers
    ]
    titles = ["EXPERIMENT", "RUN", "STATUS", "STEPS", "DURATION", "STARTED", metric.upper()]
    right = {3, 4, 6}
    if any(h.group is not None or h.rank is not None for h in headers):
        # Group and rank after the experiment, only when some run has them.
        titles[1:1] = ["GROUP", "RANK"]
        for cells, h in zip(rows, headers, strict=True):
            cells[1:1] = [h.group or "–", "–" if h.rank is None else str(h.rank)]
        right = {2} | {i + 2 for i in right}
    print_table(titles, rows, right=right)
    return EXIT_OK
