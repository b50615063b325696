"""``steplog plot``: metrics of one or more runs drawn to a PNG."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .._plot import SYSTEM_PREFIX
from ..runfile.find import GROUP_PREFIX, group_of
from ._common import RUNS_HELP, Subparsers, add_command, add_root_option, plot_files, run_paths

__all__ = ["add_parser"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``steplog plot``."""
    plot = add_command(
        subparsers,
        "plot",
        help="plot metrics of one or more runs to a PNG (needs steplog[plot])",
        description="Draws the chosen keys (one panel each) for every run given, "
        "overlaid. Runs with more points than --max-points are drawn as bucket means with "
        "a min-max envelope, so 10-million-step runs plot fast and spikes stay visible.",
        handler=cmd_plot,
    )
    plot.add_argument("runs", nargs="+", metavar="RUN", help=RUNS_HELP)
    add_root_option(plot)
    plot.add_argument("-k", "--key", action="append", dest="keys", help="key(s) to plot (loss)")
    plot.add_argument("-o", "--output", default="steplog-plot.png", help="output image")
    plot.add_argument(
        "--x",
        default="step",
        metavar="KEY",
        help="x axis: step, time (seconds since the start), or a key with numbers in the "
        "step records, such as trial, epoch or tokens (default: step)",
    )
    plot.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="moving mean of N, for curves of at least 2N points",
    )
    plot.add_argument(
        "--log-y", action="store_true", help="logarithmic y axis, for panels with values > 0"
    )
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--label", action="append", dest="labels", help="legend label per run")
    plot.add_argument("--size", default="8x4.5", help="figure size in inches, WxH (8x4.5)")
    plot.add_argument("--dpi", type=int, default=100, help="dots per inch (100)")
    plot.add_argument("--max-points", type=int, default=4000, help="buckets per curve (4000)")


def cmd_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the plot options and draw the runs; returns the exit code."""
    try:
        width, height = (float(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 8x4.5, not {args.size!r}")
    if not (0 < width < math.inf and 0 < height < math.inf):
        parser.error(f"--size needs a width and height above 0 inches, not {args.size!r}")
    if args.max_points < 10:
        parser.error("--max-points must be at least 10")
    if args.smooth < 0:
        parser.error(f"--smooth must be 0 (off) or a number of points, not {args.smooth}")
    if args.dpi < 1:
        parser.error(f"--dpi must be at least 1, not {args.dpi}")
    if not args.x or args.x.startswith(SYSTEM_PREFIX):
        parser.error(f"--x takes step, time or a key of the step records, not {args.x!r}")
    paths: list[Path] = []
    labels: list[str] = []
    groups: list[str] = []
    for spec in args.runs:
        found = run_paths(spec, args.root)
        paths += found
        if spec.startswith(GROUP_PREFIX) and not Path(spec).exists():
            labels += [_member_label(path) for path in found]  # a group: one curve per rank
            groups.append(spec[len(GROUP_PREFIX) :])
        else:
            labels += [""]
    title = args.title
    if title is None and groups:  # the curves are labelled by rank: name the group
        title = f"group {', '.join(groups)}: {', '.join(args.keys or ['loss'])}"
    if args.labels and len(args.labels) != len(paths):
        parser.error(
            f"give one --label per run ({len(paths)} runs"
            + (", counting each run of a group)" if len(paths) != len(args.runs) else ")")
        )
    return plot_files(
        paths,
        args.keys or ["loss"],
        Path(args.output),
        title=title,
        labels=args.labels or (labels if any(labels) else None),
        parser=parser,
        x_axis=args.x,
        window=args.smooth,
        log_y=args.log_y,
        size=(width, height),
        dpi=args.dpi,
        max_points=args.max_points,
    )


def _member_label(path: Path) -> str:
    """A group member's legend label: its rank, or its run id."""
    _, rank = group_of(path)
    return f"rank {rank}" if rank is not None else path.stem
