"""``steplog show``: one run's config, status, statistics, summary and per-key figures."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import orjson

from .. import _progress
from ..runfile.codec import ValueEncoder
from ..runfile.find import GROUP_PREFIX
from ..runfile.header import RunHeader, read_header
from ..runfile.schema import flatten
from ..runfile.snapshot import open_run
from ..runfile.stats import MetricStats, MonitorScan, metric_stats
from ._common import (
    EXIT_OK,
    RUNS_HELP,
    Subparsers,
    add_command,
    add_root_option,
    run_path,
    run_paths,
    warn_corrupt,
)
from ._format import cell, clock, count, duration, print_table

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog show``."""
    show = add_command(
        subparsers,
        "show",
        help="a run's config, status, stats, summary and per-metric statistics",
        description="Prints the run's config, status, delivery statistics, summary, and "
        "per key: count, first, last, min (at step), max (at step), mean, and NaN/inf "
        "counts (min/max/mean are over the finite values); then the system metrics "
        "(Tracker(system_metrics=)) and the alerts its watchers fired, if any.",
        handler=cmd_show,
    )
    show.add_argument("run", metavar="RUN", help=RUNS_HELP)
    add_root_option(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_show(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print one run's report, as text or one JSON object; returns the exit code."""
    if args.run.startswith(GROUP_PREFIX) and not Path(args.run).exists():
        return _show_group(args.run[len(GROUP_PREFIX) :], run_paths(args.run, args.root), args.json)
    path = run_path(args.run, args.root)
    snapshot = open_run(path)
    header = read_header(snapshot)
    with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
        monitor = MonitorScan()
        scan = metric_stats(snapshot, update, monitor=monitor)
    warn_corrupt("show", path, snapshot.corrupt)
    config = scan.config(snapshot.start)  # a resumed run's, as it stands
    stats, records = scan.metrics, scan.records
    steps = scan.last_step + 1 if scan.last_step is not None else 0
    if args.json:
        out = {
            "path": str(path),
            "run_id": header.run_id,
            "experiment": header.experiment,
            "status": header.status,
            "start_time": header.start_time,
            "duration": header.duration,
            "steps": steps,
            "records": records,
            "torn": header.torn,
            "group": header.group,
            "tags": list(header.tags),
            "rank": header.rank,
            "world_size": header.world_size,
            "segments": scan.segment_statuses(),
            "config": config,
            "stats": header.stats,
            "summary": header.summary,
            "metrics": {k: _stats_dict(s) for k, s in stats.items()},
            "system": {k: _stats_dict(s) for k, s in monitor.system.items()},
            "alerts": [dataclasses.asdict(a) for a in monitor.alerts],
        }
        # Values as the run file stores them: NaN, infinities and big integers tagged.
        out = ValueEncoder().sanitize(out)
        sys.stdout.write(orjson.dumps(out, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    print(f"run       {header.run_id}  (experiment {header.experiment})")
    print(f"file      {path}")
    print(
        f"status    {header.status}  ·  started {clock(header.start_time)}  ·  "
        f"duration {duration(header.duration)}  ·  {count(records, 'step record')}  ·  "
        f"last step {scan.last_step if scan.last_step is not None else '–'}"
    )
    statuses = scan.segment_statuses()
    writer = scan.last_resume() or {"host": header.host, "pid": header.pid}
    if writer.get("host") or writer.get("pid"):  # of the last segment, in a resumed run
        print(f"process   {writer.get('host')} pid {writer.get('pid')}")
    if len(statuses) > 1:
        times = count(len(statuses) - 1, "time")
        print(
            f"resumed   {times}: {' → '.join(statuses)}  ·  the duration counts the "
            "time between the segments; the stats are the last segment's"
        )
    if header.group or header.rank is not None or header.tags:
        print(f"group     {_placement(header)}")
    if header.torn:
        print("warning   the last line is incomplete (writer killed, or still writing)")
    if header.stats:
        s = header.stats
        print(
            f"stats     logged {s.get('logged', 0):,} · written {s.get('written', 0):,} · "
            f"dropped {s.get('dropped', 0):,} · batches {s.get('batches', 0):,} · "
            f"backend errors {s.get('backend_errors', 0):,}"
            + (f" · alerts {s['alerts']:,}" if s.get("alerts") else "")
            + (
                f" · on_alert errors {s['alert_callback_errors']:,}"
                if s.get("alert_callback_errors")
                else ""
            )
        )
        if s.get("writer_takeover"):
            print(
                "warning   the writer process died mid-run; this run's own process wrote "
                "the rest of the file (see the writer_process alert)"
            )
        for name, b in (s.get("backends") or {}).items():
            extra = " (disabled by the circuit breaker)" if b.get("disabled") else ""
            error = f"; last error: {b['last_error']}" if b.get("last_error") else ""
            print(
                f"          {name}: delivered {b.get('delivered', 0):,}, failed "
                f"{b.get('failed', 0):,}, dropped {b.get('dropped', 0):,}{extra}{error}"
            )
            outages = b.get("outages") or []
            if outages or b.get("caught_up") or b.get("missing"):
                spans = ", ".join(_outage(start, end, header.start_time) for start, end in outages)
                earlier = b.get("caught_up", 0)
                print(
                    f"            {count(b.get('missing', 0), 'event')} behind when the run "
                    "ended"
                    + (f" · {count(earlier, 'event')} of earlier segments" if earlier else "")
                    + f" · {count(len(outages), 'outage')}{': ' + spans if spans else ''}"
                )
    else:
        print("stats     – (no run-end record)")
    _print_delivery(path, records)
    _print_mapping("config", config)
    _print_mapping("summary", header.summary)
    _print_metrics(stats)
    if not stats:
        print("\nno step records")
    _print_monitor(monitor, header.start_time)
    return EXIT_OK


def _print_metrics(stats: dict[str, MetricStats]) -> None:
    """The per-key tables: numbers, then other values."""
    numeric = {k: s for k, s in stats.items() if s.numeric}
    other = {k: s for k, s in stats.items() if not s.numeric}
    if numeric:
        print()
        rows = []
        for key, m in numeric.items():
            rows.append(
                [
                    key,
                    f"{m.count:,}",
                    cell(m.first),
                    cell(m.last),
                    _at(m.min, m.min_step),
                    _at(m.max, m.max_step),
                    cell(m.mean),
                    f"{m.nan:,}" if m.nan else "",
                    f"{m.inf:,}" if m.inf else "",
                ]
            )
        print_table(
            ["METRIC", "COUNT", "FIRST", "LAST", "MIN (STEP)", "MAX (STEP)", "MEAN", "NAN", "INF"],
            rows,
            right={1, 2, 3, 4, 5, 6, 7, 8},
        )
    if other:
        print()
        rows = [[k, f"{m.count:,}", cell(m.first), cell(m.last)] for k, m in other.items()]
        print_table(["KEY", "COUNT", "FIRST", "LAST"], rows, right={1})


def _print_monitor(monitor: MonitorScan, start: float) -> None:
    """The system metrics (last, min, max, mean per key) and the alerts that fired."""
    if monitor.system:
        print()
        print(f"system metrics ({count(monitor.samples, 'sample')})")
        rows = [
            [
                k,
                cell(m.last),
                cell(m.min) if m.finite else "–",
                cell(m.max) if m.finite else "–",
                cell(m.mean),
            ]
            for k, m in monitor.system.items()
            if m.numeric
        ]
        print_table(["SYSTEM", "LAST", "MIN", "MAX", "MEAN"], rows, right={1, 2, 3, 4})
    if monitor.alerts:
        print()
        print(f"alerts ({len(monitor.alerts):,} fired)")
        rows = [
            [
                f"+{a.time - start:.1f} s",
                "–" if a.step is None else str(a.step),
                a.watcher,
                a.key or "",
                a.message + (f" (+{a.suppressed} in cooldown)" if a.suppressed else ""),
            ]
            for a in monitor.alerts
        ]
        print_table(["AT", "STEP", "WATCHER", "KEY", "MESSAGE"], rows, right={0, 1})


def _stats_dict(s: MetricStats) -> dict[str, Any]:
    out: dict[str, Any] = {"count": s.count, "first": s.first, "last": s.last}
    if s.numeric:
        out.update(
            min=s.min if s.finite else None,
            min_step=s.min_step,
            max=s.max if s.finite else None,
            max_step=s.max_step,
            mean=s.mean,
            nan=s.nan,
            inf=s.inf,
        )
    return out


def _at(value: float, step: int | None) -> str:
    return "–" if step is None else f"{cell(value)} ({step})"


def _print_mapping(title: str, mapping: dict[str, Any]) -> None:
    flat = flatten(mapping) if mapping else {}
    if not flat:
        print(f"{title:<9} –")
        return
    width = max(len(k) for k in flat)
    for index, (key, value) in enumerate(flat.items()):
        label = title if index == 0 else ""
        print(f"{label:<9} {key:<{width}} = {cell(value, 60)}")


def _print_delivery(path: Path, records: int) -> None:
    """Where each remote backend stands now, from the lanes' cursors next to the run."""
    from .._lane import delivery_states

    states = delivery_states(path, records)
    for index, state in enumerate(states):
        label = "delivery" if index == 0 else ""
        print(f"{label:<9} {state.describe()}")


def _outage(start: float | None, end: float | None, run_start: float) -> str:
    """An outage as ``+12.3 s for 4.5 s`` (from the run's start), or ``… to the end``."""
    if start is None:
        return "?"
    at = f"+{start - run_start:.1f} s"
    return f"{at} to the end" if end is None else f"{at} for {end - start:.1f} s"


def _placement(header: RunHeader) -> str:
    """Group, rank and tags, as one line."""
    parts = [header.group or "–"]
    if header.rank is not None:
        size = f" of {header.world_size}" if header.world_size is not None else ""
        parts.append(f"rank {header.rank}{size}")
    if header.tags:
        parts.append("tags " + ", ".join(header.tags))
    return "  ·  ".join(parts)


def _show_group(name: str, paths: list[Path], as_json: bool) -> int:
    """The report of a group: one line per run (rank), and per key the statistics of
    every rank's values together."""
    merged: dict[str, MetricStats] = {}
    members = []
    for path in paths:
        snapshot = open_run(path)
        header = read_header(snapshot)
        with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
            scan = metric_stats(snapshot, update, into=merged)
        warn_corrupt("show", path, snapshot.corrupt)
        members.append((header, scan.last_step))
    if as_json:
        out = {
            "group": name,
            "runs": [
                {
                    "path": str(h.path),
                    "run_id": h.run_id,
                    "experiment": h.experiment,
                    "rank": h.rank,
                    "world_size": h.world_size,
                    "status": h.status,
                    "steps": last + 1 if last is not None else 0,
                    "duration": h.duration,
                    "summary": h.summary,
                }
                for h, last in members
            ],
            "metrics": {k: _stats_dict(s) for k, s in merged.items()},
        }
        out = ValueEncoder().sanitize(out)
        sys.stdout.write(orjson.dumps(out, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    sizes = {h.world_size for h, _ in members if h.world_size is not None}
    size = f" of a world of {', '.join(map(str, sorted(sizes)))}" if sizes else ""
    print(f"group     {name}  ·  {count(len(members), 'run')}{size}")
    rows = [
        [
            "–" if h.rank is None else str(h.rank),
            h.run_id,
            h.status,
            f"{last + 1 if last is not None else 0:,}",
            duration(h.duration),
            clock(h.start_time),
        ]
        for h, last in members
    ]
    print()
    print_table(["RANK", "RUN", "STATUS", "STEPS", "DURATION", "STARTED"], rows, right={0, 3, 4})
    print("\nmetrics over every run of the group together:")
    _print_metrics(merged)
    if not merged:
        print("\nno step records")
    return EXIT_OK
