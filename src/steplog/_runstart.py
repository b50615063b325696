"""The start of a run: what it records about itself and whether it continues one.

:func:`plan_run` turns a tracker's options and ``init(config, resume=...)`` into the
run's :class:`RunInfo`: the merged and redacted config, this process's rank, local rank
and world size (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), its group (the ``group``
option, ``$STEPLOG_GROUP`` or torchrun's rendezvous id), its tags, and — with
``resume`` — the continued run's id, experiment, start time, config (the new config
merged over it) and summary so far. It also says which backends the run writes to
(none but a null sink on a rank other than 0 under ``rank0_only``). Which file is
continued is :mod:`.runfile.resume`'s decision; where in it, :func:`resume_point`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ._redact import redact as _redact
from ._tracker_options import TrackerOptions, config_mapping
from .backends.base import Backend
from .backends.null import NullBackend
from .errors import RunFileError
from .events import Resumed, RunInfo
from .runfile.header import ResumePoint, resume_point
from .runfile.resume import latest_own_run, run_to_resume

__all__ = ["ResumeLike", "RunPlan", "elastic_run_id", "latest_run", "plan_run", "ranks"]

logger = logging.getLogger("steplog")

#: What ``init(resume=...)`` takes: a run id, ``"latest"``, a run file's path, or ``None``.
ResumeLike = str | os.PathLike[str] | None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run starts with.

    Attributes:
        info: The run as the backends are told of it (before they open it).
        backends: The backends it writes to, by name.
        previous_summary: A resumed run's summary so far (``tracker.summary`` starts
            from it); empty for a new run.
    """

    info: RunInfo
    backends: list[tuple[str, Backend]]
    previous_summary: dict[str, Any]


def plan_run(options: TrackerOptions, config: Any, *, resume: ResumeLike, run_id: str) -> RunPlan:
    """The run ``init(config, resume=resume)`` starts, with id ``run_id`` unless it
    continues a run.

    Raises:
        TypeError: ``config`` or ``resume`` is of the wrong kind.
        ValueError: ``resume`` without a JSONL backend, or naming a run elsewhere.
        RunNotFoundError: ``resume`` names a run that is not there.
        RunFileError: The run to resume is not a readable run, or is still written.
    """
    rank, local_rank, world_size = ranks()
    muted = options.rank0_only and rank not in (None, 0)
    backends: list[tuple[str, Backend]] = (
        [("null", NullBackend())]
        if muted
        else list(zip(options.backend_names, options.backends, strict=True))
    )
    group = run_group(options)
    info = RunInfo(
        run_id=run_id,
        experiment=options.experiment_name,
        config=merged_config(options, config),
        start_time=time.time(),
        pid=os.getpid(),
        host=socket.gethostname(),
        group=group,
        tags=options.tags,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
    )
    previous: dict[str, Any] = {}
    if resume is not None and not muted:
        point = _resume_point(options, resume, group=group, rank=rank)
        if point is not None:
            previous = point.summary
            info = dataclasses.replace(
                info,
                run_id=str(point.start["run_id"]),
                experiment=str(point.start["experiment"]),
                config={**point.config, **info.config},
                start_time=float(point.start["start_time"]),
                group=group or point.start.get("group"),
                tags=options.tags or tuple(point.start.get("tags") or ()),
                resumed=Resumed(
                    step=point.next_step,
                    segment=point.segment,
                    previous_status=point.previous_status,
                    resume_time=time.time(),
                ),
            )
    return RunPlan(info=info, backends=backends, previous_summary=previous)


def merged_config(options: TrackerOptions, config: Any) -> dict[str, Any]:
    """``experiment_config`` with ``config`` over it, secrets redacted."""
    config = config_mapping(config, "config")
    merged: dict[str, Any] = _redact(
        {**options.experiment_config, **(config or {})}, options.redact
    )
    return merged


def latest_run(options: TrackerOptions) -> Path | None:
    """The run file ``init(resume="latest")`` would continue if called now, or
    ``None`` (it would start a new run), for integrations that name a run before it
    starts (Lightning asks a logger for its version first)."""
    jsonl = options.jsonl
    if jsonl is None:
        return None
    rank = ranks()[0]
    directory = jsonl.root / options.experiment_name
    return latest_own_run(directory, group=run_group(options), rank=rank)


def _resume_point(
    options: TrackerOptions, resume: ResumeLike, *, group: str | None, rank: int | None
) -> ResumePoint | None:
    """The run file ``init(resume=...)`` continues, or ``None`` for "latest" when the
    experiment has no run yet (a first start: the script is the same either way)."""
    jsonl = options.jsonl
    if jsonl is None:
        raise ValueError(
            "resume= continues a run's JSONL file: the tracker needs a "
            "steplog.JsonlBackend among its backends"
        )
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume must be a run id, 'latest' or a run file's path, not {resume!r}")
    path = run_to_resume(
        resume, root=jsonl.root, experiment=options.experiment_name, group=group, rank=rank
    )
    if path is None:
        return None
    point = resume_point(path)
    if path.stem != point.start.get("run_id"):
        raise RunFileError(f"{path}: its run id {point.start.get('run_id')!r} is not its name")
    jsonl.expect_resume(point.size)
    return point


# -- the environment ----------------------------------------------------------------


def run_group(options: TrackerOptions) -> str | None:
    """The group a run started now gets (see ``group`` in :class:`Tracker`)."""
    return options.group or os.environ.get("STEPLOG_GROUP") or elastic_run_id()


def ranks() -> tuple[int | None, int | None, int | None]:
    """``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment, as torchrun,
    ``accelerate`` and DeepSpeed set them (``None`` where unset or not a number)."""
    values: list[int | None] = []
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        raw = os.environ.get(name)
        try:
            values.append(int(raw) if raw is not None else None)
        except ValueError:
            logger.warning("steplog: ignoring %s=%r (not an integer)", name, raw)
            values.append(None)
    rank, local_rank, world_size = values
    if rank is not None and (rank < 0 or (world_size is not None and rank >= world_size)):
        logger.warning(
            "steplog: RANK=%s is not a rank of a job of WORLD_SIZE=%s processes", rank, world_size
        )
    return rank, local_rank, world_size


def elastic_run_id() -> str | None:
    """torchrun's job id (``--rdzv-id``), shared by every rank of a job; ``None`` when
    unset or torchrun's placeholder ``"none"``."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return value if value and value != "none" else None
