"""Starting a run's lanes: where each remote backend follows the run file.

The writer (:class:`steplog._writer.Writer`) calls :func:`start_lanes` once the run
file is open. With ``delivery="process"`` the backends that can move (they pickle) get
their lanes in the delivery process (:mod:`steplog._delivery_process`); the others,
and all of them with ``delivery="thread"``, in a thread of this process
(:mod:`steplog._lanehost`). Either way the writer sees one :class:`LaneGroups`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackendOpenError

if TYPE_CHECKING:  # the lanes' modules load only for a run with remote backends
    from ._delivery import RetryPolicy
    from ._lanehost import LaneGroups
    from .backends.base import Backend
    from .events import RunInfo

__all__ = ["start_lanes"]


def start_lanes(
    info: RunInfo,
    path: Path,
    remote: Sequence[tuple[str, Backend]],
    *,
    delivery: str,
    batch_size: int,
    retry: RetryPolicy,
    ring_pid: int | None,
    deadline: Callable[[], float | None],
) -> LaneGroups:
    """A lane per remote backend, following the run file at ``path`` from its cursor.

    Args:
        info: The run, as the backends open it.
        path: The run file.
        remote: The remote backends, by name.
        delivery: ``"process"`` or ``"thread"``.
        batch_size: Events a backend gets at once, at most.
        retry: The retry policy.
        ring_pid: The writer process of ``durability="process"``, if any (after a
            kill, the delivery process waits for it to finish the file).
        deadline: The stop's deadline, once there is one (for lanes in a thread).

    Raises:
        BackendOpenError: A backend could not open the run.
    """
    from ._delivery_process import ProcessLanes, movable
    from ._lane import Lane, cursor_path
    from ._lanehost import LaneGroups, ThreadLanes
    from .backends.sampled import Sampled

    by_name = dict(remote)
    here = list(remote)
    groups: list[Any] = []
    if delivery == "process":
        specs = []
        for name, backend in remote:
            data = movable(backend)
            if data is not None:
                specs.append((name, data, cursor_path(path, backend, name=name)))
        if specs:
            targets = {name: b.backend if isinstance(b, Sampled) else b for name, b in remote}
            process = ProcessLanes(
                path,
                specs,
                batch_size=batch_size,
                retry=retry,
                ring_pid=ring_pid,
                targets=targets,
            )
            errors, unmovable, states = process.start(info)
            if errors:
                process.kill()
                name, exc = next(iter(errors.items()))
                error = BackendOpenError(
                    f"backend {name!r} ({by_name[name]!r}) could not open run "
                    f"{info.run_id!r}: {exc}"
                )
                error.__cause__ = exc
                raise error
            process.apply_states(states)
            moved = {name for name, _, _ in specs} - set(unmovable)
            here = [(n, b) for n, b in remote if n not in moved]
            process.names = [n for n in process.names if n in moved]
            groups.append(process)
    if here:
        lanes = [
            Lane(
                path,
                backend,
                cursor=cursor_path(path, backend, name=name),
                name=name,
                batch_size=batch_size,
                retry=retry,
                deadline=deadline,
            )
            for name, backend in here
        ]
        threads = ThreadLanes(path, lanes)
        try:
            threads.start(info)
        except BaseException:
            for group in groups:
                group.kill()
            raise
        groups.append(threads)
    return LaneGroups(groups)
