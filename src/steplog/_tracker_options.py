"""``TrackerOptions``: a tracker's constructor arguments, validated once, frozen.

``Tracker(...)`` and ``AsyncTracker(...)`` hand their arguments to
:func:`tracker_options`, which checks every one of them (the error messages are the
public contract: tests/test_bad_input.py and co) and returns the one object the tracker
and the start of each run read. The defaults and the single-value checks shared with
replay, sync and the watchers stay in :mod:`._options` (a leaf module: this one imports
the backends and the watchers).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeGuard

from ._delivery import RetryPolicy
from ._names import check_name
from ._options import (
    OverflowLike,
    OverflowPolicy,
    overflow_policy,
    positive_int,
    positive_seconds,
)
from ._redact import compile_pattern
from .backends.base import Backend, backend_name
from .backends.jsonl import JsonlBackend
from .watch import Alert, Watcher

__all__ = [
    "DELIVERIES",
    "DURABILITIES",
    "DeliveryMode",
    "Durability",
    "TrackerOptions",
    "config_mapping",
    "tracker_options",
]

#: Who writes the JSONL file: the writer thread, or a writer process (see ``Tracker``).
Durability = Literal["thread", "process"]
DURABILITIES: tuple[Durability, ...] = ("thread", "process")

#: Where remote backends' lanes run: a delivery process, or a thread (see ``Tracker``).
DeliveryMode = Literal["process", "thread"]
DELIVERIES: tuple[DeliveryMode, ...] = ("process", "thread")


@dataclasses.dataclass(frozen=True, slots=True)
class TrackerOptions:
    """A tracker's options once checked (see :class:`steplog.Tracker` for each).

    Attributes:
        backends: The backends given (a :class:`JsonlBackend` added when none is, or
            when only remote ones are: they follow the run file).
        backend_names: Each backend's name in the statistics, unique, in order.
        experiment_config: The config as a dict (a copy).
        redact: The compiled pattern, or ``None`` (off).
        system_metrics: Seconds between samples, or ``None`` (off).
    """

    backends: tuple[Backend, ...]
    backend_names: tuple[str, ...]
    experiment_name: str
    experiment_config: dict[str, Any]
    buffer_size: int
    buffer_bytes: int
    batch_size: int
    flush_interval: float
    overflow: OverflowPolicy
    shutdown_timeout: float
    snapshot: bool
    max_array_size: int
    handle_sigterm: bool
    redact: re.Pattern[str] | None
    retry: RetryPolicy
    strict: bool
    durability: Durability
    delivery: DeliveryMode
    group: str | None
    tags: tuple[str, ...]
    rank0_only: bool
    system_metrics: float | None
    watchers: tuple[Watcher, ...]
    on_alert: Callable[[Alert], object] | None

    @property
    def jsonl(self) -> JsonlBackend | None:
        """The first JSONL backend: the run file ``resume=`` continues."""
        return next((b for b in self.backends if _is_run_file(b)), None)

    @property
    def max_event_bytes(self) -> int:
        """The longest line an event may take (the JSONL backends' smallest limit)."""
        limits = [b.max_event_bytes for b in self.backends if isinstance(b, JsonlBackend)]
        return min(limits, default=16 * 2**20)


def tracker_options(
    backends: tuple[Any, ...],
    *,
    experiment_name: str,
    experiment_config: Any,
    buffer_size: int,
    buffer_bytes: int,
    batch_size: int,
    flush_interval: float,
    overflow: OverflowLike,
    shutdown_timeout: float,
    snapshot: bool,
    max_array_size: int,
    handle_sigterm: bool,
    redact: str | re.Pattern[str] | None,
    retry: RetryPolicy | None,
    strict: bool,
    durability: Durability,
    delivery: DeliveryMode,
    group: str | None,
    tags: Iterable[str],
    rank0_only: bool,
    system_metrics: float | None,
    watchers: Iterable[Watcher],
    on_alert: Callable[[Alert], object] | None,
) -> TrackerOptions:
    """Check a tracker's arguments (in the order of its signature's documentation).

    Raises:
        TypeError: An argument of the wrong kind.
        ValueError: An argument out of its range.
    """
    for backend in backends:
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backends must be steplog.Backend instances, got {type(backend).__name__}"
                " (options such as experiment_name are keyword-only)"
            )
    experiment_config = config_mapping(experiment_config, "experiment_config")
    positive_int("buffer_size", buffer_size)
    positive_int("batch_size", batch_size)
    positive_int("buffer_bytes", buffer_bytes)
    flush_interval = positive_seconds("flush_interval", flush_interval)
    policy = overflow_policy(overflow)
    positive_int("max_array_size", max_array_size)
    if durability not in DURABILITIES:
        raise ValueError(
            f"durability must be one of {', '.join(map(repr, DURABILITIES))}, got {durability!r}"
        )
    if delivery not in DELIVERIES:
        raise ValueError(
            f"delivery must be one of {', '.join(map(repr, DELIVERIES))}, got {delivery!r}"
        )
    if not isinstance(snapshot, bool):
        raise TypeError(f"snapshot must be True or False, not {snapshot!r}")
    shutdown_timeout = positive_seconds("shutdown_timeout", shutdown_timeout)
    if system_metrics is not None and system_metrics is not False:
        system_metrics = positive_seconds("system_metrics", system_metrics)
    else:
        system_metrics = None
    checked_watchers = _check_watchers(watchers)
    if on_alert is not None and not callable(on_alert):
        raise TypeError(f"on_alert must be a callable or None, not {type(on_alert).__name__}")
    if on_alert is not None and not checked_watchers:
        raise ValueError("on_alert is given but no watchers: pass watchers=[steplog.watch...]")
    all_backends: list[Backend] = list(backends) or [JsonlBackend()]
    if not any(_is_run_file(b) for b in all_backends) and any(not b.local for b in all_backends):
        # Remote backends follow the run file: there always is one (as W&B keeps
        # its local transaction log), in the default run directory.
        all_backends.append(JsonlBackend())
    experiment_name = check_name(experiment_name, what="experiment_name")
    pattern = compile_pattern(redact)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a steplog.RetryPolicy, not {type(retry).__name__}")
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise TypeError(f"group must be a non-empty str or None, not {group!r}")
    checked_tags = _check_tags(tags)
    if not isinstance(rank0_only, bool):
        raise TypeError(f"rank0_only must be True or False, not {rank0_only!r}")
    return TrackerOptions(
        backends=tuple(all_backends),
        backend_names=_unique_names(all_backends),
        experiment_name=experiment_name,
        experiment_config=dict(experiment_config or {}),
        buffer_size=buffer_size,
        buffer_bytes=buffer_bytes,
        batch_size=batch_size,
        flush_interval=flush_interval,
        overflow=policy,
        shutdown_timeout=shutdown_timeout,
        snapshot=snapshot,
        max_array_size=max_array_size,
        handle_sigterm=handle_sigterm,
        redact=pattern,
        retry=retry if retry is not None else RetryPolicy(),
        strict=strict,
        durability=durability,
        delivery=delivery,
        group=group,
        tags=checked_tags,
        rank0_only=rank0_only,
        system_metrics=system_metrics,
        watchers=tuple(checked_watchers),
        on_alert=on_alert,
    )


