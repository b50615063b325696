"""steplog: experiment tracking that is free for the hot loop.

``log()`` copies and enqueues; a background worker writes batches to the backends.
"""

from __future__ import annotations

from ._buffer import OverflowPolicy as OverflowPolicy
from ._worker import RetryPolicy as RetryPolicy
from .backends import Backend as Backend
from .backends import ConsoleBackend as ConsoleBackend
from .backends import JsonlBackend as JsonlBackend
from .backends import LivePlotBackend as LivePlotBackend
from .backends import MemoryBackend as MemoryBackend
from .backends import MlflowBackend as MlflowBackend
from .backends import NullBackend as NullBackend
from .backends import Sampled as Sampled
from .backends import TensorBoardBackend as TensorBoardBackend
from .backends import TrackioBackend as TrackioBackend
from .backends import WandbBackend as WandbBackend
from .errors import BackendFailedError as BackendFailedError
from .errors import BackendOpenError as BackendOpenError
from .errors import FlushTimeoutError as FlushTimeoutError
from .errors import InactiveRunError as InactiveRunError
from .errors import MissingExtraError as MissingExtraError
from .errors import PermanentBackendError as PermanentBackendError
from .errors import TrackerError as TrackerError
from .errors import TrackerWarning as TrackerWarning
from .errors import WorkerError as WorkerError
from .events import BackendStats as BackendStats
from .events import Event as Event
from .events import RunEnd as RunEnd
from .events import RunInfo as RunInfo
from .events import RunStats as RunStats
from .events import RunStatus as RunStatus
from .reader import Run as Run
from .reader import RunFileError as RunFileError
from .reader import read_run as read_run
from .replay import replay as replay
from .replay import replay_async as replay_async
from .tracker import AsyncTracker as AsyncTracker
from .tracker import Tracker as Tracker

__version__ = "0.1.0"

__all__ = [
    "AsyncTracker",
    "Backend",
    "BackendFailedError",
    "BackendOpenError",
    "BackendStats",
    "ConsoleBackend",
    "Event",
    "FlushTimeoutError",
    "InactiveRunError",
    "JsonlBackend",
    "LivePlotBackend",
    "MemoryBackend",
    "MissingExtraError",
    "MlflowBackend",
    "NullBackend",
    "OverflowPolicy",
    "PermanentBackendError",
    "RetryPolicy",
    "Run",
    "RunEnd",
    "RunFileError",
    "RunInfo",
    "RunStats",
    "RunStatus",
    "Sampled",
    "TensorBoardBackend",
    "Tracker",
    "TrackerError",
    "TrackerWarning",
    "TrackioBackend",
    "WandbBackend",
    "WorkerError",
    "__version__",
    "read_run",
    "replay",
    "replay_async",
]
