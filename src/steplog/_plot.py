"""``steplog plot``: metric curves of one or more runs, as a PNG (or SVG/PDF) file.

Large runs are drawn from at most ``max_points`` buckets per curve: each bucket keeps
its mean (the line) and its min and max (a shaded envelope), so a spike in a 10-million
step run stays visible while matplotlib only draws a few thousand points.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._extras import require
from .runfile.read import RunSnapshot, iter_steps
from .runfile.schema import SYSTEM, is_number

__all__ = ["SYSTEM_PREFIX", "Series", "downsample", "load_series", "plot", "smooth"]

#: Plot keys with this prefix are read from the system-metrics records
#: (``system.rss_mb``, ``system.gpu0.util_percent``; see docs/cli.md).
SYSTEM_PREFIX = "system."


def _numpy() -> Any:
    return require("numpy", "plot", "steplog plot")


@dataclasses.dataclass
class Series:
    """One key of one run: x (step or seconds since the start) and finite values."""

    x: Any  # numpy float64 array
    y: Any
    nonfinite: int = 0  # NaN / ±inf values, not drawn
    non_numeric: int = 0  # strings, lists, … under the key, not drawn
    lists: int = 0  # how many of the non-numeric values are lists (vectors)

    @property
    def found(self) -> bool:
        """Whether the key holds a value at any step."""
        return bool(len(self.y) or self.nonfinite or self.non_numeric)


def load_series(
    snapshot: RunSnapshot,
    keys: Sequence[str],
    x_axis: str = "step",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Series]:
    """Read ``keys`` from a run snapshot in one streaming pass."""
    np = _numpy()
    xs = {k: array("d") for k in keys}
    ys = {k: array("d") for k in keys}
    nonfinite = dict.fromkeys(keys, 0)
    non_numeric = dict.fromkeys(keys, 0)
    lists = dict.fromkeys(keys, 0)
    start = float(snapshot.start["start_time"])
    lookups = [(k, "." not in k) for k in keys]
    by_step = x_axis == "step"
    system_keys = [(k, k[len(SYSTEM_PREFIX) :]) for k in keys if k.startswith(SYSTEM_PREFIX)]
    last_step = [0]  # system samples are drawn at the last step written before them

    def system(record: dict[str, Any]) -> None:
        data, when = record.get("data"), record.get("time")
        if record.get("type") != SYSTEM or type(data) is not dict:
            return
        if not isinstance(when, (int, float)):
            return
        x = last_step[0] if by_step else when - start
        for key, name in system_keys:
            value: Any = data.get(name)
            if not is_number(value):
                if value is not None:
                    non_numeric[key] += 1
            elif value - value != 0:
                nonfinite[key] += 1
            else:
                xs[key].append(x)
                ys[key].append(float(value))

    others = system if system_keys else None
    for record in iter_steps(snapshot, progress, others=others):
        data = record["data"]
        last_step[0] = record["step"]
        x = record["step"] if by_step else record["time"] - start
        for key, flat in lookups:
            value = data.get(key) if flat else _lookup(data, key)
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
            xs[key].append(x)
            ys[key].append(value)
    return {
        k: Series(
            np.frombuffer(xs[k], dtype=np.float64),
            np.frombuffer(ys[k], dtype=np.float64),
            nonfinite[k],
            non_numeric[k],
            lists[k],
        )
        for k in keys
    }


def _values(count: int, kind: str) -> str:
    return f"{count:,} {kind} value{'' if count == 1 else 's'}"


def _lookup(data: dict[str, Any], key: str) -> Any:
    """``data[key]``, or a nested value for a dotted key (``"grad.norm"``)."""
    if key in data:
        return data[key]
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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
    x_axis: str = "step",
    window: int = 0,
    log_y: bool = False,
    title: str | None = None,
    size: tuple[float, float] = (8.0, 4.5),
    dpi: int = 100,
    max_points: int = 4000,
) -> list[str]:
    """Draw ``keys`` (one panel each) for every run; returns notes for the user."""
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
        for index, (label, series) in enumerate(runs):
            s = series[key]
            color = colors[index % len(colors)]
            if s.nonfinite:
                notes.append(f"{label}: {_values(s.nonfinite, f'non-finite {key}')} not drawn")
            if s.non_numeric:
                notes.append(f"{label}: {_values(s.non_numeric, f'non-numeric {key}')} not drawn")
            if len(s.y) == 0:
                notes.append(f"{label}: no numeric {key!r} values")
                continue
            y = smooth(s.y, window)
            mid, mean, low, high = downsample(s.x, y, max_points)
            legend = label if len(runs) > 1 or len(keys) == 1 else key
            if len(s.y) > max_points:
                ax.fill_between(mid, low, high, color=color, alpha=0.25, linewidth=0)
                legend += f" ({len(s.y):,} points, min–max envelope)"
            elif window > 1:
                ax.plot(s.x, s.y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(mid, mean, color=color, linewidth=1.4, label=legend)
        if log_y:
            ax.set_yscale("log")
        ylabel = key + (f" (moving mean of {window})" if window > 1 else "")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    axes[-1][0].set_xlabel("step" if x_axis == "step" else "seconds since start")
    if title is None:
        names = sorted({label.split("/")[0] for label, _ in runs})
        title = f"{', '.join(names)}: {', '.join(keys)}"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return notes