def config_mapping(config: Any, what: str) -> Mapping[Any, Any] | None:
    """A config as a mapping: a mapping itself, an ``argparse.Namespace``, a dataclass
    instance or a pydantic model (their fields, in order); ``None`` stays ``None``."""
    if config is None or isinstance(config, Mapping):
        return config
    if isinstance(config, argparse.Namespace):
        return dict(vars(config))
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    dump = getattr(config, "model_dump", None)  # pydantic v2
    if callable(dump) and type(config).__module__.partition(".")[0] != "builtins":
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    raise TypeError(
        f"{what} must be a mapping, an argparse.Namespace, a dataclass instance or None, "
        f"not {type(config).__name__}"
    )


def _check_watchers(watchers: Any) -> list[Watcher]:
    if isinstance(watchers, (str, bytes, Watcher)) or not isinstance(watchers, Iterable):
        raise TypeError(
            "watchers must be a list of watchers made by steplog.watch "
            f"(e.g. [steplog.watch.nonfinite('loss')]), not {type(watchers).__name__}"
        )
    out = list(watchers)
    for watcher in out:
        if not isinstance(watcher, Watcher):
            raise TypeError(
                "watchers must be made by steplog.watch (nonfinite, above, below, "
                f"diverging, stalled, slower), got {watcher!r}"
            )
    return out


def _check_tags(tags: Any) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)):
        raise TypeError(f"tags must be a list of strings, not a single string ({tags!r})")
    try:
        out = tuple(tags)
    except TypeError:
        raise TypeError(f"tags must be a list of strings, not {type(tags).__name__}") from None
    for tag in out:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"tags must be non-empty strings, got {tag!r}")
    return tuple(dict.fromkeys(out))  # in order, each once


def _unique_names(backends: list[Backend]) -> tuple[str, ...]:
    names: list[str] = []
    for backend in backends:
        base = backend_name(backend)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return tuple(names)


def _is_run_file(backend: Backend) -> TypeGuard[JsonlBackend]:
    """A JSONL backend in this process writes the run file; one marked ``local = False``
    is remote (it follows the run file through a lane like any other)."""
    return isinstance(backend, JsonlBackend) and backend.local
