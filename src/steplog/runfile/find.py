"""Finding run files: under a root, by path, run id, prefix or ``latest``."""

from __future__ import annotations

from pathlib import Path

from ..errors import RunNotFoundError
from .read import read_start

__all__ = ["GROUP_PREFIX", "find_runs", "group_of", "resolve_run", "resolve_runs"]

#: A run spec ``group:NAME`` stands for every run of group ``NAME``.
GROUP_PREFIX = "group:"


def find_runs(root: Path) -> list[Path]:
    """Every ``*.jsonl`` file under ``root`` (``root/<experiment>/<run id>.jsonl``)."""
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.jsonl"))


def resolve_run(spec: str, root: Path) -> Path:
    """Turn what the user typed into one run file.

    ``spec`` may be a file; a directory (its most recent run); ``latest``; a run id, a
    unique prefix of one, or ``experiment/run-id`` under ``root``.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        return _latest(find_runs(path), spec)
    if spec == "latest":
        return _latest(find_runs(root) if root.is_dir() else [], f"{root}/")
    if not root.is_dir():
        raise RunNotFoundError(f"no run file {spec!r}, and no run directory {str(root)!r}")
    experiment, _, run_id = spec.rpartition("/")
    matches = [
        p
        for p in find_runs(root)
        if p.stem.startswith(run_id) and (not experiment or p.parent.name == experiment)
    ]
    exact = [p for p in matches if p.stem == run_id]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"no run matches {spec!r} under {str(root)!r}")
    names = ", ".join(str(p) for p in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{spec!r} matches {len(matches)} runs: {names}{more}")


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


def resolve_runs(spec: str, root: Path) -> list[Path]:
    """Like :func:`resolve_run`, and ``group:NAME`` gives every run of group ``NAME``
    under ``root``, by rank (then run id)."""
    if not spec.startswith(GROUP_PREFIX) or Path(spec).exists():
        return [resolve_run(spec, root)]
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
