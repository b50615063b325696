"""Exceptions raised by steplog.

The exception tree::

    TrackerError                 base class of every steplog error
    ├── InactiveRunError         log()/flush() with no active run
    ├── BackendOpenError         a backend failed to open in init()
    ├── FlushTimeoutError        flush()/finish() did not complete in time (also a TimeoutError)
    ├── BackendFailedError       finish(strict=True) and a backend lost events
    ├── PermanentBackendError    raised by a backend: retrying this write cannot help
    └── WorkerError              the background worker died; the run cannot continue

    TrackerWarning (UserWarning) recoverable misuse: init() on an active run, finish()
                                 on an inactive one, a run left unfinished at exit

Errors that happen inside the worker (a backend whose ``write`` raises, a value that
cannot be serialised) never reach ``log()``: they go to :mod:`logging` and to the run
statistics (:class:`steplog.RunStats`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendFailedError",
    "BackendOpenError",
    "FlushTimeoutError",
    "InactiveRunError",
    "MissingExtraError",
    "PermanentBackendError",
    "TrackerError",
    "TrackerWarning",
    "WorkerError",
]


class TrackerError(Exception):
    """Raised when a tracker is used in a way its lifecycle does not allow."""


class InactiveRunError(TrackerError):
    """Raised when ``log()`` or ``flush()`` is called while no run is active."""


class BackendOpenError(TrackerError):
    """Raised by ``init()`` when a backend's ``open()`` fails; the cause is chained."""


class FlushTimeoutError(TrackerError, TimeoutError):
    """Raised when ``flush()`` or ``finish()`` does not complete within its timeout."""


class BackendFailedError(TrackerError):
    """Raised by ``finish()`` of a ``strict=True`` tracker when a backend lost events.

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
    """Raised when the background worker has died and can no longer accept work."""


class MissingExtraError(ImportError):
    """Raised when a feature needs an optional dependency that is not installed.

    The message names the extra to install, e.g. ``pip install 'steplog[plot]'``.
    """


class TrackerWarning(UserWarning):
    """Warned when a tracker is used in a way that steplog can recover from."""
