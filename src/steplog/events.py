"""The records that flow from the tracker to the backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

__all__ = [
    "RUN_STATUSES",
    "BackendStats",
    "Event",
    "Resumed",
    "RunEnd",
    "RunInfo",
    "RunStats",
    "RunStatus",
]

RunStatus = Literal["finished", "failed", "interrupted", "terminated", "unfinished", "killed"]

#: Every status a run can end with.
RUN_STATUSES: tuple[RunStatus, ...] = (
    "finished",
    "failed",
    "interrupted",
    "terminated",
    "unfinished",
    "killed",
)


class Event(NamedTuple):
    """One ``log()`` call: the step, the wall-clock time and a copy of the data.

    ``Event`` is a named tuple rather than a dataclass on purpose: the hot path builds
    one per ``log()`` call, and a tuple is the cheapest immutable record CPython can
    make (a frozen dataclass costs several times more per instance).

    Attributes:
        step: The step number: auto-incremented, or the explicit ``step=`` argument.
        time: Wall-clock time of the ``log()`` call, seconds since the epoch.
        data: A shallow copy of the mapping passed to ``log()``, owned by steplog.
    """

    step: int
    time: float
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class RunInfo:
    """What a backend learns about a run when it is opened.

    Attributes:
        run_id: Unique id of the run (sortable by start time).
        experiment: Experiment name the run belongs to.
        config: ``experiment_config`` merged with the ``init(config)`` argument.
        start_time: Wall-clock start time, seconds since the epoch.
        pid: Process id of the logging process.
        host: Host name of the logging machine.
        group: The group the run belongs to (the ranks of one distributed job, the
            trials of one sweep), or ``None``.
        tags: Labels given to the run.
        rank: The process's rank in a distributed job (``RANK``), or ``None``.
        local_rank: Its rank on its machine (``LOCAL_RANK``), or ``None``.
        world_size: The number of processes of the job (``WORLD_SIZE``), or ``None``.
        resumed: Set when ``init(resume=...)`` continues an earlier run: what the run
            file held when it was resumed; ``None`` for a new run.
    """

    run_id: str
    experiment: str
    config: Mapping[str, Any]
    start_time: float
    pid: int
    host: str
    group: str | None = None
    tags: tuple[str, ...] = ()
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    resumed: Resumed | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Resumed:
    """What a resumed run continues from (:attr:`RunInfo.resumed`).

    Attributes:
        step: The first step of the new segment: one past the last step in the file.
        segment: The new segment's number: 1 for the first resume, 2 for the next...
        previous_status: How the previous segment ended: its run-end status, or
            ``"incomplete"`` when the writer was killed before it could end the run.
        resume_time: Wall-clock time of the resume.
    """

    step: int
    segment: int
    previous_status: str
    resume_time: float


@dataclasses.dataclass(frozen=True, slots=True)
class BackendStats:
    """Delivery counts of one backend for one run.

    For every backend, ``delivered + failed + dropped`` equals the run's ``logged``
    once the run is finished.

    Attributes:
        delivered: Events the backend's ``write`` accepted.
        failed: Events in batches whose ``write`` raised.
        dropped: Events dropped by the overflow policy (the shared buffer's drops plus
            those dropped because this backend fell too far behind).
        errors: Number of failed calls to the backend.
        last_error: ``repr`` of the last error, or ``None``.
        disabled: Whether the backend was cut off (circuit breaker open) at the end
            of the run.
        caught_up: Of ``delivered``, the events sent from the run file after the
            backend missed them live (an outage, or too far behind).
        missing: Of ``failed``, the events it had missed and not got back by the end of
            the run (``steplog replay`` can send them later).
        outages: ``[start, end]`` wall-clock times of each outage (``end`` is ``None``
            if it lasted to the end of the run).
    """

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str | None = None
    disabled: bool = False
    caught_up: int = 0
    missing: int = 0
    outages: list[list[float | None]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as a plain dict (as stored in the run-end record)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class RunStats:
    """What happened to the events of one run.

    Attributes:
        logged: Every accepted ``log()`` call, dropped ones included.
        written: Events handed to the backends (``logged - dropped`` once drained).
        dropped: Events dropped by the overflow policy of the shared buffer.
        batches: Batches handed to the backends.
        backend_errors: Failed backend calls, all backends together.
        max_buffer_depth: The deepest the buffer was seen (by the worker at each drain,
            or at an overflow).
        drain_seconds: Time ``finish()`` spent draining and closing the backends.
        device_syncs: Times the writer waited on an accelerator to read logged tensors
            (at most one per batch and device).
        device_copies: Copies from an accelerator to the host (at most one per batch,
            device and dtype).
        changed_values: Tensors changed in place after ``log()`` and before they were
            read, recorded as ``{"$changed": value}`` (see docs/tensors.md).
        alerts: Alerts the run's watchers fired (see :mod:`steplog.watch`).
        alert_callback_errors: Calls of ``on_alert`` that raised (logged once, counted).
        writer_takeover: ``durability="process"``: the writer process died mid-run and
            the logging process wrote the rest of the run file (an alert record of
            watcher ``"writer_process"`` in the file says when and why).
        backends: Per-backend delivery counts, keyed by backend name.
    """

    logged: int = 0
    written: int = 0
    dropped: int = 0
    batches: int = 0
    backend_errors: int = 0
    max_buffer_depth: int = 0
    drain_seconds: float = 0.0
    device_syncs: int = 0
    device_copies: int = 0
    changed_values: int = 0
    alerts: int = 0
    alert_callback_errors: int = 0
    writer_takeover: bool = False
    backends: Mapping[str, BackendStats] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the statistics as a plain dict (as stored in the run-end record)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["backends"] = {name: b.to_dict() for name, b in self.backends.items()}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunStats:
        """Rebuild statistics from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"backends"}
        kwargs: dict[str, Any] = {k: raw[k] for k in names if k in raw}
        backend_names = {f.name for f in dataclasses.fields(BackendStats)}
        kwargs["backends"] = {
            name: BackendStats(**{k: v for k, v in b.items() if k in backend_names})
            for name, b in (raw.get("backends") or {}).items()
        }
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True, slots=True)
class RunEnd:
    """What a backend learns about a run when it is closed.

    Attributes:
        run_id: Id of the run being closed.
        end_time: Wall-clock end time, seconds since the epoch.
        status: One of :data:`RUN_STATUSES`.
        summary: The summary passed to ``finish()`` merged over ``tracker.summary``.
        stats: The run's statistics.
    """

    run_id: str
    end_time: float
    status: RunStatus
    summary: Mapping[str, Any]
    stats: RunStats
