"""``steplog sync``: a run sent into one backend of :mod:`._backends` as it grows,
resuming where an earlier sync stopped."""

from __future__ import annotations

import argparse
import math
import sys

from ..runfile.follow import WRITER_GONE_GRACE
from ..runfile.header import read_header
from ..runfile.snapshot import open_run
from . import _backends
from ._common import (
    EXIT_OK,
    RUN_HELP,
    CommandError,
    Subparsers,
    add_command,
    add_root_option,
    run_path,
    warn_corrupt,
)

__all__ = ["add_parser"]

#: What ``--to`` takes, and the MLflow URL each scheme stands for.
_TO_SCHEMES = {"http://": "http://", "https://": "https://", "mlflow://": "http://"}


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog sync``, with the replay command's backend options."""
    titles = [b.title for b in _backends.BACKENDS]
    sync = add_command(
        subparsers,
        "sync",
        help=f"stream a run into {_backends.or_list(titles)} as it grows, resumably",
        description="Sends a run into one backend and, with --follow, keeps sending the "
        "steps another process appends until the run ends (the remote run is then closed "
        "with the run's status) or its writer is gone from this host (exit 1). A cursor "
        "file next to the run (RUN.sync-BACKEND-HASH.json) records what the backend "
        "acknowledged: a sync that is stopped or killed is resumed by the next one, which "
        "sends nothing twice to MLflow and nothing after the run's end was delivered. "
        "Stopped before the run's end, a sync closes the remote run as unfinished until "
        "a later one goes on. See docs/cli.md for what resuming does per backend.",
        handler=cmd_sync,
    )
    sync.add_argument("run", metavar="RUN", help=RUN_HELP)
    add_root_option(sync)
    sync.add_argument(
        "--to",
        metavar="URL",
        help="MLflow tracking server: http(s)://HOST:PORT, or mlflow://HOST:PORT for http "
        "(the same as --mlflow)",
    )
    _backends.add_options(sync)
    sync.add_argument(
        "-f", "--follow", action="store_true", help="keep sending new steps until the run ends"
    )
    sync.add_argument("--interval", type=float, default=0.5, help="poll interval, s (0.5)")
    sync.add_argument("--cursor", metavar="PATH", help="the cursor file (default: next to the run)")


def cmd_sync(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Sync the run into the backend given; returns the exit code."""
    from ..sync import sync

    if args.to is not None:
        if args.mlflow:
            parser.error("--to and --mlflow both name an MLflow server: give one")
        scheme = next((s for s in _TO_SCHEMES if args.to.startswith(s)), None)
        if scheme is None:
            parser.error(
                f"--to {args.to}: give an MLflow server as http(s)://HOST:PORT or "
                "mlflow://HOST:PORT (other backends have their own options)"
            )
        args.mlflow = _TO_SCHEMES[scheme] + args.to[len(scheme) :]
    chosen = _backends.chosen(args)
    if len(chosen) != 1:
        flags = ", ".join(["--to", *(b.flag for b in _backends.BACKENDS)])
        given = "none" if not chosen else " and ".join(b.flag for b in chosen)
        parser.error(f"give exactly one of {flags} (got {given}); run one sync per backend")
    if not args.interval > 0 or math.isinf(args.interval):
        parser.error(f"--interval must be a positive number of seconds, not {args.interval}")
    path = run_path(args.run, args.root)
    header = read_header(open_run(path))
    backend = chosen[0].build(args, path)
    label = f"{header.experiment}/{header.run_id}"
    if args.follow:
        print(f"steplog sync: following {label} into {chosen[0].title}", file=sys.stderr)
    result = sync(
        path,
        backend,
        follow=args.follow,
        interval=args.interval,
        cursor=args.cursor,
        grace=WRITER_GONE_GRACE,
    )
    warn_corrupt("sync", path, set(result.corrupt))
    name = result.backend
    if result.up_to_date:
        print(f"{label}: {name} is up to date ({result.synced:,} events, run ended)")
        return EXIT_OK
    line = f"{label}: {name} has {result.synced:,} events ({result.sent:,} sent now)"
    stats = result.delivery
    if stats.failed:
        print(line, flush=True)
        raise CommandError(
            f"{name} did not take a batch ({stats.last_error}); the cursor stays after "
            f"{result.synced:,} events: run the sync again to go on"
        )
    if result.status is None:
        print(line, flush=True)
        raise CommandError(
            f"could not close the run in {name} ({stats.last_error}): run the sync again"
        )
    if result.ended:
        print(f"{line}, run {result.status}")
        return EXIT_OK
    if result.writer_gone:
        print(line, flush=True)
        pid, host = header.pid, header.host
        raise CommandError(
            f"the writer of {path} (pid {pid} on {host}) is gone and the run has no "
            f"run-end record: it stays unfinished in {name}"
        )
    print(f"{line}; the run has not ended: sync again, or with --follow, to send the rest")
    return EXIT_OK
