"""The ``steplog`` command line (also ``python -m steplog``).

Commands: ``demo``, ``ls``, ``show``, ``tail``, ``plot``, ``compare``, ``export``,
``replay``, ``sync``, one module each, which adds the command's parser and holds its
handler. What several commands share is in ``_common`` and ``_format``; the backends
``replay`` and ``sync`` can send to are the one registry in ``_backends``. Command
modules import from those, never from each other or from this package.

Exit codes: 0 success; 1 the command could not do its work (no such run, unreadable
file, missing optional dependency, nothing to plot, a backend that cannot open, a run
followed by ``tail -f`` or ``sync -f`` whose writer is gone, a batch ``sync`` could not
send); 2 usage error (also a key the run does not have); 130 interrupted.

Commands that read step records take a snapshot of each run file when they start (see
``runfile.snapshot``: ``open_run`` raises ``RunFileError`` for a file that is not a run),
skip corrupt lines in it with one warning per file on stderr, and leave a torn last line
out silently.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import MissingExtraError, RunFileError, RunNotFoundError, TrackerError
from . import compare, demo, export, ls, plot, replay, show, sync, tail
from ._common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandError

__all__ = ["build_parser", "main"]

#: In the order ``steplog --help`` lists them.
_COMMANDS = (demo, ls, show, tail, plot, compare, export, replay, sync)


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
    """The ``steplog`` parser, with a subparser per command."""
    parser = argparse.ArgumentParser(
        prog="steplog",
        description="Experiment tracking that is free for the hot loop: run a demo, "
        "list, inspect, follow, plot, compare and export runs.",
        epilog="Exit codes: 0 success, 1 failure (no such run, unreadable file, missing "
        "optional dependency), 2 usage error, 130 interrupted.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser
