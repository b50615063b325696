"""LivePlotBackend in a real Jupyter kernel (nbclient), and headless."""

from __future__ import annotations

import base64
import logging

import pytest

import steplog

pytest.importorskip("matplotlib", reason="LivePlotBackend needs matplotlib")
pytestmark = pytest.mark.timeout(180)

CELL = """
import time, steplog
live = steplog.LivePlotBackend(keys=["loss", "best_loss"], every=0.5)
draw, draws = live._draw, []

async def timed_draw():  # when each redraw starts, by the backend's own clock
    draws.append(time.monotonic())
    await draw()

live._draw = timed_draw
tracker = steplog.Tracker(live, steplog.NullBackend(), experiment_name="nb")
tracker.init()
deadline = time.monotonic() + 60
best, step = 1e9, 0
while live.redraws < 3 and time.monotonic() < deadline:  # three redraws while logging
    loss = 1.0 / (step + 1)
    best = min(best, loss)
    tracker.log({"loss": loss, "best_loss": best, "note": "x"})
    step += 1
    if step % 10 == 0:
        time.sleep(0.001)  # a pace the backend keeps up with: finish() has no backlog
stats = tracker.finish()
gaps = [round(b - a, 3) for a, b in zip(draws, draws[1:])]
print("REDRAWS", live.redraws, "STEPS", step, "GAPS", *gaps)
"""


@pytest.mark.slow  # a Jupyter kernel
def test_redraws_in_the_cell_at_most_twice_a_second():
    """In a kernel the plot is one output updated in place, redrawn at most every
    ``every`` seconds (checked on the gaps between redraws, whatever the machine's
    speed) while the loop logs, and once more at close."""
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install -e '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[dev]')")
    pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[dev]')")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3")
    client.execute()
    outputs = notebook.cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    fields = text.split()
    redraws = int(fields[fields.index("REDRAWS") + 1])
    gaps = [float(g) for g in fields[fields.index("GAPS") + 1 :]]
    assert redraws >= 3, text
    assert len(gaps) == redraws - 1
    # ≤ 2 a second: every redraw made while logging waits `every` after the one before;
    # the last one may be the redraw at close, which does not wait.
    assert min(gaps[:-1]) >= 0.5, gaps
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 1  # one output, updated in place
    png = base64.b64decode(images[0].data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_outside_a_notebook_it_draws_nothing_and_says_so(caplog):
    live = steplog.LivePlotBackend(keys=["loss"])
    tracker = steplog.Tracker(live, experiment_name="headless")
    with caplog.at_level(logging.WARNING, logger="steplog"):
        tracker.init()
        for i in range(1000):
            tracker.log({"loss": float(i)})
        stats = tracker.finish()
    assert "draws only in a Jupyter notebook" in caplog.text
    assert live.redraws == 0 and not live.active
    assert stats.backends["liveplot"].delivered == 1000


def test_history_is_thinned_to_max_points():
    live = steplog.LivePlotBackend(max_points=100)
    for step in range(10_000):
        live._add("loss", step, float(step))
    steps, values, stride = live._series["loss"]
    assert len(steps) <= 101 and stride >= 64
    assert steps[0] == 0 and steps[-1] > 9_800
    assert values == [float(s) for s in steps]


def test_a_retried_batch_adds_its_points_once():
    """The worker retries a failed write (a draw that raised) with the same batch: its
    points are not added twice (the Backend.write retry contract)."""
    import anyio

    live = steplog.LivePlotBackend(every=0.001)
    live.active = True  # as in a notebook
    draws = []

    async def draw():
        draws.append(1)
        if len(draws) == 1:
            raise OSError("display went away")

    live._draw = draw
    batch = [steplog.Event(0, 0.0, {"loss": 1.0}), steplog.Event(1, 0.0, {"loss": 2.0})]

    async def main():
        with pytest.raises(OSError, match="display went away"):
            await live.write(batch)
        await anyio.sleep(0.01)
        await live.write(batch)  # the retry

    anyio.run(main)
    steps, values, _ = live._series["loss"]
    assert (steps, values) == ([0, 1], [1.0, 2.0])
    assert len(draws) == 2
