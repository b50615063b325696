"""``steplog tail``: the last steps of a run, and with ``-f`` the steps still to come."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from ..runfile.follow import RunFollower
from ..runfile.header import read_header
from ..runfile.records import RecordKind, kind_of
from ..runfile.schema import flat_data, flatten
from ..runfile.snapshot import RunSnapshot, last_steps, line_number, open_run
from ._common import (
    EXIT_OK,
    RUN_HELP,
    CommandError,
    Subparsers,
    add_command,
    add_root_option,
    check_keys,
    run_path,
    warn_corrupt,
)
from ._format import cell, clock

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog tail``."""
    tail = add_command(
        subparsers,
        "tail",
        help="print the last steps of a run; -f follows a run being written",
        description="Prints the last N step records. With -f, keeps printing new steps as "
        "another process writes them (a partly written last line is held back until "
        "complete) and stops when the run ends (exit 0), or when its writer process is "
        "gone without ending it (exit 1). With --json, stdout carries only step records; "
        "the run-ended notice goes to stderr.",
        handler=cmd_tail,
    )
    tail.add_argument("run", metavar="RUN", help=RUN_HELP)
    add_root_option(tail)
    tail.add_argument("-f", "--follow", action="store_true", help="follow new steps")
    tail.add_argument("-n", "--lines", type=int, default=10, help="steps to print first (10)")
    tail.add_argument(
        "-k", "--key", action="append", dest="keys", help="keys to print (nested: a.b)"
    )
    tail.add_argument("--interval", type=float, default=0.2, help="poll interval, s (0.2)")
    tail.add_argument("--json", action="store_true", help="print the raw JSON records")


def cmd_tail(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the last steps of a run, then with ``-f`` follow it; returns the exit code."""
    if args.lines < 0:
        parser.error("-n must be 0 or more")
    if not args.interval > 0 or math.isinf(args.interval):
        parser.error(f"--interval must be a positive number of seconds, not {args.interval}")
    path = run_path(args.run, args.root)
    snapshot = open_run(path)
    header = read_header(snapshot)
    records = last_steps(snapshot, args.lines)
    if args.keys and (records or header.steps):
        # Keys are checked against the last steps only: a run being followed may not
        # have logged anything yet.
        known = set(flatten(header.last))
        for record in records:
            known.update(flat_data(record["data"]))
        check_keys(
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
    warn_corrupt("tail", path, snapshot.corrupt)
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
    follower = RunFollower(snapshot)
    while True:
        records = follower.poll()
        if not records:
            if follower.watch.gone():
                writer = follower.writer
                pid, host = writer.get("pid"), writer.get("host")
                raise CommandError(
                    f"the writer of {path} (pid {pid} on {host}) is gone and the run "
                    "has no run-end record: it stays incomplete"
                )
            time.sleep(interval)
            continue
        for start, record in records:
            if record is None:
                warn_corrupt("tail", path, {line_number(path, start)})
                continue
            kind = kind_of(record)
            if kind is RecordKind.RUN_END:
                printer.end(str(record.get("status")))
                return EXIT_OK
            if kind is RecordKind.STEP:
                printer.step(record)


class _TailPrinter:
    def __init__(self, keys: list[str] | None, raw: bool) -> None:
        from ..runfile.codec import ValueEncoder

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
            cells = [f"{cell(data.get(k), 14) if k in data else '':>14}" for k in self.keys]
            line = "  ".join([f"{record['step']:>8}", *cells])
        else:
            pairs = " ".join(f"{k}={cell(v, 40)}" for k, v in record["data"].items())
            line = f"{record['step']:>8}  {clock(record['time'], ms=True)}  {pairs}"
        print(line, flush=True)

    def end(self, status: str) -> None:
        # With --json, stdout carries step records only (for `| jq`): the notice goes
        # to stderr.
        print(f"-- run ended: {status}", file=sys.stderr if self.raw else sys.stdout, flush=True)
