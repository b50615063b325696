"""The run file: its record layout (:mod:`.schema`), its value encoding
(:mod:`.codec`), THE parser and ``read_run`` (:mod:`.read`), finding runs
(:mod:`.find`), the writer's lock (:mod:`.lock`) and the write side, ``RunFile``
(:mod:`.write`). Changing the file format touches this package only."""

from .find import find_runs, resolve_run
from .read import Run, RunSnapshot, open_run, read_run
from .schema import SCHEMA_VERSION
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
