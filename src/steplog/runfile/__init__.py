"""The run file: its record layout (:mod:`.schema`), its value encoding
(:mod:`.codec`), what a line is (:mod:`.records`), a file as a reader opened it
(:mod:`.snapshot`), what its ends say (:mod:`.header`), ``read_run`` (:mod:`.run`),
statistics (:mod:`.stats`), columns (:mod:`.columns`), following a growing file
(:mod:`.follow`), finding runs (:mod:`.find`), the writer's lock (:mod:`.lock`) and the
write side, ``RunFile`` (:mod:`.write`). Changing the file format touches this package
only."""

from .find import find_runs, resolve_run
from .run import Run, read_run
from .schema import SCHEMA_VERSION
from .snapshot import RunSnapshot, open_run
from .write import RunFile

__all__ = [
    "SCHEMA_VERSION",
    "Run",
    "RunFile",
    "RunSnapshot",
    "find_runs",
    "open_run",
    "read_run",
    "resolve_run",
]
