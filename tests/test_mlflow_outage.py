"""A real MLflow server goes away mid-run and comes back (issue #15): the run keeps
logging, and at the end every step of the JSONL file is in MLflow exactly once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import steplog

from conftest import MlflowProxy, MlflowServer, find_run, history

pytest.importorskip("httpx", reason="MlflowBackend needs httpx (pip install -e '.[dev]')")
pytestmark = pytest.mark.timeout(300)

HEALING = steplog.RetryPolicy(
    retries=2, backoff=0.05, max_backoff=0.2, probe_backoff=0.5, max_probe_backoff=2.0
)


def test_server_killed_and_restarted_twice_gets_every_step_exactly_once(tmp_path):
    """The server is SIGKILLed 1 s into the run and restarted (same store and port) 2 s
    later, then again 4 s after it is back; the loop logs on meanwhile. At finish MLflow holds every
    step of the JSONL file once, with its value, and the run is FINISHED."""
    server = MlflowServer(tmp_path)
    server.start()
    experiment = f"outage-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path / "runs")
    tracker = steplog.Tracker(
        jsonl, steplog.MlflowBackend(server.url, timeout=5), experiment_name=experiment,
        retry=HEALING,
    )  # fmt: skip
    tracker.init({"lr": 0.1})
    outages: list[tuple[float, float]] = []
    stop = threading.Event()

    def break_server() -> None:
        for up in (1.0, 4.0):  # up long enough between the outages to catch up
            if stop.wait(up):
                return
            down = time.monotonic()
            server.kill()
            stop.wait(2.0)
            server.start()  # takes a few seconds itself
            outages.append((down, time.monotonic()))

    chaos = threading.Thread(target=break_server)
    chaos.start()
    step = 0
    try:
        while chaos.is_alive() or step < 2000:
            tracker.log({"loss": 1.0 / (step + 1)}, step=step)
            step += 1
            time.sleep(0.001)  # ~1 000 steps/s
        stats = tracker.finish()
    finally:
        stop.set()
        chaos.join()
    try:
        local = steplog.read_run(jsonl.path)
        run = find_run(server.url, experiment, local.run_id)
        points = history(server.url, run["info"]["run_id"], "loss")
    finally:
        server.stop()
    assert len(outages) == 2
    got = stats.backends["mlflow"]
    assert len(local.records) == step
    assert sorted(int(p["step"]) for p in points) == list(range(step))  # once each
    values = {int(p["step"]): float(p["value"]) for p in points}
    assert all(values[e.step] == pytest.approx(e.data["loss"]) for e in local.records)
    assert run["info"]["status"] == "FINISHED"
    assert got.delivered == step and got.failed == 0 and got.caught_up > 0
    assert len(got.outages) >= 2
    print(
        f"outages {[round(b - a, 1) for a, b in outages]} s, {step} steps, "
        f"{got.caught_up} caught up from the file"
    )


class BusyProxy(MlflowProxy):
    """Answers log-batch requests with 503 and ``Retry-After: 1`` for the first ``busy``
    seconds after the first one; forwards everything else."""

    def __init__(self, target: str, busy: float) -> None:
        self.busy = busy
        self.first: float | None = None
        self.refused = 0
        super().__init__(target, self._refuse)

    def _refuse(self, path: str):
        if not path.endswith("runs/log-batch"):
            return None
        now = time.monotonic()
        self.first = self.first or now
        if now - self.first >= self.busy:
            return None
        self.refused += 1
        return 503, {"Retry-After": "1"}


def test_503_with_retry_after_is_honoured_without_hammering(mlflow_server, tmp_path):
    """503 + Retry-After: 1 for 3 s: the backend waits as asked (a handful of requests
    in those 3 s, not hundreds) and loses nothing."""
    proxy = BusyProxy(mlflow_server, busy=3.0)
    experiment = f"busy-{uuid.uuid4().hex[:8]}"
    jsonl = steplog.JsonlBackend(tmp_path)
    tracker = steplog.Tracker(
        jsonl, steplog.MlflowBackend(proxy.url), experiment_name=experiment, retry=HEALING
    )
    try:
        tracker.init()
        for i in range(4000):
            tracker.log({"loss": float(i)}, step=i)
            if i % 100 == 0:
                time.sleep(0.1)  # 4 s of logging
        stats = tracker.finish()
    finally:
        proxy.close()
    assert 1 <= proxy.refused <= 6, proxy.refused  # about one request a second
    local = steplog.read_run(jsonl.path)
    run = find_run(mlflow_server, experiment, local.run_id)
    points = history(mlflow_server, run["info"]["run_id"], "loss")
    assert sorted(int(p["step"]) for p in points) == list(range(4000))
    assert stats.backends["mlflow"].delivered == 4000
