"""Live loss plot in a Jupyter output cell (``steplog[plot]``; the seed project's
LiveLossPlotTracker).

The fan-out redraws the chosen metrics at most ``every`` seconds apart (default 0.5 s:
≤ 2 redraws a second), rendering with matplotlib's Agg canvas in a worker thread and
replacing one display output in place; the hot loop never draws. Each curve keeps at most
``max_points`` points (older points are thinned by halving), so memory stays flat on long
runs. Outside a notebook (a script, a terminal IPython) the backend draws nothing and says
so once through ``logging``; the other backends are unaffected.
"""

from __future__ import annotations

import importlib
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio.to_thread

from .._extras import require
from ..events import Event, RunEnd, RunInfo
from .base import Backend

__all__ = ["LivePlotBackend", "in_notebook"]

logger = logging.getLogger("steplog")


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where rich output can be displayed)."""
    try:
        ipython: Any = importlib.import_module("IPython")
    except ImportError:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class LivePlotBackend(Backend):
    """Redraw metrics in the notebook cell that started the run.

    Args:
        keys: Metrics to draw, one panel each; default every numeric key seen (up to 6).
        every: Seconds between two redraws, at least.
        max_points: Points kept per curve.
        size: Figure size in inches (width, height per panel).
    """

    local = True  # an in-process sink: the writer thread feeds it

    name = "liveplot"

    def __init__(
        self,
        keys: Sequence[str] | None = None,
        *,
        every: float = 0.5,
        max_points: int = 2000,
        size: tuple[float, float] = (7.0, 2.6),
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be positive, got {every!r}")
        if max_points < 10:
            raise ValueError(f"max_points must be at least 10, got {max_points}")
        self._matplotlib = require("matplotlib", "plot", "LivePlotBackend")
        self.keys = list(keys) if keys else None
        self.every = every
        self.max_points = max_points
        self.size = size
        self.active = False
        self.redraws = 0
        self._series: dict[str, tuple[list[int], list[float], int]] = {}
        self._handle: Any = None
        self._last_draw = 0.0
        self._dirty = False
        self._title = ""
        self._added: Any = None  # the last batch whose points were added

    def __repr__(self) -> str:
        return f"LivePlotBackend(keys={self.keys!r}, every={self.every})"

    async def open(self, run: RunInfo) -> None:
        self._series = {}
        self._added = None
        self.redraws = 0
        self._dirty = False
        self._last_draw = 0.0
        self._title = f"{run.experiment} / {run.run_id}"
        self.active = in_notebook()
        if not self.active:
            logger.warning(
                "steplog: LivePlotBackend draws only in a Jupyter notebook; this is not one, "
                "so it will draw nothing (the other backends are unaffected)"
            )
            return
        display: Any = importlib.import_module("IPython.display").display
        self._handle = display(
            {"text/plain": f"steplog: waiting for {self._title}"}, raw=True, display_id=True
        )

    async def write(self, events: Sequence[Event]) -> None:
        if not self.active:
            return
        if events is self._added:  # a retry after a failed draw: the points are in
            await self._draw()
            return
        self._added = events
        for step, _, data in events:
            for key, value in data.items():
                if self.keys is not None and key not in self.keys:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                self._add(key, step, float(value))
        self._dirty = True
        if time.monotonic() - self._last_draw >= self.every:
            await self._draw()

    async def close(self, end: RunEnd) -> None:
        if self.active and self._dirty:
            self._title += f" ({end.status})"
            await self._draw()
        self.active = False

    def _add(self, key: str, step: int, value: float) -> None:
        entry = self._series.get(key)
        if entry is None:
            if self.keys is None and len(self._series) >= 6:
                return
            entry = self._series[key] = ([], [], 1)
        steps, values, stride = entry
        if stride > 1 and step % stride:
            return
        steps.append(step)
        values.append(value)
        if len(steps) > self.max_points:  # thin the history by half, keep the stride
            self._series[key] = (steps[::2], values[::2], stride * 2)

    async def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._dirty = False
        series = {k: (list(s), list(v)) for k, (s, v, _) in self._series.items()}
        if not series:
            return
        png = await anyio.to_thread.run_sync(self._render, series)
        self._handle.update({"image/png": png}, raw=True)
        self.redraws += 1

    def _render(self, series: dict[str, tuple[list[int], list[float]]]) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = list(series)
        figure = Figure(figsize=(self.size[0], self.size[1] * len(keys)), dpi=90)
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)
        for row, key in enumerate(keys):
            ax = axes[row][0]
            steps, values = series[key]
            ax.plot(steps, values, linewidth=1.2)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            if values:
                ax.set_title(f"{key}: {values[-1]:.5g} (min {min(values):.5g})", fontsize=9)
        axes[-1][0].set_xlabel("step")
        figure.suptitle(self._title, fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
