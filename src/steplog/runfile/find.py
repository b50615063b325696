"""Finding run files: under a root, by path, run id, prefix, experiment name or ``latest``."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunNotFoundError
from .snapshot import read_start

__all__ = ["GROUP_PREFIX", "find_runs", "group_of", "resolve_run", "resolve_runs"]

#: A run spec ``group:NAME`` stands for every run of group ``NAME``.
GROUP_PREFIX = "group:"


def find_runs(root: Path) -> list[Path]:
    """Every ``*.jsonl`` file under ``root`` (``root/<experiment>/<run id>.jsonl``)."""
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.jsonl"))


def resolve_run(spec: str, root: Path, *, experiment_names: bool = False) -> Path:
    """Turn what the user typed into one run file.

    ``spec`` may be a file; a directory (its most recent run); ``latest``; a run id, a
    unique prefix of one, or ``experiment/run-id`` under ``root``.

    With ``experiment_names`` (the command line), ``NAME`` -- an experiment as ``steplog
    ls`` prints it -- and ``NAME/`` are the experiment's most recent run: of the run files
    under ``root`` in a directory named ``NAME`` (``ROOT/NAME/``, where ``JsonlBackend``
    writes them), the last written, as the directory ``ROOT/NAME`` gives. A bare ``NAME``
    that could also be read another way -- a path here that is not that directory,
    ``latest``, a prefix of a run id -- raises :class:`RunNotFoundError` naming how to
    type each, never picks one silently. ``init(resume=)`` leaves it off: naming an
    experiment there would continue whichever of its runs was written last.

    Raises:
        RunNotFoundError: nothing matches (with ``experiment_names``, the message lists
            the experiments there are), or several runs or readings do.
    """
    path = Path(spec)
    listing: list[Path] | None = None  # the run files under root, once

    def under_root() -> list[Path]:
        nonlocal listing
        if listing is None:
            listing = find_runs(root) if root.is_dir() else []
        return listing

    if experiment_names and spec and "/" not in spec:
        named = [p for p in under_root() if p.parent.name == spec]
        if named and not _same_directory(path, named):
            _refuse_second_reading(spec, root, named, under_root())
            return _latest(named, spec)
    if path.is_file():
        return path
    if path.is_dir():
        return _latest(find_runs(path), spec)
    if spec == "latest":
        return _latest(under_root(), f"{root}/")
    if not root.is_dir():
        raise RunNotFoundError(f"no run file {spec!r}, and no run directory {str(root)!r}")
    experiment, _, run_id = spec.rpartition("/")
    matches = [
        p
        for p in under_root()
        if p.stem.startswith(run_id) and (not experiment or p.parent.name == experiment)
    ]
    if experiment_names and experiment and not run_id and matches:
        return _latest(matches, spec)  # NAME/: the experiment
    exact = [p for p in matches if p.stem == run_id]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        hint = _experiments_there(under_root()) if experiment_names else ""
        raise RunNotFoundError(f"no run matches {spec!r} under {str(root)!r}{hint}")
    names = ", ".join(str(p) for p in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{spec!r} matches {len(matches)} runs: {names}{more}")


def _experiments_there(runs: list[Path]) -> str:
    """What to say when a name matches nothing: the experiments there are."""
    names = sorted({p.parent.name for p in runs})
    listed = ", ".join(names[:20]) or "none"
    if len(names) > 20:
        listed += f" and {len(names) - 20} more"
    return f": not a run id, a prefix of one or an experiment (experiments: {listed})"


def _same_directory(path: Path, named: list[Path]) -> bool:
    """Whether ``path`` (as typed, relative to here) is a directory of the experiment's
    runs ``named``: inside ``ROOT`` with ``--root .``, ``NAME`` is both and means one."""
    if not path.is_dir():
        return False
    here = path.resolve()
    return any(p.parent.resolve() == here for p in named)


def _refuse_second_reading(spec: str, root: Path, named: list[Path], runs: list[Path]) -> None:
    """Raise if ``spec``, the name of the experiment whose runs are ``named``, also reads
    as a path here, as ``latest`` or as a prefix of run ids; the message says what to
    type for each reading."""
    where = str(max(named, key=lambda p: p.stat().st_mtime).parent)
    experiment = f"experiment {spec!r} under {str(root)!r}"
    if Path(spec).exists():
        raise RunNotFoundError(
            f"{spec!r} is both a path here and {experiment}: type './{spec}' for the path, "
            f"or {where!r} for the experiment's latest run"
        )
    if spec == "latest":
        raise RunNotFoundError(
            f"'latest' is both the latest run under {str(root)!r} and {experiment}: type "
            f"{os.path.join(root, '')!r} for the first, or {where!r} for the experiment's "
            "latest run"
        )
    ids = [p for p in runs if p.stem.startswith(spec)]
    if ids:
        what = f"{len(ids)} run ids" if len(ids) > 1 else f"run id {ids[0].stem!r}"
        raise RunNotFoundError(
            f"{spec!r} is both {experiment} and a prefix of {what}: type '{spec}/' for "
            "the experiment's latest run, or more of the run id"
        )


def _latest(paths: list[Path], where: str) -> Path:
    if not paths:
        raise RunNotFoundError(f"no runs under {where!r}")
    return max(paths, key=lambda p: p.stat().st_mtime)


def group_of(path: Path) -> tuple[str | None, int | None]:
    """The group and rank a run file's run-start record names (``None`` for each that it
    does not, or for a file that is not a run)."""
    start = read_start(path) or {}
    group, rank = start.get("group"), start.get("rank")
    return (
        group if isinstance(group, str) else None,
        rank if type(rank) is int else None,
    )


def resolve_runs(spec: str, root: Path, *, experiment_names: bool = False) -> list[Path]:
    """Like :func:`resolve_run`, and ``group:NAME`` gives every run of group ``NAME``
    under ``root``, by rank (then run id)."""
    if not spec.startswith(GROUP_PREFIX) or Path(spec).exists():
        return [resolve_run(spec, root, experiment_names=experiment_names)]
    name = spec[len(GROUP_PREFIX) :]
    members: list[tuple[float, str, Path]] = []
    groups: set[str] = set()
    for path in find_runs(root) if root.is_dir() else []:
        group, rank = group_of(path)
        if group is not None:
            groups.add(group)
        if group == name:
            members.append((rank if rank is not None else float("inf"), path.stem, path))
    if not members:
        there = ", ".join(sorted(groups)[:10]) or "none"
        raise RunNotFoundError(f"no run of group {name!r} under {str(root)!r} (groups: {there})")
    return [path for _, _, path in sorted(members)]
