"""Finding the run file ``init(resume=...)`` continues: ``"latest"`` (this process's
own most recent run, unless it finished), a run id, a prefix, ``EXPERIMENT/ID`` or a
path under the JSONL root.

Where a found run is continued (its next step, segment, summary, size) is
:func:`steplog.runfile.header.resume_point`'s business; this module only picks the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import RunNotFoundError
from .find import resolve_run
from .header import read_header
from .snapshot import open_run, read_start

__all__ = ["latest_own_run", "run_to_resume"]

logger = logging.getLogger("steplog")


def run_to_resume(
    spec: str | os.PathLike[str],
    *,
    root: Path,
    experiment: str,
    group: str | None,
    rank: int | None,
) -> Path | None:
    """The run file ``resume=spec`` continues, or ``None`` for ``"latest"`` when the
    experiment has no run of this process yet (a first start: the script is the same
    either way).

    Args:
        spec: ``"latest"``, a run id of ``experiment`` (or a prefix of one),
            ``EXPERIMENT/ID``, or the path of a run file under ``root``.
        root: The JSONL backend's root: runs are ``root/<experiment>/<run id>.jsonl``.
        experiment: The tracker's experiment.
        group: The group of the run about to start (``"latest"`` picks within it).
        rank: This process's rank (``"latest"`` picks this rank's run).

    Raises:
        RunNotFoundError: ``spec`` names no run.
        ValueError: ``spec`` names a run outside ``root``.
    """
    directory = root / experiment
    spec = os.fspath(spec)
    if spec == "latest":
        found = latest_own_run(directory, group=group, rank=rank)
        if found is None:
            logger.info("steplog: no run to resume under %s; starting a new run", directory)
        return found
    own = directory / f"{spec}.jsonl"
    try:  # an id of this experiment, a prefix, EXPERIMENT/ID, or a path
        path = own if own.is_file() else resolve_run(spec, root)
    except RunNotFoundError as exc:
        raise RunNotFoundError(f"no run to resume: {exc}") from None
    if path.is_dir() or path.resolve().parent.parent != root.resolve():
        raise ValueError(
            f"cannot resume {spec!r}: the tracker's JsonlBackend writes under "
            f"{str(root)!r}; resume a run there (by its run id or file)"
        )
    return path


def latest_own_run(directory: Path, *, group: str | None, rank: int | None) -> Path | None:
    """The run ``resume="latest"`` continues: the most recently started run in
    ``directory`` that this process would have written — the same rank (in a distributed
    job every rank resumes its own run) and, when a group is set, the same group — unless
    it finished (then ``None``: a new run). Files that are not runs (empty, a torn first
    line: killed while creating them) are skipped."""
    runs = sorted(directory.glob("*.jsonl"), reverse=True) if directory.is_dir() else []
    for path in runs:  # run ids sort by start time
        start = read_start(path)
        if start is None:
            logger.warning("steplog: resume='latest' skips %s: not a readable run", path)
            continue
        if start.get("rank") != rank:
            continue
        if group is not None and start.get("group") != group:
            continue
        try:
            status = read_header(open_run(path)).status
        except (OSError, ValueError):
            status = None
        if status == "finished":  # it ended well: this is a new start, not a restart
            logger.info("steplog: the latest run %s finished; starting a new run", path.stem)
            return None
        return path
    return None
