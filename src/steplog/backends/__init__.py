"""Backends: where a run's events go.

The ecosystem backends (MLflow, W&B, TensorBoard, trackio, live plot) import their
optional dependency only when constructed; a missing one raises
:class:`steplog.MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

from .base import Backend as Backend
from .base import SyncBackend as SyncBackend
from .console import ConsoleBackend as ConsoleBackend
from .jsonl import JsonlBackend as JsonlBackend
from .liveplot import LivePlotBackend as LivePlotBackend
from .memory import MemoryBackend as MemoryBackend
from .mlflow import MlflowBackend as MlflowBackend
from .null import NullBackend as NullBackend
from .sampled import Sampled as Sampled
from .tensorboard import TensorBoardBackend as TensorBoardBackend
from .trackio import TrackioBackend as TrackioBackend
from .wandb import WandbBackend as WandbBackend

__all__ = [
    "Backend",
    "ConsoleBackend",
    "JsonlBackend",
    "LivePlotBackend",
    "MemoryBackend",
    "MlflowBackend",
    "NullBackend",
    "Sampled",
    "SyncBackend",
    "TensorBoardBackend",
    "TrackioBackend",
    "WandbBackend",
]
