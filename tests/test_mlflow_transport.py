"""MlflowBackend against a fake tracking server behind ``httpx.MockTransport``.

The backend's ``transport=`` (httpx's own seam) lets a test play the server: these tests
pin the REST conversation (run create / resume / terminate, log-batch limits), what is
retried (5xx, 408, 429, connection errors, with the server's ``Retry-After``) and what
is not (other 4xx: :class:`steplog.PermanentBackendError`), fast and without a server.
What only a real server shows (its storage, dedup, concurrency, being killed) stays in
test_mlflow.py and test_mlflow_outage.py.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import os
import pickle
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

import steplog
from steplog._delivery import Delivery
from steplog._delivery_process import movable
from steplog.events import Event, RunEnd, RunInfo, RunStats

httpx = pytest.importorskip("httpx", reason="MlflowBackend needs httpx")

pytestmark = pytest.mark.timeout(60)

URL = "http://mlflow.test:5000"
#: Fast retries, no jitter: the schedule is exact.
FAST = steplog.RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05, jitter=0)
_ids = itertools.count(1)


def _error(status: int, code: str, message: str = "", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error_code": code, "message": message}, headers=headers)


class FakeMlflow:
    """A tracking server in memory, with MLflow's answers and per-request limits.

    ``fail(path, ...)`` queues faults: the next requests to ``path`` get that answer
    (or a connection error) instead of being served. ``requests`` records every request
    as ``(path, body, monotonic time)``; ``threads`` the (pid, thread name) they came from.
    """

    def __init__(self) -> None:
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, Any], float]] = []
        self.faults: list[tuple[str, Any]] = []
        self.threads: set[tuple[int, str]] = set()
        self.lock = threading.Lock()
        self.transport = httpx.MockTransport(self.handle)

    def fail(self, path: str, times: int = 1, *, answer: Any = None) -> None:
        """The next ``times`` requests to ``path`` get ``answer``: an ``httpx.Response``,
        or ``None`` for a connection error."""
        self.faults += [(path, answer)] * times

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.requests if p == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/2.0/mlflow/")
        if request.method == "GET":
            body: dict[str, Any] = dict(request.url.params)
        else:
            body = json.loads(request.content)
        with self.lock:
            self.requests.append((path, body, time.monotonic()))
            self.threads.add((os.getpid(), threading.current_thread().name))
            for index, (where, answer) in enumerate(self.faults):
                if where == path:
                    del self.faults[index]
                    if answer is None:
                        raise httpx.ConnectError("connection refused", request=request)
                    return answer
            serve = getattr(self, "_" + re.sub(r"[/-]", "_", path))
            return serve(body)

    # -- endpoints ---------------------------------------------------------------------

    def _experiments_get_by_name(self, body: dict[str, Any]) -> httpx.Response:
        found = self.experiments.get(body["experiment_name"])
        if found is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", "no such experiment")
        return httpx.Response(200, json={"experiment": {"experiment_id": found}})

    def _experiments_create(self, body: dict[str, Any]) -> httpx.Response:
        if body["name"] in self.experiments:
            return _error(400, "RESOURCE_ALREADY_EXISTS", "exists")
        self.experiments[body["name"]] = str(next(_ids))
        return httpx.Response(200, json={"experiment_id": self.experiments[body["name"]]})

    def _runs_search(self, body: dict[str, Any]) -> httpx.Response:
        wanted = re.fullmatch(r"tags\.`steplog\.run_id` = '(.*)'", body["filter"])
        assert wanted is not None, body["filter"]
        runs = [
            {"info": {"run_id": run_id}}
            for run_id, run in self.runs.items()
            if run["experiment_id"] in body["experiment_ids"]
            and run["tags"].get("steplog.run_id") == wanted.group(1)
        ]
        return httpx.Response(200, json={"runs": runs[: body["max_results"]]})

    def _runs_create(self, body: dict[str, Any]) -> httpx.Response:
        run_id = f"r{next(_ids)}"
        self.runs[run_id] = {
            "experiment_id": body["experiment_id"],
            "tags": {t["key"]: t["value"] for t in body["tags"]},
            "params": {},
            "metrics": [],
            "status": "RUNNING",
            "end_time": None,
        }
        return httpx.Response(200, json={"run": {"info": {"run_id": run_id}}})

    def _runs_update(self, body: dict[str, Any]) -> httpx.Response:
        run = self.runs[body["run_id"]]
        run["status"] = body["status"]
        run["end_time"] = body.get("end_time")
        return httpx.Response(200, json={})

    def _runs_get(self, body: dict[str, Any]) -> httpx.Response:
        run = self.runs[body["run_id"]]
        params = [{"key": k, "value": v} for k, v in run["params"].items()]
        return httpx.Response(200, json={"run": {"data": {"params": params}}})

    def _runs_log_batch(self, body: dict[str, Any]) -> httpx.Response:
        metrics, params, tags = (body.get(k, []) for k in ("metrics", "params", "tags"))
        if len(metrics) > 1000 or len(params) > 100 or len(tags) > 100:
            return _error(400, "INVALID_PARAMETER_VALUE", "too many metrics, params or tags")
        if len(metrics) + len(params) + len(tags) > 1000:
            return _error(400, "INVALID_PARAMETER_VALUE", "more than 1000 entities")
        run = self.runs[body["run_id"]]
        for param in params:
            if run["params"].get(param["key"], param["value"]) != param["value"]:
                return _error(400, "INVALID_PARAMETER_VALUE", "changing param values")
        run["params"].update({p["key"]: p["value"] for p in params})
        run["tags"].update({t["key"]: t["value"] for t in tags})
        run["metrics"] += metrics  # a list, not a set: a point sent twice shows
        return httpx.Response(200, json={})

    # -- reading back ------------------------------------------------------------------

    def only_run(self) -> dict[str, Any]:
        assert len(self.runs) == 1, list(self.runs)
        return next(iter(self.runs.values()))

    def history(self, key: str) -> list[tuple[int, Any]]:
        return [(m["step"], m["value"]) for m in self.only_run()["metrics"] if m["key"] == key]


@pytest.fixture
def server() -> FakeMlflow:
    return FakeMlflow()


def _tracker(tmp_path, backend: steplog.MlflowBackend, **options: Any) -> steplog.Tracker:
    return steplog.Tracker(
        steplog.JsonlBackend(tmp_path), backend, experiment_name="exp", retry=FAST, **options
    )


def _info(run_id: str = "steplog-1", config: dict[str, Any] | None = None) -> RunInfo:
    return RunInfo(run_id, "exp", config or {}, time.time(), os.getpid(), "host")


def _end(status: str = "finished", summary: dict[str, Any] | None = None) -> RunEnd:
    return RunEnd("steplog-1", time.time(), status, summary or {}, RunStats())  # type: ignore[arg-type]


def _events(n: int, **extra: Any) -> list[Event]:
    return [Event(i, 1_700_000_000.0 + i, {"loss": float(i), **extra}) for i in range(n)]


# -- the run's life: create, log, terminate, resume ------------------------------------


def test_a_tracker_run_creates_logs_and_terminates_its_mlflow_run(tmp_path, server):
    """Through Tracker: the experiment and run are created (with steplog's tags), the
    config becomes params, every number a metric point once, strings tags, the summary
    ``summary/`` metrics and tags, and the run ends FINISHED with its end time."""
    backend = steplog.MlflowBackend(URL, transport=server.transport, tags={"team": "a"})
    tracker = _tracker(tmp_path, backend)
    info = tracker.init({"lr": 0.1, "model": {"layers": 12}})
    for i in range(300):
        tracker.log({"loss": 1.0 / (i + 1), "note": f"n{i}"})
    stats = tracker.finish({"best": 0.5, "verdict": "ok"})

    assert stats.backends["mlflow"].delivered == 300
    assert stats.backends["mlflow"].errors == 0
    paths = [p for p, _, _ in server.requests]
    assert paths[:4] == [
        "experiments/get-by-name",
        "experiments/create",
        "runs/search",
        "runs/create",
    ]
    assert paths[-1] == "runs/update"
    run = server.only_run()
    assert run["tags"]["steplog.run_id"] == info.run_id
    assert run["tags"]["mlflow.runName"] == info.run_id
    assert run["tags"]["team"] == "a"
    assert run["params"] == {"lr": "0.1", "model.layers": "12"}
    assert server.history("loss") == [(i, 1.0 / (i + 1)) for i in range(300)]
    assert run["tags"]["note"] == "n299"  # strings: the latest value, as a tag
    assert server.history("summary/best") == [(299, 0.5)]  # at the run's last step
    assert run["tags"]["summary/verdict"] == "ok"
    assert run["tags"]["steplog.status"] == "finished"
    assert run["status"] == "FINISHED" and run["end_time"] is not None


@pytest.mark.parametrize(
    ("status", "mlflow_status"),
    [
        ("finished", "FINISHED"),
        ("failed", "FAILED"),
        ("interrupted", "KILLED"),
        ("terminated", "KILLED"),
        ("unfinished", "KILLED"),
    ],
)
def test_close_terminates_the_run_with_mlflow_s_status(server, status, mlflow_status):
    """``close`` maps steplog's end status onto MLflow's (and keeps the exact one as
    the ``steplog.status`` tag)."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)

    async def main() -> None:
        await backend.open(_info())
        await backend.write(_events(3))
        await backend.close(_end(status))

    anyio.run(main)
    run = server.only_run()
    assert run["status"] == mlflow_status
    assert run["tags"]["steplog.status"] == status


def test_a_resumed_run_continues_its_mlflow_run_and_keeps_its_first_params(server, caplog):
    """A second open with the same steplog run id finds the MLflow run (runs/search),
    sets it RUNNING again, and keeps params MLflow would refuse to change: the new
    values become ``steplog.config.<key>`` tags, with a warning."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)

    async def segment(config: dict[str, Any], events: list[Event], status: str) -> None:
        await backend.open(_info(config=config))
        await backend.write(events)
        await backend.close(_end(status))

    anyio.run(segment, {"lr": 0.1, "seed": 1}, _events(3), "interrupted")
    assert server.only_run()["status"] == "KILLED"
    anyio.run(segment, {"lr": 0.2, "seed": 1}, [Event(3, 1.0, {"loss": 3.0})], "finished")

    run = server.only_run()  # one MLflow run, continued
    assert len(server.calls("runs/create")) == 1
    assert run["status"] == "FINISHED"
    assert run["params"] == {"lr": "0.1", "seed": "1"}
    assert run["tags"]["steplog.config.lr"] == "0.2"
    assert [step for step, _ in server.history("loss")] == [0, 1, 2, 3]
    assert "keeps its first value" in caplog.text


def test_resume_false_always_creates_a_new_run(server):
    """``resume=False`` does not search: each open creates an MLflow run."""
    backend = steplog.MlflowBackend(URL, transport=server.transport, resume=False)

    async def main() -> None:
        for _ in range(2):
            await backend.open(_info())
            await backend.close(_end())

    anyio.run(main)
    assert len(server.runs) == 2
    assert server.calls("runs/search") == []


def test_an_experiment_created_concurrently_is_looked_up_again(server):
    """Another process creates the experiment between our lookup and our create
    (RESOURCE_ALREADY_EXISTS): the backend looks it up again and uses it."""
    server.experiments["exp"] = "77"
    server.fail("experiments/get-by-name", answer=_error(404, "RESOURCE_DOES_NOT_EXIST"))
    backend = steplog.MlflowBackend(URL, transport=server.transport)

    async def main() -> None:
        await backend.open(_info())
        await backend.close(_end())

    anyio.run(main)
    assert backend.experiment_id == "77"
    assert len(server.calls("experiments/get-by-name")) == 2


# -- what MLflow gets: limits and encodings --------------------------------------------


def test_requests_stay_within_mlflow_s_log_batch_limits(server):
    """One event with 2 500 metrics and 250 string values, and a config of 250 keys:
    split into log-batch requests of ≤ 1 000 metrics, ≤ 100 params, ≤ 100 tags and
    ≤ 1 000 entities (the fake server refuses more, as MLflow does); nothing is lost."""
    data: dict[str, Any] = {f"m{i}": float(i) for i in range(2500)}
    data.update({f"s{i}": f"v{i}" for i in range(250)})
    backend = steplog.MlflowBackend(URL, transport=server.transport)

    async def main() -> None:
        await backend.open(_info(config={f"p{i}": i for i in range(250)}))
        await backend.write([Event(0, 1.0, data)])
        await backend.close(_end())

    anyio.run(main)
    for body in server.calls("runs/log-batch"):
        sizes = [len(body.get(k, [])) for k in ("metrics", "params", "tags")]
        assert sizes[0] <= 1000 and sizes[1] <= 100 and sizes[2] <= 100, sizes
        assert sum(sizes) <= 1000, sizes
    run = server.only_run()
    assert len(run["params"]) == 250
    assert len(run["metrics"]) == 2500
    assert {f"s{i}" for i in range(250)} <= set(run["tags"])
    assert len(server.calls("runs/log-batch")) >= 3 + 3  # params, then metrics and tags


def test_non_finite_values_long_texts_and_bad_keys_are_sent_as_mlflow_accepts(server):
    """NaN and ±inf go as MLflow's strings; a key with characters MLflow refuses gets
    ``_`` for them; a long tag is cut with steplog's marker."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    data = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "a b!c": 1.0, "t": "x" * 9000}

    async def main() -> None:
        await backend.open(_info())
        await backend.write([Event(0, 1.0, data)])
        await backend.close(_end())

    anyio.run(main)
    values = {m["key"]: m["value"] for m in server.only_run()["metrics"]}
    assert values == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "a b_c": 1.0}
    tag = server.only_run()["tags"]["t"]
    assert len(tag) == 8000 and tag.endswith("...[truncated by steplog]")


