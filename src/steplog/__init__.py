"""steplog: experiment tracking that is free for the hot loop.

``log()`` copies and enqueues; a writer thread writes batches to the run file and the backends.
"""

from __future__ import annotations

import inspect

from . import watch as watch
from ._batch import EventBatch as EventBatch
from ._delivery import RetryPolicy as RetryPolicy
from ._options import OverflowPolicy as OverflowPolicy
from .backends import Backend as Backend
from .backends import ConsoleBackend as ConsoleBackend
from .backends import JsonlBackend as JsonlBackend
from .backends import LivePlotBackend as LivePlotBackend
from .backends import MemoryBackend as MemoryBackend
from .backends import MlflowBackend as MlflowBackend
from .backends import NullBackend as NullBackend
from .backends import Sampled as Sampled
from .backends import SyncBackend as SyncBackend
from .backends import TensorBoardBackend as TensorBoardBackend
from .backends import TrackioBackend as TrackioBackend
from .backends import WandbBackend as WandbBackend
from .errors import BackendFailedError as BackendFailedError
from .errors import BackendOpenError as BackendOpenError
from .errors import FlushTimeoutError as FlushTimeoutError
from .errors import InactiveRunError as InactiveRunError
from .errors import MissingExtraError as MissingExtraError
from .errors import MlflowError as MlflowError
from .errors import PermanentBackendError as PermanentBackendError
from .errors import RunFileError as RunFileError
from .errors import RunFileWarning as RunFileWarning
from .errors import RunNotFoundError as RunNotFoundError
from .errors import SteplogError as SteplogError
from .errors import TrackerError as TrackerError
from .errors import TrackerWarning as TrackerWarning
from .errors import WorkerError as WorkerError
from .events import BackendStats as BackendStats
from .events import Event as Event
from .events import Resumed as Resumed
from .events import RunEnd as RunEnd
from .events import RunInfo as RunInfo
from .events import RunStats as RunStats
from .events import RunStatus as RunStatus
from .replay import replay as replay
from .replay import replay_async as replay_async
from .runfile.columns import scan as scan
from .runfile.run import Run as Run
from .runfile.run import RunSegment as RunSegment
from .runfile.run import read_run as read_run
from .tracker import AsyncTracker as AsyncTracker
from .tracker import Tracker as Tracker
from .watch import Alert as Alert

__version__ = "0.1.0"

# Public classes and functions say where users import them from (as anyio does):
# ``steplog.RetryPolicy``, not ``steplog._fanout.RetryPolicy``.
for _name, _value in list(globals().items()):
    if (
        not _name.startswith("_")
        and (isinstance(_value, type) or inspect.isfunction(_value))
        and _value.__module__.startswith("steplog.")
    ):
        _value.__module__ = __name__
del _name, _value

__all__ = [
    "Alert",
    "AsyncTracker",
    "Backend",
    "BackendFailedError",
    "BackendOpenError",
    "BackendStats",
    "ConsoleBackend",
    "Event",
    "EventBatch",
    "FlushTimeoutError",
    "InactiveRunError",
    "JsonlBackend",
    "LivePlotBackend",
    "MemoryBackend",
    "MissingExtraError",
    "MlflowBackend",
    "MlflowError",
    "NullBackend",
    "OverflowPolicy",
    "PermanentBackendError",
    "Resumed",
    "RetryPolicy",
    "Run",
    "RunEnd",
    "RunFileError",
    "RunFileWarning",
    "RunInfo",
    "RunNotFoundError",
    "RunSegment",
    "RunStats",
    "RunStatus",
    "Sampled",
    "SteplogError",
    "SyncBackend",
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
    "scan",
]
