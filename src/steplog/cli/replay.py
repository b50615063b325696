"""``steplog replay``: recorded runs sent into the backends of :mod:`._backends`."""

from __future__ import annotations

import argparse

from ..runfile.header import read_header
from ..runfile.snapshot import open_run
from . import _backends
from ._common import (
    EXIT_FAIL,
    EXIT_OK,
    RUN_HELP,
    Subparsers,
    add_command,
    add_root_option,
    run_path,
    warn_corrupt,
)

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog replay``, with an option per backend of the registry."""
    titles = [b.title for b in _backends.BACKENDS]
    reruns = [b.rerun for b in _backends.BACKENDS if b.rerun]
    replay = add_command(
        subparsers,
        "replay",
        help=f"send recorded runs into {_backends.or_list(titles)}",
        description="Replays finished or crashed runs from their JSONL files into the "
        "backends given (at least one): the offline-first path for clusters without "
        "network. Each run keeps its id, config, steps, times, status and summary. "
        f"Re-running a replay does not duplicate points in {_backends.or_list(reruns)}; "
        "see docs/backends.md.",
        handler=cmd_replay,
    )
    replay.add_argument("runs", nargs="+", metavar="RUN", help=RUN_HELP)
    add_root_option(replay)
    _backends.add_options(replay)


def cmd_replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Send each run into the backends given; returns the exit code (1 if any lost events)."""
    from ..replay import _replay_snapshot

    chosen = _backends.chosen(args)
    if not chosen:
        flags = ", ".join(b.flag for b in _backends.BACKENDS)
        parser.error(f"give at least one of {flags}")
    paths = [run_path(spec, args.root) for spec in args.runs]
    failed = 0
    for path in paths:
        snapshot = open_run(path)
        header = read_header(snapshot)
        backends = [b.build(args, path) for b in chosen]
        results = _replay_snapshot(snapshot, *backends)
        warn_corrupt("replay", path, snapshot.corrupt)
        parts = []
        for name, stats in results.items():
            part = f"{name} {stats.delivered:,} delivered"
            if stats.failed or stats.errors:
                failed += 1
                part += f", {stats.failed:,} failed ({stats.last_error})"
            parts.append(part)
        print(f"{header.experiment}/{header.run_id} ({header.status}): {'; '.join(parts)}")
    return EXIT_FAIL if failed else EXIT_OK
