"""``steplog plot``: metric curves of one or more runs, as a PNG (or SVG/PDF) file.

Large runs are drawn from at most ``max_points`` buckets per curve: each bucket keeps
its mean (the line) and its min and max (a shaded envelope), so a spike in a 10-million
step run stays visible while matplotlib only draws a few thousand points.

The x axis is the step, the time since the run started, or any numeric key of the step
records (``trial``, ``epoch``, ``tokens``). Where a resumed run's segments begin, a faint
vertical line is drawn, labelled in the top panel.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._extras import require
from .runfile.records import RecordKind, kind_of
from .runfile.schema import is_number, lookup
from .runfile.snapshot import RunSnapshot, iter_steps

__all__ = [
    "STEP",
    "SYSTEM_PREFIX",
    "TIME",
    "Series",
    "downsample",
    "load_series",
    "plot",
    "smooth",
]

#: Plot keys with this prefix are read from the system-metrics records
#: (``system.rss_mb``, ``system.gpu0.util_percent``; see docs/cli.md).
SYSTEM_PREFIX = "system."

#: The x axes that are not a key of the step records.
STEP, TIME = "step", "time"


def _numpy() -> Any:
    return require("numpy", "plot", "steplog plot")


@dataclasses.dataclass
class Series:
    """One key of one run: x (the step, seconds since the start, or the x key's value)
    and finite values."""

    x: Any  # numpy float64 array
    y: Any
    nonfinite: int = 0  # NaN / ±inf values, not drawn
    non_numeric: int = 0  # strings, lists, … under the key, not drawn
    lists: int = 0  # how many of the non-numeric values are lists (vectors)
    no_x: int = 0  # values in records without a number under the x key, not drawn
    #: Where the run's resumed segments begin: (x, segment number). The run's, the same
    #: for each of its keys.
    resumes: tuple[tuple[float, int], ...] = ()

    @property
    def found(self) -> bool:
        """Whether the key holds a value at any step."""
        return bool(len(self.y) or self.nonfinite or self.non_numeric or self.no_x)


def load_series(
    snapshot: RunSnapshot,
    keys: Sequence[str],
    x_axis: str = STEP,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Series]:
    """Read ``keys`` from a run snapshot in one streaming pass.

    ``x_axis`` is ``"step"``, ``"time"`` (seconds since the run started) or a key of the
    step records: a value is then drawn at the number under that key in its own record,
    and a system sample at the x of the last step record before it.
    """
    np = _numpy()
    xs = {k: array("d") for k in keys}
    ys = {k: array("d") for k in keys}
    nonfinite = dict.fromkeys(keys, 0)
    non_numeric = dict.fromkeys(keys, 0)
    lists = dict.fromkeys(keys, 0)
    no_x = dict.fromkeys(keys, 0)
    start = float(snapshot.start["start_time"])
    lookups = [(k, "." not in k) for k in keys]
    by_step, by_time = x_axis == STEP, x_axis == TIME
    x_key = None if by_step or by_time else x_axis
    x_flat = x_key is not None and "." not in x_key
    system_keys = [(k, k[len(SYSTEM_PREFIX) :]) for k in keys if k.startswith(SYSTEM_PREFIX)]
    # System samples are drawn at the x of the last step record written before them.
    last_x: list[float | None] = [0.0 if x_key is None else None]
    resumes: list[tuple[float, int]] = []
    waiting: list[int] = []  # resumed segments still to meet the x key's first value

    def system(record: dict[str, Any]) -> None:
        data, when = record.get("data"), record.get("time")
        if type(data) is not dict or not isinstance(when, (int, float)):
            return
        x = when - start if by_time else last_x[0]
        for key, name in system_keys:
            value: Any = data.get(name)
            if not is_number(value):
                if value is not None:
                    non_numeric[key] += 1
            elif value - value != 0:
                nonfinite[key] += 1
            elif x is None:
                no_x[key] += 1
            else:
                xs[key].append(x)
                ys[key].append(float(value))

    def resume(record: dict[str, Any]) -> None:
        segment, step, when = record.get("segment"), record.get("step"), record.get("time")
        segment = segment if type(segment) is int else len(resumes) + len(waiting) + 1
        if by_step and type(step) is int:
            resumes.append((float(step), segment))
        elif by_time and isinstance(when, (int, float)):
            resumes.append((when - start, segment))
        elif x_key is not None:
            waiting.append(segment)

    def other(record: dict[str, Any]) -> None:
        kind = kind_of(record)
        if kind is RecordKind.SYSTEM and system_keys:
            system(record)
        elif kind is RecordKind.RESUME:
            resume(record)

    x: Any
    for record in iter_steps(snapshot, progress, others=other):
        data = record["data"]
        if x_key is not None:
            x = _finite(data.get(x_key) if x_flat else lookup(data, x_key))
            if waiting and x is not None:
                resumes.extend((x, segment) for segment in waiting)
                waiting.clear()
        elif by_step:
            x = record["step"]
        else:
            x = record["time"] - start
        last_x[0] = x
        for key, flat in lookups:
            value = data.get(key) if flat else lookup(data, key)
            if value is None:
                continue
            kind = type(value)
            if kind is not float and kind is not int:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    non_numeric[key] += 1
                    if isinstance(value, list):
                        lists[key] += 1
                    continue
                value = float(value)
            if value - value != 0:  # NaN or ±inf
                nonfinite[key] += 1
                continue
            if x is None:
                no_x[key] += 1
                continue
            xs[key].append(x)
            ys[key].append(value)
    return {
        k: Series(
            np.frombuffer(xs[k], dtype=np.float64),
            np.frombuffer(ys[k], dtype=np.float64),
            nonfinite[k],
            non_numeric[k],
            lists[k],
            no_x[k],
            tuple(resumes),
        )
        for k in keys
    }


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return number if number - number == 0 else None


def _values(count: int, kind: str) -> str:
    return f"{count:,} {kind} value{'' if count == 1 else 's'}"


def smooth(y: Any, window: int) -> Any:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    np = _numpy()
    if window <= 1 or len(y) == 0:
        return y
    cumsum = np.cumsum(np.concatenate(([0.0], y)))
    n = np.arange(1, len(y) + 1)
    lo = np.maximum(n - window, 0)
    return (cumsum[n] - cumsum[lo]) / (n - lo)


def downsample(x: Any, y: Any, buckets: int) -> tuple[Any, Any, Any, Any]:
    """Split into ``buckets`` equal runs of points: (x, mean, min, max) per bucket."""
    np = _numpy()
    if len(y) <= buckets:
        return x, y, y, y
    edges = np.linspace(0, len(y), buckets + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(edges, len(y)))
    mean = np.add.reduceat(y, edges) / counts
    low = np.minimum.reduceat(y, edges)
    high = np.maximum.reduceat(y, edges)
    mid = np.add.reduceat(x, edges) / counts
    return mid, mean, low, high


def plot(
    runs: Sequence[tuple[str, dict[str, Series]]],
    keys: Sequence[str],
    out: Path,
    *,
    x_axis: str = STEP,
    window: int = 0,
    log_y: bool = False,
    title: str | None = None,
    size: tuple[float, float] = (8.0, 4.5),
    dpi: int = 100,
    max_points: int = 4000,
) -> list[str]:
    """Draw ``keys`` (one panel each) for every run; returns notes for the user.

    ``window`` (a moving mean) applies to each curve of at least twice as many points,
    and ``log_y`` to each panel whose values are all above 0: the others are drawn as
    they are, with a note saying so.
    """
    matplotlib = require("matplotlib", "plot", "steplog plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes: list[str] = []
    height = size[1] * (1 + 0.6 * (len(keys) - 1))
    fig, axes = plt.subplots(
        len(keys), 1, figsize=(size[0], height), dpi=dpi, sharex=True, squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, key in enumerate(keys):
        ax = axes[row][0]
        smoothed = drawn = False
        positive = True
        for index, (label, series) in enumerate(runs):
            s = series[key]
            color = colors[index % len(colors)]
            if s.nonfinite:
                notes.append(f"{label}: {_values(s.nonfinite, f'non-finite {key}')} not drawn")
            if s.non_numeric:
                notes.append(f"{label}: {_values(s.non_numeric, f'non-numeric {key}')} not drawn")
            if s.no_x:
                notes.append(
                    f"{label}: {_values(s.no_x, key)} without a number under {x_axis!r} not drawn"
                )
            if len(s.y) == 0:
                notes.append(f"{label}: no numeric {key!r} values")
                continue
            # A moving mean of N over fewer than 2N points is mostly its ramp-up: a
            # 9-sample system-metrics curve is drawn as it is.
            smooths = window > 1 and len(s.y) >= 2 * window
            if window > 1 and not smooths:
                points = f"{len(s.y):,} point{'' if len(s.y) == 1 else 's'}"
                notes.append(
                    f"{label}: {key} has {points}, too few for --smooth {window}: drawn as is"
                )
            smoothed, drawn = smoothed or smooths, True
            positive = positive and bool(s.y.min() > 0)
            y = smooth(s.y, window) if smooths else s.y
            mid, mean, low, high = downsample(s.x, y, max_points)
            legend = label if len(runs) > 1 or len(keys) == 1 else key
            if len(s.y) > max_points:
                ax.fill_between(mid, low, high, color=color, alpha=0.25, linewidth=0)
                legend += f" ({len(s.y):,} points, min–max envelope)"
            elif smooths:
                ax.plot(s.x, s.y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(mid, mean, color=color, linewidth=1.4, label=legend)
        _mark_resumes(ax, runs, colors, labelled=row == 0)
        if log_y and drawn and positive:
            ax.set_yscale("log")
        elif log_y and drawn:
            notes.append(f"--log-y not applied to {key!r}: it has values of 0 or less")
        ylabel = key + (f" (moving mean of {window})" if smoothed else "")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    xlabel = {STEP: "step", TIME: "seconds since start"}.get(x_axis, x_axis)
    axes[-1][0].set_xlabel(xlabel)
    if title is None:
        names = sorted({label.split("/")[0] for label, _ in runs})
        title = f"{', '.join(names)}: {', '.join(keys)}"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return notes


def _mark_resumes(
    ax: Any, runs: Sequence[tuple[str, dict[str, Series]]], colors: list[str], *, labelled: bool
) -> None:
    """A faint vertical line where each resumed segment of each run begins, in the run's
    colour; labelled in the top panel."""
    for index, (_, series) in enumerate(runs):
        color = colors[index % len(colors)]
        resumes = next(iter(series.values())).resumes if series else ()
        for x, segment in resumes:
            ax.axvline(x, color=color, alpha=0.45, linestyle="--", linewidth=0.9)
            if labelled:
                text = "resumed" if segment == 1 else f"resumed ({segment})"
                ax.annotate(
                    text,
                    xy=(x, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(-2, -3),
                    textcoords="offset points",
                    rotation=90,
                    ha="right",
                    va="top",
                    fontsize="x-small",
                    color=color,
                    alpha=0.8,
                )
