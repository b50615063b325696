"""What the commands share: exit codes, the error a command raises, how a command and
its ``RUN``/``--root`` arguments are declared, and reading run files with the warning
for skipped lines.

Commands that read step records take a snapshot of each run file when they start (see
``runfile.snapshot``: ``open_run`` raises ``RunFileError`` for a file that is not a run),
skip corrupt lines in it with one warning per file on stderr, and leave a torn last line
out silently.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from .. import _progress
from .._extras import require
from ..errors import RunNotFoundError
from ..runfile.find import resolve_run, resolve_runs
from ..runfile.header import read_header
from ..runfile.schema import flatten, is_number
from ..runfile.snapshot import open_run
from ._format import count

__all__ = [
    "DEFAULT_ROOT",
    "EXIT_FAIL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RUNS_HELP",
    "RUN_HELP",
    "CommandError",
    "Handler",
    "Subparsers",
    "add_command",
    "add_root_option",
    "check_keys",
    "plot_files",
    "run_path",
    "run_paths",
    "warn_corrupt",
]

DEFAULT_ROOT = "runs"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

RUN_HELP = (
    "a run file, a run directory (its latest run), 'latest', an experiment as 'steplog ls' "
    "prints it (its latest run), or a run id (or a unique prefix, or EXPERIMENT/ID) under "
    "--root"
)
RUNS_HELP = RUN_HELP + ", or group:NAME for every run of a group (one per rank)"

#: A command's handler: the parsed arguments and the command's own parser (for usage
#: errors) in, the exit code out.
Handler: TypeAlias = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """Raised when a command cannot do its work; the message is printed and the exit code
    is 1."""


def add_command(
    subparsers: Subparsers, name: str, *, help: str, description: str, handler: Handler
) -> argparse.ArgumentParser:
    """Add the parser of command ``name``, which ``main`` runs with ``handler``."""
    sub = subparsers.add_parser(name, help=help, description=description)
    # Handlers report bad values with the subcommand's own usage line.
    sub.set_defaults(handler=handler, command_parser=sub)
    return sub


def add_root_option(parser: argparse.ArgumentParser) -> None:
    """``--root``, where run ids are looked up."""
    parser.add_argument(
        "--root",
        default=os.environ.get("STEPLOG_ROOT", DEFAULT_ROOT),
        help="where run ids are looked up (default: $STEPLOG_ROOT or runs)",
    )


def run_path(spec: str, root: str) -> Path:
    """The run file a command's ``RUN`` argument names, looked up under ``--root``.

    Every command takes the same specs, the experiment names ``steplog ls`` prints
    included (``runfile.find.resolve_run`` says what each one means).

    Raises:
        RunNotFoundError: nothing or several match; when ``--root`` is not a directory,
            the message says to give it.
    """
    with _root_hint(Path(root)):
        return resolve_run(spec, Path(root), experiment_names=True)


def run_paths(spec: str, root: str) -> list[Path]:
    """Like :func:`run_path`, and ``group:NAME`` gives every run of that group, by rank."""
    with _root_hint(Path(root)):
        return resolve_runs(spec, Path(root), experiment_names=True)


@contextmanager
def _root_hint(root: Path) -> Iterator[None]:
    """Add how to name the root to a lookup that failed for want of one."""
    try:
        yield
    except RunNotFoundError as exc:
        if root.is_dir():
            raise
        raise RunNotFoundError(f"{exc} (give --root DIR or set $STEPLOG_ROOT)") from None


def warn_corrupt(command: str, path: Path, numbers: set[int]) -> None:
    """One line on stderr for the corrupt lines a command skipped in ``path``."""
    if not numbers:
        return
    listed = sorted(numbers)
    shown = ", ".join(str(n) for n in listed[:10])
    if len(listed) > 10:
        shown += f" and {len(listed) - 10:,} more"
    which = "line" if len(listed) == 1 else "lines"
    print(
        f"steplog {command}: skipped {count(len(listed), 'corrupt line')} ({which} {shown}) "
        f"in {path}",
        file=sys.stderr,
    )


def check_keys(
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


def plot_files(
    paths: list[Path],
    keys: list[str],
    out: Path,
    *,
    title: str | None,
    labels: list[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    **options: Any,
) -> int:
    """Plot ``keys`` of the runs at ``paths`` to ``out``: ``steplog plot``, and ``steplog
    demo --plot``; returns the exit code.

    With ``parser``, a key none of the runs has is a usage error listing the keys there
    are.
    """
    from .. import _plot

    require("matplotlib", "plot", "steplog plot")  # fail before reading anything
    x_axis = options.get("x_axis", _plot.STEP)
    x_key = None if x_axis in (_plot.STEP, _plot.TIME) else x_axis
    read = [*keys, x_key] if x_key is not None and x_key not in keys else keys
    runs = []
    headers = []
    for index, path in enumerate(paths):
        snapshot = open_run(path)
        header = read_header(snapshot)
        headers.append(header)
        label = (labels[index] if labels else "") or f"{header.experiment}/{header.run_id}"
        with _progress.bar(snapshot.end - snapshot.body, f"reading {path.name}") as update:
            series = _plot.load_series(snapshot, read, x_axis, update)
        warn_corrupt("plot", path, snapshot.corrupt)
        runs.append((label, series))
    for key, option in [
        *([(x_key, "--x")] if x_key is not None else []),
        *((k, "-k") for k in keys),
    ]:
        found = [series[key] for _, series in runs if series[key].found]
        if not found and parser is not None:
            numeric = {k for h in headers for k, v in flatten(h.last).items() if is_number(v)}
            check_keys(
                parser,
                option,
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
        elif any(s.no_x for s in found):
            why = f"has no values in step records with a number under {x_axis!r} (--x)"
        elif found:
            why = "holds only NaN or infinite values"
        else:
            why = "is not in the run(s)"
        if option == "--x":
            raise CommandError(f"nothing to draw against: --x {key!r} {why}")
        raise CommandError(f"nothing to draw: {key!r} {why}")
    notes = _plot.plot(runs, keys, out, title=title, **options)
    for note in notes:
        print(f"steplog plot: {note}", file=sys.stderr)
    print(f"wrote {out}")
    return EXIT_OK
