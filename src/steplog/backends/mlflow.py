"""MLflow tracking server backend, over MLflow's REST API with httpx (``steplog[mlflow]``).

This is the multi-machine path: every rank, job and host points its tracker at one
tracking server. The backend speaks the REST API directly and asynchronously (one
keep-alive connection pool per run), so it needs neither the ``mlflow`` package nor a
thread.

How a run maps onto MLflow:

* experiment: ``experiment_name`` (default: the tracker's), created if missing (a
  concurrent create by another process is handled);
* run: created with tags ``mlflow.runName`` (``run_name`` or the steplog run id),
  ``steplog.run_id``, ``steplog.host``, ``steplog.pid``, ``mlflow.user``,
  ``mlflow.source.name``; with ``resume=True`` (default) a run already tagged with the
  same ``steplog.run_id`` is reused, which makes :func:`steplog.replay` idempotent;
* params: the merged config, nested keys dotted (``opt.lr``), values as ``str(value)``,
  cut to MLflow's 6 000 characters with a ``...[truncated by steplog]`` marker;
* metrics: every int or float value (nested keys dotted), with the event's step and its
  logging time in milliseconds; NaN and ±inf are sent as MLflow's ``"NaN"``,
  ``"Infinity"``, ``"-Infinity"`` (the server keeps NaN; ±inf come back as ±1.797e308);
* strings, bools and other values: MLflow has no per-step text, so each key becomes a
  tag holding its latest value (JSON for lists; cut to 8 000 characters); the full
  history stays in the JSONL file;
* summary at finish: numbers as metrics ``summary/<key>``, anything else as tags
  ``summary/<key>``; the run's end status as ``runs/update`` status (finished →
  FINISHED, failed → FAILED, interrupted / terminated / unfinished → KILLED) and the
  exact steplog status and delivery statistics as tags.

Key names MLflow rejects (characters other than letters, digits, ``_ - . / : `` and
spaces, or ``..`` path parts) have the offending characters replaced by ``_``.
Requests respect MLflow's per-request limits (1 000 metrics, 100 params, 100 tags,
1 000 entities). Connection errors, timeouts, 429 and 5xx answers raise ordinary
exceptions, which its lane retries with backoff (:class:`steplog.RetryPolicy`);
a batch already partly sent resumes where it stopped. Other 4xx answers raise
:class:`steplog.PermanentBackendError` with the server's error code and message.

``transport=`` takes an httpx transport (httpx's own seam, e.g. ``httpx.MockTransport``)
for tests that play the server; such a backend stays in the logging process (its lane
runs in a thread), since a transport is state of this process.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .._extras import require
from ..errors import MlflowError, PermanentBackendError
from ..events import Event, RunEnd, RunInfo
from ..runfile.schema import flatten, is_number
from .base import Backend, PicklesAsConfiguration

if TYPE_CHECKING:
    import httpx

__all__ = ["MlflowBackend", "MlflowError"]

logger = logging.getLogger("steplog")

MAX_METRICS = 1000
MAX_PARAMS_OR_TAGS = 100
MAX_ENTITIES = 1000
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
TRUNCATED = "...[truncated by steplog]"
END_STATUS = {
    "finished": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "terminated": "KILLED",
    "unfinished": "KILLED",
}
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


class MlflowBackend(PicklesAsConfiguration, Backend):
    """Log runs to an MLflow tracking server.

    Args:
        tracking_uri: The server, e.g. ``"http://mlflow.internal:5000"``; default
            ``$MLFLOW_TRACKING_URI``.
        experiment_name: MLflow experiment; default the tracker's experiment name.
        run_name: Display name of the MLflow run; default the steplog run id.
        tags: Extra run tags.
        token: Bearer token; default ``$MLFLOW_TRACKING_TOKEN``. Basic auth comes from
            ``$MLFLOW_TRACKING_USERNAME`` / ``$MLFLOW_TRACKING_PASSWORD``.
        timeout: Seconds per HTTP request.
        resume: Reuse an MLflow run already tagged with this steplog run id.
        verify: TLS certificate verification (``False`` when
            ``$MLFLOW_TRACKING_INSECURE_TLS`` is ``true``).
        transport: An ``httpx.AsyncBaseTransport`` the backend's HTTP client sends its
            requests through (``httpx.AsyncClient(transport=...)``), e.g. an
            ``httpx.MockTransport`` that plays the tracking server in tests; default
            httpx's own. A backend with a transport does not move to the delivery
            process (the transport, and whatever its handler records, belong to this
            process): its lane runs in a thread of the logging process.
    """

    name = "mlflow"
    #: A lane going on from a cursor sends the last step MLflow has again: the summary
    #: is logged at the run's last step, and a point sent twice is stored once.
    resend_last_step = True

    _sdk = ("_httpx", "httpx", "mlflow", "MlflowBackend")
    _run_state = ("_client", "_partial")

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        resume: bool = True,
        verify: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._httpx = require("httpx", "mlflow", "MlflowBackend")
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ValueError(
                "MlflowBackend needs a tracking server URL: MlflowBackend('http://host:5000') "
                "or $MLFLOW_TRACKING_URI"
            )
        if not uri.startswith(("http://", "https://")):
            raise ValueError(
                f"MlflowBackend talks to a tracking server over HTTP(S), not {uri!r}; start "
                "one with `mlflow server --backend-store-uri sqlite:///mlflow.db`"
            )
        self.tracking_uri = uri.rstrip("/")
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.token = token or os.environ.get("MLFLOW_TRACKING_TOKEN")
        self.timeout = timeout
        self.resume = resume
        if verify is None:
            verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
        self.verify = verify
        self.transport = transport
        if transport is not None:
            # A transport (a test's mock, a custom connection pool) is this process's:
            # the lane stays here rather than drive a copy of it in the delivery process.
            self.movable = False
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self._client: Any = None
        self._last_step = 0
        self._partial: tuple[Sequence[Event], list[dict[str, Any]], int] | None = None

    def __repr__(self) -> str:
        return f"MlflowBackend({self.tracking_uri!r})"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, run: RunInfo) -> None:
        httpx = self._httpx
        headers = {"User-Agent": "steplog"}
        auth = None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (
                os.environ["MLFLOW_TRACKING_USERNAME"],
                os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
            )
        self._client = httpx.AsyncClient(
            base_url=f"{self.tracking_uri}/api/2.0/mlflow/",
            headers=headers,
            auth=auth,
            timeout=self.timeout,
            verify=self.verify,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            transport=self.transport,
        )
        self._partial = None
        self._last_step = 0
        try:
            self.experiment_id = await self._experiment(self.experiment_name or run.experiment)
            self.run_id = await self._find_run(run.run_id) if self.resume else None
            had: dict[str, str] = {}
            if self.run_id is None:
                self.run_id = await self._create_run(run)
            else:
                await self._call("runs/update", {"run_id": self.run_id, "status": "RUNNING"})
                had = await self._params()
            params = [
                {"key": _key(k), "value": _cut(_text(v), MAX_PARAM_LENGTH)}
                for k, v in flatten(run.config).items()
            ]
            # MLflow refuses to change a param: a run resumed with a changed config
            # keeps the first values as params and gets the new ones as tags.
            changed = [p for p in params if had.get(p["key"], p["value"]) != p["value"]]
            params = [p for p in params if p["key"] not in had]
            if changed:
                names = ", ".join(p["key"] for p in changed[:10])
                logger.warning(
                    "steplog: MLflow run %s keeps its first value of params that changed "
                    "on resume (%s); the new values are tags 'steplog.config.<key>'",
                    self.run_id,
                    names,
                )
            for start in range(0, len(params), MAX_PARAMS_OR_TAGS):
                chunk = params[start : start + MAX_PARAMS_OR_TAGS]
                await self._call("runs/log-batch", {"run_id": self.run_id, "params": chunk})
            for start in range(0, len(changed), MAX_PARAMS_OR_TAGS):
                tags = [
                    {"key": f"steplog.config.{p['key']}", "value": p["value"]}
                    for p in changed[start : start + MAX_PARAMS_OR_TAGS]
                ]
                await self._call("runs/log-batch", {"run_id": self.run_id, "tags": tags})
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise

    async def write(self, events: Sequence[Event]) -> None:
        if self._partial is not None and self._partial[0] is events:
            _, requests, done = self._partial  # a retry: resume after the requests sent
        else:
            requests, done = self._requests(events), 0
        for index in range(done, len(requests)):
            self._partial = (events, requests, index)
            await self._call("runs/log-batch", requests[index])
        self._partial = None
        if events:
            self._last_step = max(self._last_step, events[-1].step)

    async def close(self, end: RunEnd) -> None:
        if self._client is None:
            return
        try:
            summary = flatten(end.summary)
            stamp = int(end.end_time * 1000)
            metrics = []
            tags = [
                {"key": "steplog.status", "value": end.status},
                {"key": "steplog.stats", "value": _cut(_json(end.stats.to_dict()), MAX_TAG_LENGTH)},
            ]
            for key, value in summary.items():
                name = _key(f"summary/{key}")
                if is_number(value):
                    metrics.append(_metric(name, value, stamp, self._last_step))
                elif value is not None:
                    tags.append({"key": name, "value": _cut(_text(value), MAX_TAG_LENGTH)})
            for request in _chunk(self.run_id, metrics, tags):
                await self._call("runs/log-batch", request)
            await self._call(
                "runs/update",
                {
                    "run_id": self.run_id,
                    "status": END_STATUS.get(end.status, "KILLED"),
                    "end_time": stamp,
                },
            )
        finally:
            await self._client.aclose()
            self._client = None

    # -- requests ----------------------------------------------------------------------

    def _requests(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """The log-batch requests for a batch of events, within MLflow's limits."""
        metrics: list[dict[str, Any]] = []
        latest: dict[str, str] = {}
        for step, stamp, data in events:
            ms = int(stamp * 1000)
            for key, value in flatten(data).items():
                if is_number(value):
                    metrics.append(_metric(_key(key), value, ms, step))
                elif value is not None:
                    latest[_tag_key(key)] = _cut(_text(value), MAX_TAG_LENGTH)
        tags = [{"key": k, "value": v} for k, v in latest.items()]
        return list(_chunk(self.run_id, metrics, tags))

    async def _experiment(self, name: str) -> str:
        for _ in range(3):
            found = await self._call(
                "experiments/get-by-name", {"experiment_name": name}, method="GET", missing=True
            )
            if found is not None:
                return str(found["experiment"]["experiment_id"])
            created = await self._call("experiments/create", {"name": name}, exists=True)
            if created is not None:
                return str(created["experiment_id"])
            # Another process created it between our lookup and our create: look again.
        raise MlflowError(f"could not create or find MLflow experiment {name!r}")

    async def _find_run(self, steplog_id: str) -> str | None:
        answer = await self._call(
            "runs/search",
            {
                "experiment_ids": [self.experiment_id],
                "filter": f"tags.`steplog.run_id` = '{steplog_id}'",
                "max_results": 1,
            },
        )
        runs = (answer or {}).get("runs") or []
        return str(runs[0]["info"]["run_id"]) if runs else None

    async def _params(self) -> dict[str, str]:
        """The params the MLflow run has already (a run being continued)."""
        answer = await self._call("runs/get", {"run_id": self.run_id}, method="GET")
        params = answer.get("run", {}).get("data", {}).get("params", [])
        return {str(p["key"]): str(p.get("value", "")) for p in params}

    async def _create_run(self, run: RunInfo) -> str:
        tags = {
            "mlflow.runName": self.run_name or run.run_id,
            "mlflow.user": _user(),
            "mlflow.source.name": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
            "steplog.run_id": run.run_id,
            "steplog.host": run.host,
            "steplog.pid": str(run.pid),
            **_placement_tags(run),
            **self.tags,
        }
        answer = await self._call(
            "runs/create",
            {
                "experiment_id": self.experiment_id,
                "run_name": self.run_name or run.run_id,
                "start_time": int(run.start_time * 1000),
                "tags": [
                    {"key": k, "value": _cut(str(v), MAX_TAG_LENGTH)} for k, v in tags.items()
                ],
            },
        )
        return str(answer["run"]["info"]["run_id"])

    async def _call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        method: str = "POST",
        missing: bool = False,
        exists: bool = False,
    ) -> Any:
        """One REST call; ``None`` for RESOURCE_DOES_NOT_EXIST / _ALREADY_EXISTS if allowed."""
        httpx = self._httpx
        try:
            if method == "GET":
                response = await self._client.get(path, params=body)
            else:
                response = await self._client.post(
                    path, content=_json(body), headers={"Content-Type": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise MlflowError(f"{path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            return response.json() if response.content else {}
        try:
            error = response.json()
        except ValueError:
            error = {"message": response.text[:500]}
        code = error.get("error_code", "")
        if missing and code == "RESOURCE_DOES_NOT_EXIST":
            return None
        if exists and code == "RESOURCE_ALREADY_EXISTS":
            return None
        message = f"{path}: HTTP {response.status_code} {code}: {error.get('message', '')}"
        if response.status_code in (408, 429) or response.status_code >= 500:
            error = MlflowError(message)
            error.retry_after = _retry_after(response.headers.get("Retry-After"))
            raise error
        raise PermanentBackendError(message)


# -- helpers ---------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    import time

    return max(0.0, when - time.time())


def _chunk(
    run_id: str | None, metrics: list[dict[str, Any]], tags: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Split into log-batch requests: ≤ 1000 metrics, ≤ 100 tags, ≤ 1000 entities each."""
    requests = []
    m = t = 0
    while m < len(metrics) or t < len(tags):
        tag_part = tags[t : t + MAX_PARAMS_OR_TAGS]
        room = min(MAX_METRICS, MAX_ENTITIES - len(tag_part))
        metric_part = metrics[m : m + room]
        request: dict[str, Any] = {"run_id": run_id}
        if metric_part:
            request["metrics"] = metric_part
        if tag_part:
            request["tags"] = tag_part
        requests.append(request)
        m += len(metric_part)
        t += len(tag_part)
    return requests


def _metric(key: str, value: float, ms: int, step: int) -> dict[str, Any]:
    number: float | str = float(value)
    if number != number:
        number = "NaN"
    elif number in _NON_FINITE:
        number = _NON_FINITE[number]
    return {"key": key, "value": number, "timestamp": ms, "step": int(step)}


def _key(key: str) -> str:
    """A key MLflow accepts: bad characters and path tricks replaced by ``_``."""
    key = _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY_LENGTH] or "_"
    parts = [p if p not in ("", ".", "..") else "_" for p in key.split("/")]
    return "/".join(parts)


def _tag_key(key: str) -> str:
    key = _key(key)
    return f"steplog.{key}" if key.startswith("mlflow.") else key


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return _json(value)
    return str(value)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry in some containers
        return "unknown"


def _placement_tags(run: RunInfo) -> dict[str, str]:
    """The run's group, tags and rank as MLflow tags (only those that are set)."""
    tags = {}
    if run.group is not None:
        tags["steplog.group"] = run.group
    if run.tags:
        tags["steplog.tags"] = ",".join(run.tags)
    if run.rank is not None:
        tags["steplog.rank"] = str(run.rank)
    return tags
