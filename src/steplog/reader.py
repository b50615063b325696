"""Reading a JSONL run file back (moved to :mod:`steplog.runfile.read`)."""

from .errors import RunFileError
from .runfile.read import Run, read_run
from .runfile.schema import INCOMPLETE

__all__ = ["INCOMPLETE", "Run", "RunFileError", "read_run"]
