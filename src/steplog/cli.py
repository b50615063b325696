"""The ``steplog`` command line (also ``python -m steplog``).

Commands: ``demo``, ``ls``, ``show``, ``tail``, ``plot``, ``compare``, ``export``,
``replay``.
Exit codes: 0 success; 1 the command could not do its work (no such run, unreadable
file, missing optional dependency, nothing to plot, a backend that cannot open, a run
followed by ``tail -f`` whose writer is gone); 2 usage error (also a key the run does
not have); 130 interrupted.

Commands that read step records take a snapshot of each run file when they start (see
``_runfiles``), skip corrupt lines in it with one warning per file on stderr, and leave a
torn last line out silently.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import string
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from . import _progress
from ._extras import require
from ._runfiles import (
    CorruptLineError,
    MetricStats,
    RunHeader,
    RunNotFoundError,
    RunSnapshot,
    WriterState,
    find_runs,
    flat_data,
    flatten,
    is_number,
    last_steps,
    line_number,
    metric_stats,
    open_run,
    parse_record,
    read_header,
    resolve_run,
    writer_state,
)
from .backends.jsonl import JsonlBackend
from .errors import MissingExtraError, TrackerError
from .reader import RunFileError, read_run
from .tracker import Tracker

__all__ = ["main"]

DEFAULT_ROOT = "runs"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SORT_KEYS = ("start", "experiment", "run", "status", "steps", "duration", "metric")
#: ``tail -f`` gives up on a run whose writer process is gone once the file has not
#: grown for this long (a ``durability="process"`` writer outlives the logging process
#: by about a flush interval to drain and end the run).
WRITER_GONE_GRACE = 3.0


class CommandError(Exception):
    """A command could not do its work; the message is printed and the exit code is 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``steplog`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args, args.command_parser)
        sys.stdout.flush()
    except BrokenPipeError:
        # `steplog show RUN | head`: the reader has seen enough. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (CommandError, RunNotFoundError, RunFileError, MissingExtraError) as exc:
        print(f"steplog {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except (OSError, ValueError, TrackerError) as exc:  # TrackerError: BackendOpenError
        print(f"steplog {args.command}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code


def _one_line(exc: BaseException) -> str:
    """The error message on one line (some libraries' messages span several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steplog",
        description="Experiment tracking that is free for the hot loop: run a demo, "
        "list, inspect, follow, plot, compare and export runs.",
        epilog="Exit codes: 0 success, 1 failure (no such run, unreadable file, missing "
        "optional dependency), 2 usage error, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str, handler: Callable[..., int]) -> Any:
        sub = commands.add_parser(name, help=help, description=description)
        # Handlers report bad values with the subcommand's own usage line.
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    def root_option(sub: Any) -> None:
        sub.add_argument(
            "--root",
            default=os.environ.get("STEPLOG_ROOT", DEFAULT_ROOT),
            help="where run ids are looked up (default: $STEPLOG_ROOT or runs)",
        )

    run_help = (
        "a run file, a run directory (its latest run), 'latest', or a run id (or a unique "
        "prefix, or EXPERIMENT/ID) under --root"
    )

    demo = command(
        "demo",
        "run a simulated high-frequency optimizer loop and log it to JSONL",
        "Runs a simulated random-search optimizer (string trigger, noisy loss) for a few "
        "seconds, logging every step to the default JSONL backend, then prints where the "
        "run went, steps/s, what log() cost per call, and how to plot it.",
        cmd_demo,
    )
    demo.add_argument("--steps", type=int, default=300_000, help="optimizer steps (300000)")
    demo.add_argument("--root", default=DEFAULT_ROOT, help="run directory (default: runs)")
    demo.add_argument("--experiment", default="demo", help="experiment name (default: demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--plot", metavar="PNG", help="also plot loss and best_loss to PNG")

    ls = command(
        "ls",
        "list runs: experiment, id, status, steps, duration, start, last metric value",
        "Lists the runs under ROOT. Reads only the first line and the tail of each file, "
        "so hundreds of large runs list in a moment. Status is the run's end status, "
        "'running' when its writer is alive on this host, or 'incomplete' (killed).",
        cmd_ls,
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
    ls.add_argument("-n", "--limit", type=int, help="show at most N runs (after sorting)")
    ls.add_argument("--json", action="store_true", help="one JSON object per run")

    show = command(
        "show",
        "a run's config, status, stats, summary and per-metric statistics",
        "Prints the run's config, status, delivery statistics, summary, and per key: "
        "count, first, last, min (at step), max (at step), mean, and NaN/inf counts "
        "(min/max/mean are over the finite values).",
        cmd_show,
    )
    show.add_argument("run", metavar="RUN", help=run_help)
    root_option(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")

    tail = command(
        "tail",
        "print the last steps of a run; -f follows a run being written",
        "Prints the last N step records. With -f, keeps printing new steps as another "
        "process writes them (a partly written last line is held back until complete) "
        "and stops when the run ends (exit 0), or when its writer process is gone "
        "without ending it (exit 1). With --json, stdout carries only step records; "
        "the run-ended notice goes to stderr.",
        cmd_tail,
    )
    tail.add_argument("run", metavar="RUN", help=run_help)
    root_option(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="follow new steps")
    tail.add_argument("-n", "--lines", type=int, default=10, help="steps to print first (10)")
    tail.add_argument(
        "-k", "--key", action="append", dest="keys", help="keys to print (nested: a.b)"
    )
    tail.add_argument("--interval", type=float, default=0.2, help="poll interval, s (0.2)")
    tail.add_argument("--json", action="store_true", help="print the raw JSON records")

    plot = command(
        "plot",
        "plot metrics of one or more runs to a PNG (needs steplog[plot])",
        "Draws the chosen keys (one panel each) for every run given, overlaid. Runs "
        "with more points than --max-points are drawn as bucket means with a min-max "
        "envelope, so 10-million-step runs plot fast and spikes stay visible.",
        cmd_plot,
    )
    plot.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    root_option(plot)
    plot.add_argument("-k", "--key", action="append", dest="keys", help="key(s) to plot (loss)")
    plot.add_argument("-o", "--output", default="steplog-plot.png", help="output image")
    plot.add_argument("--x", choices=("step", "time"), default="step", help="x axis (step)")
    plot.add_argument("--smooth", type=int, default=0, metavar="N", help="moving mean of N")
    plot.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--label", action="append", dest="labels", help="legend label per run")
    plot.add_argument("--size", default="8x4.5", help="figure size in inches, WxH (8x4.5)")
    plot.add_argument("--dpi", type=int, default=100, help="dots per inch (100)")
    plot.add_argument("--max-points", type=int, default=4000, help="buckets per curve (4000)")

    compare = command(
        "compare",
        "side-by-side table of runs: configs that differ, final and best metrics",
        "One column per run: status, steps, duration, the config keys whose values "
        "differ between the runs, and per metric the last and best value (best is the "
        "minimum; name keys where higher is better with --max).",
        cmd_compare,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    root_option(compare)
    compare.add_argument("-k", "--key", action="append", dest="keys", help="metrics to show")
    compare.add_argument(
        "--max", action="append", default=[], metavar="KEY", help="higher is better for KEY"
    )
    compare.add_argument("--all-config", action="store_true", help="show equal config too")

    export = command(
        "export",
        "write a run as CSV or Parquet: one row per step, one column per key",
        "Writes one row per step (columns step, time, then every key; nested mappings "
        "as dotted keys, lists and mixed-type columns as JSON text). Parquet needs "
        "steplog[parquet].",
        cmd_export,
    )
    export.add_argument("run", metavar="RUN", help=run_help)
    root_option(export)
    export.add_argument("--format", choices=("csv", "parquet"), default="csv")
    export.add_argument(
        "-o", "--output", help="output file (default: RUN_ID.csv / .parquet; '-': stdout)"
    )

    replay = command(
        "replay",
        "send recorded runs into MLflow, W&B, TensorBoard, trackio or another JSONL root",
        "Replays finished or crashed runs from their JSONL files into the backends given "
        "(at least one): the offline-first path for clusters without network. Each run "
        "keeps its id, config, steps, times, status and summary. Re-running a replay "
        "does not duplicate points in MLflow (the run is found again by its steplog id) "
        "or TensorBoard (the event file is rewritten); see docs/backends.md.",
        cmd_replay,
    )
    replay.add_argument("runs", nargs="+", metavar="RUN", help=run_help)
    root_option(replay)
    replay.add_argument("--mlflow", metavar="URI", help="MLflow tracking server URL")
    replay.add_argument("--mlflow-experiment", metavar="NAME", help="MLflow experiment")
    replay.add_argument("--wandb", metavar="PROJECT", help="W&B project")
    replay.add_argument(
        "--wandb-mode", choices=("online", "offline"), help="W&B mode (default: W&B's)"
    )
    replay.add_argument("--tensorboard", metavar="LOGDIR", help="TensorBoard log directory")
    replay.add_argument("--trackio", metavar="PROJECT", help="trackio project")
    replay.add_argument("--jsonl", metavar="ROOT", help="another JSONL run directory")
    return parser


# ── demo ──────────────────────────────────────────────────────────────────────────────


def cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return run_demo(
        args.steps, root=args.root, experiment=args.experiment, seed=args.seed, plot=args.plot
    )


def run_demo(steps: int, *, root: str, experiment: str, seed: int, plot: str | None = None) -> int:
    """Run the demo loop; returns the exit code."""
    rng = random.Random(seed)
    backend = JsonlBackend(root)
    tracker = Tracker(backend, experiment_name=experiment, experiment_config={"demo": True})
    alphabet = string.ascii_lowercase
    trigger = [rng.choice(alphabet) for _ in range(12)]
    target = "experimentum"
    best = math.inf
    current = len(target)
    temperature = 1.0
    sample_every = 64  # time every 64th log() call, to measure without slowing the loop
    samples: list[int] = []
    clock = time.perf_counter_ns
    with (
        _progress.bar(steps, "demo", unit="step", delay=0) as advance,
        tracker.run({"optimizer": "random-search", "steps": steps, "seed": seed}),
    ):
        started = time.perf_counter()
        for step in range(steps):
            # One optimizer step: mutate one position, score against a hidden target.
            candidate = trigger.copy()
            candidate[rng.randrange(len(candidate))] = rng.choice(alphabet)
            mismatches = sum(a != b for a, b in zip(candidate, target, strict=True))
            loss = max(0.0, mismatches / len(target) + rng.gauss(0.0, 0.02))
            if mismatches <= current or rng.random() < temperature * 0.01:
                trigger, current = candidate, mismatches
            best = min(best, loss)
            temperature *= 0.99997
            record: dict[str, Any] = {"loss": loss, "best_loss": best, "temperature": temperature}
            if step % 1000 == 0:
                record["trigger"] = "".join(trigger)
            if step % sample_every == 0:
                t0 = clock()
                tracker.log(record)
                samples.append(clock() - t0)
                if advance is not None and step % 8192 == 0 and step:
                    advance(8192)
            else:
                tracker.log(record)
        elapsed = time.perf_counter() - started
        tracker.summary.update(best_loss=best, trigger="".join(trigger))
    stats = tracker.last_stats
    path = backend.path
    if stats is None or path is None:  # pragma: no cover - run() always finishes the run
        raise CommandError("the run did not finish")
    run = read_run(path)
    samples.sort()
    overhead = _timer_overhead_ns()
    p50 = max(samples[len(samples) // 2] - overhead, 0) / 1000
    p99 = max(samples[int(len(samples) * 0.99)] - overhead, 0) / 1000
    rate = steps / elapsed
    print(
        f"steplog demo: {_count(steps, 'optimizer step')} in {elapsed:.2f} s ({rate:,.0f} steps/s)"
    )
    print(f"  log() cost per call: p50 {p50:.2f} µs, p99 {p99:.2f} µs (timer overhead removed)")
    print(
        f"  logged {stats.logged:,}, written {stats.written:,}, dropped {stats.dropped:,}, "
        f"in {_count(stats.batches, 'batch', 'batches')}; finish() drained in "
        f"{stats.drain_seconds * 1000:.1f} ms"
    )
    records = _count(len(run.records), "step record")
    print(f"  run written to {path} ({records}, status {run.status!r})")
    print(f"  best loss {run.summary.get('best_loss'):.4f}, trigger {run.summary.get('trigger')!r}")
    print(f"  look at it:  steplog show {path}")
    print(f"  plot it:     steplog plot {path} -k loss -k best_loss -o loss.png")
    if plot:
        return _plot_files([path], ["loss", "best_loss"], Path(plot), title=None)
    return EXIT_OK


def _timer_overhead_ns() -> int:
    clock = time.perf_counter_ns
    gaps = []
    for _ in range(1000):
        t0 = clock()
        gaps.append(clock() - t0)
    gaps.sort()
    return gaps[len(gaps) // 2]


# ── ls ────────────────────────────────────────────────────────────────────────────────


def cmd_ls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
        headers.append(header)
    metric = args.metric

    def metric_value(h: RunHeader) -> float:
        value: Any = h.last.get(metric)
        return float(value) if is_number(value) else math.inf

    keys: dict[str, Callable[[RunHeader], Any]] = {
        "start": lambda h: h.start_time,
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
                metric: h.last.get(metric),
            }
            sys.stdout.write(orjson.dumps(row, default=str).decode() + "\n")
        return EXIT_OK
    if not headers:
        print(f"no runs under {str(root)!r}", file=sys.stderr)
        return EXIT_OK
    rows = [
        [
            h.experiment,
            h.run_id,
            h.status,
            f"{h.steps:,}",
            _duration(h.duration),
            _clock(h.start_time),
            _cell(h.last.get(metric)),
        ]
        for h in headers
    ]
    _print_table(
        ["EXPERIMENT", "RUN", "STATUS", "STEPS", "DURATION", "STARTED", metric.upper()],
        rows,
        right={3, 4, 6},
    )
    return EXIT_OK


# ── show ──────────────────────────────────────────────────────────────────────────────


def cmd_show(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    path = resolve_run(args.run, Path(args.root))
    snapshot = _snapshot(path)
    header = read_header(snapshot)
    with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
        scan = metric_stats(snapshot, update)
    _warn_corrupt("show", path, snapshot.corrupt)
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
            "config": header.config,
            "stats": header.stats,
            "summary": header.summary,
            "metrics": {k: _stats_dict(s) for k, s in stats.items()},
        }
        sys.stdout.write(orjson.dumps(out, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    print(f"run       {header.run_id}  (experiment {header.experiment})")
    print(f"file      {path}")
    print(
        f"status    {header.status}  ·  started {_clock(header.start_time)}  ·  "
        f"duration {_duration(header.duration)}  ·  {_count(records, 'step record')}  ·  "
        f"last step {scan.last_step if scan.last_step is not None else '–'}"
    )
    if header.host or header.pid:
        print(f"process   {header.host} pid {header.pid}")
    if header.torn:
        print("warning   the last line is incomplete (writer killed, or still writing)")
    if header.stats:
        s = header.stats
        print(
            f"stats     logged {s.get('logged', 0):,} · written {s.get('written', 0):,} · "
            f"dropped {s.get('dropped', 0):,} · batches {s.get('batches', 0):,} · "
            f"backend errors {s.get('backend_errors', 0):,}"
        )
        for name, b in (s.get("backends") or {}).items():
            extra = " (disabled by the circuit breaker)" if b.get("disabled") else ""
            error = f"; last error: {b['last_error']}" if b.get("last_error") else ""
            print(
                f"          {name}: delivered {b.get('delivered', 0):,}, failed "
                f"{b.get('failed', 0):,}, dropped {b.get('dropped', 0):,}{extra}{error}"
            )
    else:
        print("stats     – (no run-end record)")
    _print_mapping("config", header.config)
    _print_mapping("summary", header.summary)
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
                    _cell(m.first),
                    _cell(m.last),
                    _at(m.min, m.min_step),
                    _at(m.max, m.max_step),
                    _cell(m.mean),
                    f"{m.nan:,}" if m.nan else "",
                    f"{m.inf:,}" if m.inf else "",
                ]
            )
        _print_table(
            ["METRIC", "COUNT", "FIRST", "LAST", "MIN (STEP)", "MAX (STEP)", "MEAN", "NAN", "INF"],
            rows,
            right={1, 2, 3, 4, 5, 6, 7, 8},
        )
    if other:
        print()
        rows = [[k, f"{m.count:,}", _cell(m.first), _cell(m.last)] for k, m in other.items()]
        _print_table(["KEY", "COUNT", "FIRST", "LAST"], rows, right={1})
    if not stats:
        print("\nno step records")
    return EXIT_OK


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
    return "–" if step is None else f"{_cell(value)} ({step})"


def _print_mapping(title: str, mapping: dict[str, Any]) -> None:
    flat = flatten(mapping) if mapping else {}
    if not flat:
        print(f"{title:<9} –")
        return
    width = max(len(k) for k in flat)
    for index, (key, value) in enumerate(flat.items()):
        label = title if index == 0 else ""
        print(f"{label:<9} {key:<{width}} = {_cell(value, 60)}")


# ── tail ──────────────────────────────────────────────────────────────────────────────


def cmd_tail(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.lines < 0:
        parser.error("-n must be 0 or more")
    if not args.interval > 0 or math.isinf(args.interval):
        parser.error(f"--interval must be a positive number of seconds, not {args.interval}")
    path = resolve_run(args.run, Path(args.root))
    snapshot = _snapshot(path)
    header = read_header(snapshot)
    records = last_steps(snapshot, args.lines)
    if args.keys and (records or header.steps):
        # Keys are checked against the last steps only: a run being followed may not
        # have logged anything yet.
        known = set(flatten(header.last))
        for record in records:
            known.update(flat_data(record["data"]))
        _check_keys(
            parser,
            "-k",
            args.keys,
            known,
            problem="no such key in the last steps of the run",
            listing="keys there",
        )
    printer = _TailPrinter(args.keys, args.json)
    for record in records:
        printer.step(record)
    _warn_corrupt("tail", path, snapshot.corrupt)
    if not args.follow:
        return EXIT_OK
    if header.ended:
        printer.end(header.status)
        return EXIT_OK
    return _follow(snapshot, printer, args.interval)


def _follow(snapshot: RunSnapshot, printer: _TailPrinter, interval: float) -> int:
    """Print the steps appended after the snapshot until the run ends or its writer is
    gone."""
    path = snapshot.path
    with open(path, "rb") as f:
        f.seek(snapshot.end)
        offset = snapshot.end  # where `pending` starts in the file
        pending = b""
        # Since when the file has not grown: a writer killed long ago is given up at once.
        quiet_since = min(time.time(), os.fstat(f.fileno()).st_mtime)
        while True:
            chunk = f.read()
            if not chunk:
                gone = writer_state(snapshot.start) is WriterState.GONE
                if gone and time.time() - quiet_since >= WRITER_GONE_GRACE:
                    pid, host = snapshot.start.get("pid"), snapshot.start.get("host")
                    raise CommandError(
                        f"the writer of {path} (pid {pid} on {host}) is gone and the run "
                        "has no run-end record: it stays incomplete"
                    )
                time.sleep(interval)
                continue
            quiet_since = time.time()
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # a line the writer has not finished yet
            for line in lines:
                start, offset = offset, offset + len(line) + 1
                try:
                    record = parse_record(line)
                except CorruptLineError:
                    _warn_corrupt("tail", path, {line_number(path, start)})
                    continue
                if record is None:
                    continue
                if record.get("type") == "run_end":
                    printer.end(str(record.get("status")))
                    return EXIT_OK
                if "type" not in record:
                    printer.step(record)


class _TailPrinter:
    def __init__(self, keys: list[str] | None, raw: bool) -> None:
        from ._values import ValueEncoder

        self.keys = keys
        self.raw = raw
        self.header_done = False
        # --json prints records as the file stores them: NaN and big integers tagged.
        self.encoder = ValueEncoder(max_event_bytes=2**62)

    def step(self, record: dict[str, Any]) -> None:
        if self.raw:
            data = record["data"]
            if self.keys:
                flat = flat_data(data)
                data = {k: flat[k] for k in self.keys if k in flat}
            encoded = self.encoder.encode_row(record["step"], record["time"], data)
            line = encoded.decode().rstrip("\n")
        elif self.keys:
            if not self.header_done:
                print("  ".join([f"{'STEP':>8}", *(f"{k:>14}" for k in self.keys)]))
                self.header_done = True
            data = flat_data(record["data"])
            cells = [f"{_cell(data.get(k), 14) if k in data else '':>14}" for k in self.keys]
            line = "  ".join([f"{record['step']:>8}", *cells])
        else:
            pairs = " ".join(f"{k}={_cell(v, 40)}" for k, v in record["data"].items())
            line = f"{record['step']:>8}  {_clock(record['time'], ms=True)}  {pairs}"
        print(line, flush=True)

    def end(self, status: str) -> None:
        # With --json, stdout carries step records only (for `| jq`): the notice goes
        # to stderr.
        print(f"-- run ended: {status}", file=sys.stderr if self.raw else sys.stdout, flush=True)


# ── plot ──────────────────────────────────────────────────────────────────────────────


def cmd_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        width, height = (float(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 8x4.5, not {args.size!r}")
    if not (0 < width < math.inf and 0 < height < math.inf):
        parser.error(f"--size needs a width and height above 0 inches, not {args.size!r}")
    if args.labels and len(args.labels) != len(args.runs):
        parser.error("give one --label per run")
    if args.max_points < 10:
        parser.error("--max-points must be at least 10")
    if args.smooth < 0:
        parser.error(f"--smooth must be 0 (off) or a number of points, not {args.smooth}")
    if args.dpi < 1:
        parser.error(f"--dpi must be at least 1, not {args.dpi}")
    paths = [resolve_run(spec, Path(args.root)) for spec in args.runs]
    return _plot_files(
        paths,
        args.keys or ["loss"],
        Path(args.output),
        title=args.title,
        labels=args.labels,
        parser=parser,
        x_axis=args.x,
        window=args.smooth,
        log_y=args.log_y,
        size=(width, height),
        dpi=args.dpi,
        max_points=args.max_points,
    )


def _plot_files(
    paths: list[Path],
    keys: list[str],
    out: Path,
    *,
    title: str | None,
    labels: list[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    **options: Any,
) -> int:
    from . import _plot

    require("matplotlib", "plot", "steplog plot")  # fail before reading anything
    runs = []
    headers = []
    for index, path in enumerate(paths):
        snapshot = _snapshot(path)
        header = read_header(snapshot)
        headers.append(header)
        label = labels[index] if labels else f"{header.experiment}/{header.run_id}"
        with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
            series = _plot.load_series(snapshot, keys, options.get("x_axis", "step"), update)
        _warn_corrupt("plot", path, snapshot.corrupt)
        runs.append((label, series))
    for key in keys:
        found = [series[key] for _, series in runs if series[key].found]
        if not found and parser is not None:
            numeric = {k for h in headers for k, v in flatten(h.last).items() if is_number(v)}
            _check_keys(
                parser,
                "-k",
                [key],
                numeric,
                problem="no such key in the run" + ("s" if len(paths) > 1 else ""),
                listing="keys with numbers in the last steps",
            )
        if any(len(s.y) for s in found):
            continue
        if any(s.lists for s in found):
            why = "holds lists (vectors), not numbers; plot draws keys with one number per step"
        elif any(s.non_numeric for s in found):
            why = "holds text or other values that are not numbers"
        elif found:
            why = "holds only NaN or infinite values"
        else:
            why = "is not in the run(s)"
        raise CommandError(f"nothing to draw: {key!r} {why}")
    notes = _plot.plot(runs, keys, out, title=title, **options)
    for note in notes:
        print(f"steplog plot: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return EXIT_OK


# ── compare ───────────────────────────────────────────────────────────────────────────


def cmd_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    paths = [resolve_run(spec, Path(args.root)) for spec in args.runs]
    snapshots = [_snapshot(p) for p in paths]
    headers = [read_header(s) for s in snapshots]
    all_stats = []
    for path, snapshot in zip(paths, snapshots, strict=True):
        with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
            all_stats.append(metric_stats(snapshot, update).metrics)
        _warn_corrupt("compare", path, snapshot.corrupt)
    numeric = {k for s in all_stats for k, m in s.items() if m.numeric}
    _check_keys(
        parser,
        "--max",
        args.max,
        numeric,
        problem="no such metric in these runs",
        listing="metrics",
    )
    _check_keys(
        parser,
        "-k",
        args.keys or [],
        {k for s in all_stats for k in s},
        problem="no such key in these runs",
        listing="keys",
    )
    names = [h.run_id for h in headers]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    rows: list[list[str]] = [
        ["experiment", *(h.experiment for h in headers)],
        ["status", *(h.status for h in headers)],
        ["steps", *(f"{h.steps:,}" for h in headers)],
        ["duration", *(_duration(h.duration) for h in headers)],
    ]
    configs = [flatten(h.config) for h in headers]
    config_keys = list(dict.fromkeys(k for c in configs for k in c))
    missing = object()
    for key in config_keys:
        values = [c.get(key, missing) for c in configs]
        same = all(_equal(v, values[0]) for v in values[1:])
        if same and not args.all_config:
            continue
        rows.append([f"config.{key}", *("–" if v is missing else _cell(v, 30) for v in values)])
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
        rows.append([f"{key} (last)", *(_cell(v) if v is not None else "–" for v in lasts)])
        cells = []
        for b in bests:
            mark = " *" if b is not None and b == winner and len(paths) > 1 else ""
            cells.append("–" if b is None else _cell(b) + mark)
        rows.append([f"{key} ({'max' if higher else 'min'})", *cells])
    _print_table(["", *names], rows, right=set(range(1, len(names) + 1)))
    if metrics and len(paths) > 1:
        print("* best of the runs compared")
    return EXIT_OK


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


# ── export ────────────────────────────────────────────────────────────────────────────


def cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ._export import export

    if args.output == "-" and args.format != "csv":
        parser.error("only CSV can go to stdout")
    path = resolve_run(args.run, Path(args.root))
    snapshot = _snapshot(path)
    out: Path | None = None  # stdout
    if args.output != "-":
        out = Path(args.output or f"{snapshot.start.get('run_id')}.{args.format}")
    rows, columns = export(snapshot, out, args.format, progress_factory=_bar_factory)
    _warn_corrupt("export", path, snapshot.corrupt)
    if out is not None:
        print(f"wrote {out} ({_count(rows, 'row')}, {_count(columns, 'column')})")
    return EXIT_OK


def _bar_factory(total: int, desc: str) -> Any:
    return _progress.bar(total, desc)


# ── replay ────────────────────────────────────────────────────────────────────────────


def cmd_replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .backends.base import Backend
    from .replay import _replay_snapshot

    if not (args.mlflow or args.wandb or args.tensorboard or args.trackio or args.jsonl):
        parser.error("give at least one of --mlflow, --wandb, --tensorboard, --trackio, --jsonl")
    paths = [resolve_run(spec, Path(args.root)) for spec in args.runs]
    failed = 0
    for path in paths:
        snapshot = _snapshot(path)
        header = read_header(snapshot)
        backends: list[Backend] = []
        if args.mlflow:
            from .backends.mlflow import MlflowBackend

            backends.append(MlflowBackend(args.mlflow, experiment_name=args.mlflow_experiment))
        if args.wandb:
            from .backends.wandb import WandbBackend

            backends.append(WandbBackend(args.wandb, mode=args.wandb_mode))
        if args.tensorboard:
            from .backends.tensorboard import TensorBoardBackend

            backends.append(TensorBoardBackend(args.tensorboard))
        if args.trackio:
            from .backends.trackio import TrackioBackend

            backends.append(TrackioBackend(args.trackio))
        if args.jsonl:
            if Path(args.jsonl).resolve() == path.parent.parent.resolve():
                raise CommandError(f"--jsonl {args.jsonl} is where {path} already is")
            backends.append(JsonlBackend(args.jsonl))
        results = _replay_snapshot(snapshot, *backends)
        _warn_corrupt("replay", path, snapshot.corrupt)
        parts = []
        for name, stats in results.items():
            part = f"{name} {stats.delivered:,} delivered"
            if stats.failed or stats.errors:
                failed += 1
                part += f", {stats.failed:,} failed ({stats.last_error})"
            parts.append(part)
        print(f"{header.experiment}/{header.run_id} ({header.status}): {'; '.join(parts)}")
    return EXIT_FAIL if failed else EXIT_OK


# ── formatting ────────────────────────────────────────────────────────────────────────


def _snapshot(path: Path) -> RunSnapshot:
    try:
        return open_run(path)
    except ValueError as exc:
        raise RunFileError(str(exc)) from None


def _warn_corrupt(command: str, path: Path, numbers: set[int]) -> None:
    """One line on stderr for the corrupt lines a command skipped in ``path``."""
    if not numbers:
        return
    listed = sorted(numbers)
    shown = ", ".join(str(n) for n in listed[:10])
    if len(listed) > 10:
        shown += f" and {len(listed) - 10:,} more"
    which = "line" if len(listed) == 1 else "lines"
    print(
        f"steplog {command}: skipped {_count(len(listed), 'corrupt line')} ({which} {shown}) "
        f"in {path}",
        file=sys.stderr,
    )


def _check_keys(
    parser: argparse.ArgumentParser,
    option: str,
    keys: list[str],
    known: set[str],
    *,
    problem: str,
    listing: str,
) -> None:
    """A usage error for the first of ``keys`` not in ``known``, listing those."""
    for key in keys:
        if key not in known:
            there = ", ".join(sorted(known)) or "none"
            parser.error(f"{option} {key!r}: {problem} ({listing}: {there})")


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _cell(value: Any, width: int = 24) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        digits = str(abs(value))
        if len(digits) <= 15:
            return str(value)
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[0]}.{digits[1:6]}e+{len(digits) - 1}"  # beyond float range too
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (math.inf, -math.inf):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _clock(timestamp: float, ms: bool = False) -> str:
    local = time.localtime(timestamp)
    if ms:
        return time.strftime("%H:%M:%S", local) + f".{int(timestamp % 1 * 1000):03d}"
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def _print_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
