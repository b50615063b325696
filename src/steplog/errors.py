"""Exceptions raised by steplog: the whole tree, every one exported as ``steplog.<Name>``.

The exception tree::

    SteplogError                 base class of every steplog error
    ├── TrackerError             the tracker's lifecycle and its backends
    │   ├── InactiveRunError     log()/flush() with no active run
    │   ├── BackendOpenError     a backend failed to open in init()
    │   ├── FlushTimeoutError    flush(timeout=…) did not complete in time (also a TimeoutError)
    │   ├── BackendFailedError   finish() of a Tracker(strict=True) and a backend lost events
    │   ├── PermanentBackendError  raised by a backend: retrying this write cannot help
    │   └── WorkerError          the writer thread died; the run cannot continue
    ├── RunFileError             a file is not a readable run (also a ValueError)
    ├── RunNotFoundError         no run matches what was asked for (also a LookupError)
    ├── MlflowError              a transient failure talking to an MLflow server (retried)
    └── MissingExtraError        an optional dependency is missing (also an ImportError)

    TrackerWarning (UserWarning) recoverable misuse: init() on an active run, finish()
                                 on an inactive one
    RunFileWarning (UserWarning) a reader skipped corrupt lines of a run file (scan())

Errors that happen off the caller's thread (a backend whose ``write`` raises, a value that
cannot be serialised) never reach ``log()``: they go to :mod:`logging` and to the run
statistics (:class:`steplog.RunStats`). ``finish(timeout=…)`` never raises for time:
what a backend did not write by then is counted as failed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendFailedError",
    "BackendOpenError",
    "FlushTimeoutError",
    "InactiveRunError",
    "MissingExtraError",
    "MlflowError",
    "PermanentBackendError",
    "RunFileError",
    "RunFileWarning",
    "RunNotFoundError",
    "SteplogError",
    "TrackerError",
    "TrackerWarning",
    "WorkerError",
]


class SteplogError(Exception):
    """Base class of every exception steplog raises."""


class TrackerError(SteplogError):
    """Raised when a tracker is used in a way its lifecycle does not allow, or a
    backend stops it from working."""


class InactiveRunError(TrackerError):
    """Raised when ``log()`` or ``flush()`` is called while no run is active."""


class BackendOpenError(TrackerError):
    """Raised by ``init()`` when a backend's ``open()`` fails; the cause is chained."""


class FlushTimeoutError(TrackerError, TimeoutError):
    """Raised when ``flush(timeout=…)`` does not complete within its timeout."""


class BackendFailedError(TrackerError):
    """Raised by ``finish()`` of a ``Tracker(strict=True)`` when a backend lost events.

    The run is finished and every backend closed before it is raised.

    Attributes:
        stats: The run's statistics, naming the failed backends.
    """

    def __init__(self, message: str, stats: Any) -> None:
        super().__init__(message)
        self.stats = stats


class PermanentBackendError(TrackerError):
    """Raised by a backend's ``write`` for an error retrying cannot fix (e.g. a 4xx answer).

    steplog then gives up on the batch at once instead of retrying it.
    """


class WorkerError(TrackerError):
    """Raised when the run's writer thread has died and can no longer accept work
    (the name is kept from when the thread was called the worker)."""


class RunFileError(SteplogError, ValueError):
    """Raised when a file is not a readable steplog run (corrupt line, wrong schema)."""


class RunNotFoundError(SteplogError, LookupError):
    """Raised when no run file matches what was asked for (or more than one does)."""


class MlflowError(SteplogError, RuntimeError):
    """A transient failure talking to an MLflow tracking server (retried by its lane).

    Attributes:
        retry_after: Seconds the server asked to wait (its ``Retry-After``), or ``None``.
    """

    retry_after: float | None = None


class MissingExtraError(SteplogError, ImportError):
    """Raised when a feature needs an optional dependency that is not installed.

    The message names the extra to install, e.g. ``pip install 'steplog[plot]'``.
    """


class TrackerWarning(UserWarning):
    """Warned when a tracker is used in a way that steplog can recover from."""


class RunFileWarning(UserWarning):
    """Warned when a reader skips corrupt lines of a run file (their numbers are in the
    message); a torn last line is not warned about."""
