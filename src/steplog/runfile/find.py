"""Finding run files: under a root, by path, run id, prefix or ``latest``."""

from __future__ import annotations

from pathlib import Path

from ..errors import RunNotFoundError

__all__ = ["find_runs", "resolve_run"]


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
