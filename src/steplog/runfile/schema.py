"""The run file's record layout (version 1; see docs/schema.md), written down once.

A run file holds one JSON object per line: the run-start record, one step record per
``log()`` call (``{"step", "time", "data"}``, no ``type``), and the run-end record. A
resumed run (``init(resume=...)``) goes on after that: a resume record starts each new
segment, whose steps and run-end record follow; readers take the last run-end record
after the last resume record as the run's end.
Values are encoded by :mod:`steplog.runfile.codec`. The writer process of
``durability="process"`` (``steplog._ringchild``, which may not import steplog) writes
the ``"killed"`` run-end record itself, with the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..events import RunEnd, RunInfo

if TYPE_CHECKING:
    from ..watch import Alert

__all__ = [
    "ALERT",
    "INCOMPLETE",
    "KILLED",
    "RESUME",
    "RUNNING",
    "RUN_END",
    "RUN_START",
    "SCHEMA_VERSION",
    "SYSTEM",
    "alert_record",
    "end_record",
    "flat_data",
    "flatten",
    "is_number",
    "is_step",
    "lookup",
    "resume_record",
    "run_info_of",
    "start_record",
    "system_record",
]

#: Version of the record schema (the run-start record's ``schema``).
SCHEMA_VERSION = 1
#: The ``type`` of the first record.
RUN_START = "run_start"
#: The ``type`` of the last record (of each segment, in a resumed run).
RUN_END = "run_end"
#: The ``type`` of the record that starts a resumed run's new segment.
RESUME = "resume"
#: The ``type`` of a system-metrics sample (``Tracker(system_metrics=)``).
SYSTEM = "system"
#: The ``type`` of an alert a watcher fired (``Tracker(watchers=)``).
ALERT = "alert"
#: The status of the run end the writer process of ``durability="process"`` writes when
#: the logging process died: it cannot know the run's summary.
KILLED = "killed"
#: Status reported for a file without a run-end record whose writer is gone (killed
#: before it could finish the run), or that cannot be checked.
INCOMPLETE = "incomplete"
#: Status reported for a file without a run-end record whose writer still runs here.
RUNNING = "running"


def start_record(run: RunInfo) -> dict[str, Any]:
    """The run-start record of ``run``."""
    return {
        "type": RUN_START,
        "schema": SCHEMA_VERSION,
        "run_id": run.run_id,
        "experiment": run.experiment,
        "start_time": run.start_time,
        "pid": run.pid,
        "host": run.host,
        "config": run.config,
        **_placement(run),
    }


def run_info_of(start: Mapping[str, Any]) -> RunInfo:
    """The :class:`RunInfo` a run-start record describes: the inverse of
    :func:`start_record` (what ``replay`` and ``sync`` open the backends with, so a run
    sent from its file gets the same id, group, tags and ranks as it got live)."""
    tags = start.get("tags")
    return RunInfo(
        run_id=str(start["run_id"]),
        experiment=str(start["experiment"]),
        config=start.get("config") or {},
        start_time=float(start["start_time"]),
        pid=int(start.get("pid") or 0),
        host=str(start.get("host") or ""),
        group=start["group"] if isinstance(start.get("group"), str) else None,
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        rank=_optional_int(start.get("rank")),
        local_rank=_optional_int(start.get("local_rank")),
        world_size=_optional_int(start.get("world_size")),
    )


def _optional_int(value: Any) -> int | None:
    return value if type(value) is int else None


def _placement(run: RunInfo) -> dict[str, Any]:
    """The group, tags and ranks of ``run``: only those that are set, so the records of
    a plain run stay as they were."""
    out: dict[str, Any] = {}
    if run.group is not None:
        out["group"] = run.group
    if run.tags:
        out["tags"] = list(run.tags)
    for name in ("rank", "local_rank", "world_size"):
        value = getattr(run, name)
        if value is not None:
            out[name] = value
    return out


def resume_record(run: RunInfo) -> dict[str, Any]:
    """The record that starts the new segment of the resumed ``run``.

    Its ``config`` is the run's config from then on: the run-start record's, updated
    with the config given to the resuming ``init()``.
    """
    resumed = run.resumed
    if resumed is None:
        raise ValueError(f"run {run.run_id} is not a resumed run")
    return {
        "type": RESUME,
        "run_id": run.run_id,
        "time": resumed.resume_time,
        "segment": resumed.segment,
        "step": resumed.step,
        "previous_status": resumed.previous_status,
        "pid": run.pid,
        "host": run.host,
        "config": run.config,
        **_placement(run),
    }


def end_record(end: RunEnd, *, encoding_fallbacks: int) -> dict[str, Any]:
    """The run-end record of ``end``."""
    return {
        "type": RUN_END,
        "run_id": end.run_id,
        "end_time": end.end_time,
        "status": end.status,
        "summary": end.summary,
        "stats": end.stats.to_dict(),
        "encoding_fallbacks": encoding_fallbacks,
    }


def system_record(time: float, events: int, data: dict[str, Any]) -> dict[str, Any]:
    """A system-metrics sample taken at ``time``, after ``events`` events were logged."""
    return {"type": SYSTEM, "time": time, "events": events, "data": data}


def alert_record(alert: Alert) -> dict[str, Any]:
    """The record of an alert a watcher fired."""
    return {
        "type": ALERT,
        "time": alert.time,
        "step": alert.step,
        "watcher": alert.watcher,
        "key": alert.key,
        "value": alert.value,
        "message": alert.message,
        "suppressed": alert.suppressed,
    }


def is_step(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a well-formed step record: an int ``step``, a numeric
    ``time``, an object ``data`` (and no ``type``)."""
    when = record.get("time")
    return (
        "type" not in record
        and type(record.get("step")) is int
        and type(record.get("data")) is dict
        and (type(when) is float or (isinstance(when, (int, float)) and type(when) is not bool))
    )


def is_number(value: Any) -> bool:
    """A number, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def lookup(data: dict[str, Any], key: str) -> Any:
    """``data[key]``, or a nested value for a dotted key (``"grad.norm"``); ``None`` if
    absent. A dict subclass (``OrderedDict``, ``defaultdict``) is entered too: the file
    stores it as an object."""
    if key in data:
        return data[key]
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def flat_data(data: dict[str, Any]) -> dict[str, Any]:
    """A step's data with dotted keys: ``data`` itself unless it holds a nested mapping
    (the common case, so long runs skip building a copy of every record)."""
    for value in data.values():
        if type(value) is dict:
            return flatten(data)
    return data


def flatten(data: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings become joined keys: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``.

    Empty mappings stay as values. Shared by the CLI and the backends that need flat
    keys (MLflow params and metrics, TensorBoard tags with ``sep="/"``).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, sep, f"{name}{sep}"))
        else:
            out[name] = value
    return out
