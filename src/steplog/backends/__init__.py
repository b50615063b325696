"""Backends: where a run's events go."""

from __future__ import annotations

from .base import Backend as Backend
from .console import ConsoleBackend as ConsoleBackend
from .jsonl import JsonlBackend as JsonlBackend
from .memory import MemoryBackend as MemoryBackend
from .null import NullBackend as NullBackend

__all__ = ["Backend", "ConsoleBackend", "JsonlBackend", "MemoryBackend", "NullBackend"]