# -- transient errors: retried, with the schedule and the server's Retry-After ---------


@pytest.mark.parametrize(
    "answer",
    [
        _error(503, "TEMPORARILY_UNAVAILABLE", "busy"),
        _error(500, "INTERNAL_ERROR", "oops"),
        _error(408, "", "timeout"),
        _error(429, "REQUEST_LIMIT_EXCEEDED", "slow down"),
        None,  # a connection error
    ],
    ids=["503", "500", "408", "429", "connect"],
)
def test_transient_errors_are_retried_without_losing_or_duplicating_points(
    tmp_path, server, answer
):
    """Two failed log-batches in a row (5xx, 408, 429 or a refused connection): the
    lane retries the same batch and every point reaches the server exactly once."""
    server.fail("runs/log-batch", 2, answer=answer)
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    tracker = _tracker(tmp_path, backend)
    tracker.init()  # the config is empty: no params request to fail
    for i in range(200):
        tracker.log({"loss": float(i)})
    stats = tracker.finish()
    mlflow = stats.backends["mlflow"]
    assert (mlflow.delivered, mlflow.failed, mlflow.errors) == (200, 0, 2)
    assert server.history("loss") == [(i, float(i)) for i in range(200)]
    assert server.only_run()["status"] == "FINISHED"


def test_the_retry_schedule_doubles_and_honours_retry_after(server):
    """The delays between attempts of one batch: the policy's backoff doubling up to
    its cap, and never sooner than a server's ``Retry-After`` (seconds, or an HTTP
    date); after ``retries`` further attempts the batch is given up and counted."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = steplog.RetryPolicy(retries=4, backoff=0.5, max_backoff=1.5, jitter=0)
    delivery = Delivery(backend, "mlflow", retry=policy, deadline=lambda: None, sleep=sleep)
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    busy = _error(503, "TEMPORARILY_UNAVAILABLE")
    server.fail("runs/log-batch", answer=busy)
    server.fail("runs/log-batch", answer=_error(429, "", "", **{"Retry-After": "7"}))
    server.fail("runs/log-batch", answer=busy)
    when = email.utils.format_datetime(later, usegmt=True)
    server.fail("runs/log-batch", answer=_error(503, "", "", **{"Retry-After": when}))

    async def main() -> tuple[bool, bool]:
        await backend.open(_info())
        first = await delivery.send(_events(5))
        server.fail("runs/log-batch", 5, answer=busy)
        second = await delivery.send(_events(5))
        await backend.close(_end())
        return first, second

    first, second = anyio.run(main)
    assert first is True and second is False
    assert slept[:2] == [0.5, 7.0]
    assert slept[2] == 1.5  # 0.5 * 2**2 = 2.0, capped
    assert 25 < slept[3] <= 30.5  # the HTTP date, ~30 s ahead
    assert slept[4:] == [0.5, 1.0, 1.5, 1.5]  # the second batch: 4 retries, given up
    assert (delivery.delivered, delivery.failed, delivery.errors) == (5, 5, 9)
    assert len(server.history("loss")) == 5


def test_retry_after_in_the_past_or_unreadable_does_not_delay(server):
    """An HTTP date already past counts as 0 s; a value that is neither seconds nor
    a date is ignored (the policy's own backoff applies)."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    past = email.utils.format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)
    hints = []

    async def main() -> None:
        await backend.open(_info())
        for value in (past, "soon", "2"):
            server.fail("runs/log-batch", answer=_error(503, "", "", **{"Retry-After": value}))
            with pytest.raises(steplog.MlflowError) as raised:
                await backend.write(_events(1))
            hints.append(raised.value.retry_after)  # type: ignore[attr-defined]
        await backend.close(_end())

    anyio.run(main)
    assert hints == [0.0, None, 2.0]


def test_a_retry_after_is_waited_for_in_a_tracker_run(tmp_path, server):
    """429 with ``Retry-After: 0.3`` through a Tracker: the lane sends the batch again
    no sooner than the server asked."""
    server.fail("runs/log-batch", answer=_error(429, "", "", **{"Retry-After": "0.3"}))
    tracker = _tracker(tmp_path, steplog.MlflowBackend(URL, transport=server.transport))
    tracker.init()
    tracker.log({"loss": 1.0})
    stats = tracker.finish()
    assert stats.backends["mlflow"].delivered == 1
    times = [t for p, _, t in server.requests if p == "runs/log-batch"]
    assert times[1] - times[0] >= 0.3


def test_a_retry_of_a_partly_sent_batch_resumes_after_what_was_sent(server):
    """A batch of 3 log-batch requests whose second one fails: the retry (the same
    batch object) sends the second and third only, so no point is stored twice."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    batch = _events(1500, acc=0.5)  # 3 000 metrics: 3 requests

    async def main() -> None:
        await backend.open(_info())
        sent = len(server.calls("runs/log-batch"))
        original = server.handle
        count = [0]

        def second_fails(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("log-batch"):
                count[0] += 1
                if count[0] == 2:  # not recorded: the server never saw it
                    return _error(503, "TEMPORARILY_UNAVAILABLE")
            return original(request)

        server.transport.handler = second_fails
        with pytest.raises(steplog.MlflowError, match="503"):
            await backend.write(batch)
        await backend.write(batch)  # the retry
        assert len(server.calls("runs/log-batch")) - sent == 3
        await backend.close(_end())

    anyio.run(main)
    points = server.only_run()["metrics"]
    assert len(points) == 3000
    assert len({(m["key"], m["step"]) for m in points}) == 3000


# -- permanent errors: not retried ------------------------------------------------------


def test_a_4xx_answer_to_log_batch_is_permanent_and_not_retried(tmp_path, server):
    """log-batch answered 400: PermanentBackendError with the server's code and
    message; the lane sends it once, gives the backend up for the run and counts the
    events as failed (the other backends, here the run file, go on)."""
    refusal = _error(400, "INVALID_PARAMETER_VALUE", "no such run")
    server.fail("runs/log-batch", answer=refusal)
    tracker = _tracker(tmp_path, steplog.MlflowBackend(URL, transport=server.transport))
    tracker.init()
    for i in range(50):
        tracker.log({"loss": float(i)})
    stats = tracker.finish()
    mlflow = stats.backends["mlflow"]
    assert (mlflow.delivered, mlflow.failed, mlflow.disabled) == (0, 50, True)
    assert "INVALID_PARAMETER_VALUE" in (mlflow.last_error or "")
    assert "no such run" in (mlflow.last_error or "")
    assert len(server.calls("runs/log-batch")) == 1  # the refused one, not retried
    assert server.only_run()["metrics"] == []
    assert len(steplog.read_run(next(tmp_path.glob("**/*.jsonl"))).history["loss"]) == 50


def test_a_4xx_answer_raises_permanent_backend_error_with_the_message(server):
    """The backend's own call: a 4xx other than 408/429 raises PermanentBackendError
    (HTTP status, error code and message in it), not a retryable MlflowError."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)

    async def main() -> None:
        await backend.open(_info())
        server.fail("runs/log-batch", answer=_error(403, "PERMISSION_DENIED", "read only"))
        with pytest.raises(steplog.PermanentBackendError, match="403 PERMISSION_DENIED: read only"):
            await backend.write(_events(1))
        await backend.close(_end())

    anyio.run(main)


def test_a_4xx_answer_at_open_fails_init_with_the_server_s_message(tmp_path, server):
    """runs/create refused (say, the experiment is deleted): ``init()`` raises
    BackendOpenError naming the server's error, after one request."""
    refusal = _error(400, "INVALID_PARAMETER_VALUE", "experiment must be active")
    server.fail("runs/create", answer=refusal)
    tracker = _tracker(tmp_path, steplog.MlflowBackend(URL, transport=server.transport))
    with pytest.raises(steplog.BackendOpenError, match="must be active"):
        tracker.init()
    assert len(server.calls("runs/create")) == 1


def test_a_server_that_refuses_connections_fails_init(tmp_path, server):
    """A connection error at open is reported by ``init()`` (a ConnectError in the
    message), not retried for ever."""
    server.fail("experiments/get-by-name", answer=None)
    tracker = _tracker(tmp_path, steplog.MlflowBackend(URL, transport=server.transport))
    with pytest.raises(steplog.BackendOpenError, match="ConnectError"):
        tracker.init()


# -- where the backend runs -------------------------------------------------------------


def test_a_backend_with_a_transport_stays_in_the_logging_process(tmp_path, server):
    """``delivery="process"`` (the default): a backend with a transport does not move
    to the delivery process (the transport is this process's state); its lane runs in
    a thread here, and the run works."""
    backend = steplog.MlflowBackend(URL, transport=server.transport)
    assert backend.movable is False
    assert movable(backend) is None
    tracker = _tracker(tmp_path, backend, delivery="process")
    tracker.init()
    tracker.log({"loss": 1.0})
    stats = tracker.finish()
    assert stats.backends["mlflow"].delivered == 1
    assert {pid for pid, _ in server.threads} == {os.getpid()}
    assert server.history("loss") == [(0, 1.0)]


def test_a_backend_without_a_transport_still_moves_as_its_configuration():
    """Without a transport the backend pickles as before (its configuration only),
    so it can move to the delivery process; the copy has no transport either."""
    backend = steplog.MlflowBackend(URL, experiment_name="e", timeout=5.0)
    assert backend.movable is True
    data = movable(backend)
    assert data is not None
    copy = pickle.loads(data)
    assert (copy.tracking_uri, copy.experiment_name, copy.timeout) == (URL, "e", 5.0)
    assert copy.transport is None and copy.movable is True
