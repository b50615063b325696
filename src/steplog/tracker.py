"""``Tracker`` and ``AsyncTracker``: the lifecycle around the buffer and the worker."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import operator
import os
import re
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import anyio
import anyio.to_thread
import orjson

from ._arrays import DEFER_KEY, host_reader
from ._arrays import snapshot as _snapshot
from ._buffer import LineBuffer
from ._delivery import RetryPolicy
from ._monitor import Monitor
from ._names import check_name, new_run_id
from ._options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_ARRAY_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    OverflowLike,
    overflow_policy,
    positive_int,
    positive_seconds,
)
from ._process import (
    crash_status,
    install_exit_hook,
    install_sigterm_handler,
    track_ending,
    unwatch,
    watch,
)
from ._progress import wait_future, wait_with_progress, wait_with_progress_async
from ._redact import DEFAULT_SECRET_KEYS, compile_pattern
from ._redact import redact as _redact
from ._threads import Stopper
from ._writer import Writer
from .backends.base import Backend, backend_name
from .backends.jsonl import JsonlBackend
from .backends.null import NullBackend
from .errors import (
    BackendFailedError,
    FlushTimeoutError,
    InactiveRunError,
    RunFileError,
    RunNotFoundError,
    TrackerWarning,
)
from .events import RUN_STATUSES, Resumed, RunInfo, RunStats, RunStatus
from .runfile.codec import ValueEncoder, _find_null
from .runfile.find import resolve_run
from .runfile.header import ResumePoint, read_header, resume_point
from .runfile.snapshot import open_run, read_start
from .watch import Alert, Watcher

__all__ = ["DEFAULT_EXPERIMENT_NAME", "AsyncTracker", "Tracker"]

logger = logging.getLogger("steplog")

DEFAULT_EXPERIMENT_NAME = "default"

#: A config: a mapping, an ``argparse.Namespace``, a dataclass instance, a pydantic
#: model, or ``None``.
ConfigLike = Any

#: What ``init(resume=...)`` takes: a run id, ``"latest"``, a run file's path, or ``None``.
ResumeLike = str | os.PathLike[str] | None

#: Who writes the JSONL file: the writer thread, or a writer process (see ``Tracker``).
Durability = Literal["thread", "process"]
DURABILITIES: tuple[Durability, ...] = ("thread", "process")

#: Where remote backends' lanes run: a delivery process, or a thread (see ``Tracker``).
DeliveryMode = Literal["process", "thread"]
DELIVERIES: tuple[DeliveryMode, ...] = ("process", "thread")

_now = time.time
_dumps = orjson.dumps
_LINE = orjson.OPT_APPEND_NEWLINE
# After this many fast-path misses in a row, log() takes the slow path directly ...
_MISS_STREAK = 8
# ... for this many calls.
_SLOW_SPELL = 1_024


class _Run:
    """The state of the active run: what ``finish()`` needs to end it."""

    __slots__ = ("buffer", "crash", "encoder", "info", "owner", "previous_summary", "worker")

    def __init__(
        self, info: RunInfo, buffer: LineBuffer, worker: Writer, encoder: ValueEncoder
    ) -> None:
        self.info = info
        self.buffer = buffer
        self.worker = worker
        self.encoder = encoder
        #: The thread that started the run, and the exception it died of, if any (set
        #: by the process's excepthook: such a run ends "failed", not "unfinished").
        self.owner = threading.get_ident()
        self.crash: type[BaseException] | None = None
        #: A resumed run's summary so far: ``tracker.summary`` starts from it.
        self.previous_summary: dict[str, Any] = {}


class _TrackerBase:
    """What ``Tracker`` and ``AsyncTracker`` share: configuration, ``log()``, state."""

    def __init__(
        self,
        *backends: Backend,
        experiment_name: str = DEFAULT_EXPERIMENT_NAME,
        experiment_config: ConfigLike = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        overflow: OverflowLike = "block",
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        snapshot: bool = True,
        max_array_size: int = DEFAULT_MAX_ARRAY_SIZE,
        handle_sigterm: bool = True,
        redact: str | re.Pattern[str] | None = DEFAULT_SECRET_KEYS,
        retry: RetryPolicy | None = None,
        strict: bool = False,
        durability: Durability = "thread",
        delivery: DeliveryMode = "process",
        group: str | None = None,
        tags: Iterable[str] = (),
        rank0_only: bool = False,
        system_metrics: float | None = None,
        watchers: Iterable[Watcher] = (),
        on_alert: Callable[[Alert], object] | None = None,
    ) -> None:
        for backend in backends:
            if not isinstance(backend, Backend):
                raise TypeError(
                    f"backends must be steplog.Backend instances, got {type(backend).__name__}"
                    " (options such as experiment_name are keyword-only)"
                )
        experiment_config = _config_mapping(experiment_config, "experiment_config")
        positive_int("buffer_size", buffer_size)
        positive_int("batch_size", batch_size)
        positive_int("buffer_bytes", buffer_bytes)
        flush_interval = positive_seconds("flush_interval", flush_interval)
        policy = overflow_policy(overflow)
        positive_int("max_array_size", max_array_size)
        if durability not in DURABILITIES:
            raise ValueError(
                f"durability must be one of {', '.join(map(repr, DURABILITIES))}, "
                f"got {durability!r}"
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
        watchers = _check_watchers(watchers)
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"on_alert must be a callable or None, not {type(on_alert).__name__}")
        if on_alert is not None and not watchers:
            raise ValueError("on_alert is given but no watchers: pass watchers=[steplog.watch...]")
        #: Seconds between system-metrics samples, or ``None`` (off).
        self.system_metrics: float | None = system_metrics
        #: The checks the writer thread runs (see :mod:`steplog.watch`).
        self.watchers: list[Watcher] = watchers
        self.on_alert = on_alert
        self.backends: list[Backend] = list(backends) or [JsonlBackend()]
        if not any(isinstance(b, JsonlBackend) for b in self.backends) and any(
            not b.local for b in self.backends
        ):
            # Remote backends follow the run file: there always is one (as W&B keeps
            # its local transaction log), in the default run directory.
            self.backends.append(JsonlBackend())
        self.experiment_name = check_name(experiment_name, what="experiment_name")
        self.experiment_config: dict[str, Any] = dict(experiment_config or {})
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.overflow = policy
        self.shutdown_timeout = shutdown_timeout
        self.snapshot = snapshot
        self.max_array_size = max_array_size
        self._host = host_reader(max_array_size)
        #: Summary values gathered during the run; ``finish(summary)`` is merged over it.
        self.summary: dict[str, Any] = {}
        self._names = _unique_names(self.backends)
        self._run: _Run | None = None
        # The hot path reads these attributes.
        self._buffer: LineBuffer | None = None
        self._steps: Iterator[int] = itertools.count()
        self._encoder = ValueEncoder()
        self._slow_calls = 0  # calls left that go straight to the slow path
        self._misses = 0  # fast-path misses in a row
        self._host_calls = 0  # slow calls left that go straight to the snapshot
        self._host_misses = 0  # host-value misses in a row
        self._lifecycle = threading.RLock()
        self._last_stats: RunStats | None = None
        self.handle_sigterm = handle_sigterm
        self.redact = compile_pattern(redact)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a steplog.RetryPolicy, not {type(retry).__name__}")
        self.retry = retry if retry is not None else RetryPolicy()
        self.strict = strict
        self.durability: Durability = durability
        self.delivery: DeliveryMode = delivery
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise TypeError(f"group must be a non-empty str or None, not {group!r}")
        self.group = group
        self.tags = _check_tags(tags)
        if not isinstance(rank0_only, bool):
            raise TypeError(f"rank0_only must be True or False, not {rank0_only!r}")
        self.rank0_only = rank0_only
        self._forked = False
        self._orphan_hook: weakref.finalize[Any, Any] | None = None
        #: The id the next run takes instead of a new one (set by integrations whose
        #: host library asks for the run's id before the run can start, e.g. Lightning).
        self._next_run_id: str | None = None

    def __repr__(self) -> str:
        state = f"active run {self._run.info.run_id!r}" if self._run else "inactive"
        return f"{type(self).__name__}({self.experiment_name!r}, {state})"

    # -- the hot path -----------------------------------------------------------

    def log(self, data: Mapping[str, Any], *, step: int | None = None) -> None:
        """Record one step's values; returns at once, without I/O.

        The values are encoded right away, on the calling thread, into the run file's
        JSON line (so later changes to ``data`` or to lists inside it are not
        recorded), stamped with the step and the wall-clock time, and put on the
        buffer; the writer thread writes the lines in batches. Tensors that live on an
        accelerator are not read here: they are snapshotted without waiting for the
        device, and read back by the writer a batch at a time.

        Args:
            data: Metric names mapped to values (numbers, strings, nested lists and
                dicts, numpy values, tensors; anything else is recorded as its
                ``repr()``).
            step: Explicit step number. Without it the step counts up from 0, or from
                one past the last explicit step.

        Raises:
            InactiveRunError: No run is active (``init()`` was not called, or the run
                was finished).
            TypeError: ``data`` is not a mapping, or ``step`` is not an integer.
            ValueError: ``step`` is negative.
        """
        buffer = self._buffer
        if buffer is None:
            raise self._inactive("log")
        if type(data) is not dict:
            data = _copy_mapping(data)
        if step is None:
            step = next(self._steps)
        else:
            step = self._explicit_step(step)
        now = _now()
        if self._slow_calls:
            self._slow_calls -= 1
            self._log_slow(buffer, data, step, now)
            return
        # The fast path: orjson's own type dispatch is the check. Strict (no default,
        # no numpy option), so anything it cannot store as itself fails at once and
        # takes the slow path with the copy and snapshot of arrays and tensors.
        try:
            line = _dumps({"step": step, "time": now, "data": data}, option=_LINE)
        except TypeError:  # orjson.JSONEncodeError included
            self._missed_fast()
            self._log_slow(buffer, data, step, now)
            return
        if self._misses:
            self._misses = 0
        if _find_null(line) is not None:  # NaN and infinities come out as null: tag them
            line = self._encoder.encode_row(step, now, data)
        size = len(line)
        lock = buffer.lock
        try:
            # Acquired inside the try: Ctrl-C is raised as a call returns, and one raised
            # as acquire() returns must not leave the lock held (finish() would hang).
            lock.acquire()
            if (
                buffer.count < buffer.limit
                and size <= buffer.line_limit
                and len(buffer.data) + size <= buffer.byte_limit
            ):
                buffer.data += line
                buffer.count += 1
                return
        finally:
            try:  # noqa: SIM105 (contextlib.suppress costs the hot path ~0.2 µs)
                lock.release()
            except RuntimeError:  # acquire() itself was interrupted: nothing to release
                pass
        if size > buffer.line_limit:
            self._put_slow(buffer, line, step, now, data)
        else:  # a wake-up, an overflow, or the writer process's ring
            buffer.put_slow(line)

    def _missed_fast(self) -> None:
        # Loops that log tensors or numpy values every step would pay for a failed
        # fast attempt on every call: after a streak of misses, go straight to the
        # slow path for a while, then try the fast one again.
        self._misses += 1
        if self._misses >= _MISS_STREAK:
            self._misses = 0
            self._slow_calls = _SLOW_SPELL

    def _log_slow(self, buffer: LineBuffer, data: dict[str, Any], step: int, now: float) -> None:
        """The slow path, never raising into the caller when another thread changes a
        container of ``data`` while it is read (retried; then a marker is recorded)."""
        for attempt in range(3):
            try:
                self._log_slow_once(buffer, data, step, now)
            except RuntimeError as exc:  # "dictionary changed size during iteration"
                if attempt == 2:
                    line = self._encoder.unencodable(step, now, exc)
                    self._put_slow(buffer, line, step, now, data)
            else:
                return

    def _log_slow_once(
        self, buffer: LineBuffer, data: dict[str, Any], step: int, now: float
    ) -> None:
        """Encode values that need no device read on the spot; snapshot the others."""
        if self._host_calls:
            self._host_calls -= 1
        else:
            # Second try: CPU tensors, numpy values and small arrays become plain values
            # through orjson's default hook — reading them now *is* their snapshot.
            try:
                line = _dumps(
                    {"step": step, "time": now, "data": data}, default=self._host, option=_LINE
                )
            except TypeError:
                self._host_misses += 1
                if self._host_misses >= _MISS_STREAK:
                    self._host_misses = 0
                    self._host_calls = _SLOW_SPELL
            else:
                self._host_misses = 0
                if _find_null(line) is not None:
                    line = self._encoder.encode_row(step, now, data)
                self._put_slow(buffer, line, step, now, data)
                return
        data = data.copy()
        if buffer.libraries and not buffer.is_plain(map(type, data.values())):
            if not self.snapshot:
                buffer.put_row((step, now, data))  # references: the writer reads them
                return
            data = _snapshot(data, max_array_size=self.max_array_size)
            if DEFER_KEY in data:
                buffer.put_row((step, now, data))
                return
        try:
            line = self._encoder.encode_row(step, now, data)
        except Exception as exc:  # pragma: no cover - encode_row has its own fallbacks
            line = self._encoder.unencodable(step, now, exc)
        self._put_slow(buffer, line, step, now, data)

    def _put_slow(
        self, buffer: LineBuffer, line: bytes, step: int, now: float, data: Mapping[str, Any]
    ) -> None:
        if len(line) > self._encoder.max_event_bytes:
            line = self._encoder.too_large(step, now, data, len(line))
            buffer.put_slow(line)
        else:
            buffer.put(line)

    def _explicit_step(self, step: Any) -> int:
        if isinstance(step, bool):
            raise TypeError("step must be an integer, not bool")
        try:
            value = operator.index(step)
        except TypeError:
            raise TypeError(f"step must be an integer, not {type(step).__name__}") from None
        if value < 0:
            raise ValueError(f"step must be >= 0, got {value}")
        self._steps = itertools.count(value + 1)
        return value

    # -- state ------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a run is active (between ``init()`` and ``finish()``)."""
        return self._run is not None

    @property
    def run_info(self) -> RunInfo | None:
        """The active run, or ``None``."""
        run = self._run
        return run.info if run is not None else None

    @property
    def last_stats(self) -> RunStats | None:
        """Statistics of the last finished run, or ``None``."""
        return self._last_stats

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's run (its worker did not come along)."""
        self._detach_orphan_hook()
        unwatch(self)
        if self._run is not None:
            self._forked = True
            self._run.worker.forget_after_fork()
        self._run = None
        self._buffer = None

    def _inactive(self, method: str) -> InactiveRunError:
        if self._forked:
            hint = (
                "this process was forked from one with an active run, which stays the "
                "parent's; call init() to start this process's own run"
            )
        elif self._last_stats is None:
            hint = "call init() (or use 'with tracker.run(config):') first"
        else:
            hint = "the run was finished; call init() to start a new run"
        return InactiveRunError(f"{method}() called with no active run: {hint}")

    # -- lifecycle helpers shared by both flavours ------------------------------

    def _merged_config(self, config: Any) -> dict[str, Any]:
        config = _config_mapping(config, "config")
        merged: dict[str, Any] = _redact({**self.experiment_config, **(config or {})}, self.redact)
        return merged

    def _start(self, config: Mapping[str, Any] | None, resume: ResumeLike) -> tuple[_Run, Any]:
        rank, local_rank, world_size = _ranks()
        muted = self.rank0_only and rank not in (None, 0)
        backends: list[tuple[str, Backend]] = (
            [("null", NullBackend())]
            if muted
            else list(zip(self._names, self.backends, strict=True))
        )
        group = self._run_group()
        run_id, self._next_run_id = self._next_run_id or new_run_id(), None
        info = RunInfo(
            run_id=run_id,
            experiment=self.experiment_name,
            config=self._merged_config(config),
            start_time=time.time(),
            pid=os.getpid(),
            host=socket.gethostname(),
            group=group,
            tags=self.tags,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
        )
        previous: dict[str, Any] = {}
        if resume is not None and not muted:
            point = self._resume_point(resume, group=group, rank=rank)
            if point is not None:
                previous = point.summary
                info = dataclasses.replace(
                    info,
                    run_id=str(point.start["run_id"]),
                    experiment=str(point.start["experiment"]),
                    config={**point.config, **info.config},
                    start_time=float(point.start["start_time"]),
                    group=group or point.start.get("group"),
                    tags=self.tags or tuple(point.start.get("tags") or ()),
                    resumed=Resumed(
                        step=point.next_step,
                        segment=point.segment,
                        previous_status=point.previous_status,
                        resume_time=time.time(),
                    ),
                )
        buffer = LineBuffer(
            self.buffer_size,
            wake_at=self.batch_size,
            policy=self.overflow,
            byte_budget=self.buffer_bytes,
            line_limit=self._max_event_bytes(),
        )
        encoder = ValueEncoder(max_event_bytes=buffer.line_limit)
        worker = Writer(
            buffer,
            backends,
            encoder=encoder,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            snapshot=self.snapshot,
            max_array_size=self.max_array_size,
            retry=self.retry,
            durability=self.durability,
            delivery=self.delivery,
            down_grace=self.shutdown_timeout,
            monitor=self._monitor(encoder),
        )
        worker.refresh_inspection()
        run = _Run(info, buffer, worker, encoder)
        run.previous_summary = previous
        worker.stopper = Stopper(
            end_run=_stop_hook(weakref.WeakMethod(self._stop_run), run),
            grace=2 * self.shutdown_timeout + 1,
        )
        return run, worker.start(info)

    def _run_group(self) -> str | None:
        """The group a run started now gets (see ``group`` in :class:`Tracker`)."""
        return self.group or os.environ.get("STEPLOG_GROUP") or _elastic_run_id()

    def _latest_run(self) -> Path | None:
        """The run file ``init(resume="latest")`` would continue if called now, or
        ``None`` (it would start a new run), for integrations that name a run before it
        starts (Lightning asks a logger for its version first)."""
        jsonl = next((b for b in self.backends if isinstance(b, JsonlBackend)), None)
        if jsonl is None:
            return None
        rank = _ranks()[0]
        directory = jsonl.root / self.experiment_name
        return _latest_own_run(directory, group=self._run_group(), rank=rank)

    def _resume_point(
        self, resume: ResumeLike, *, group: str | None, rank: int | None
    ) -> ResumePoint | None:
        """The run file ``init(resume=...)`` continues, or ``None`` for "latest" when the
        experiment has no run yet (a first start: the script is the same either way)."""
        jsonl = next((b for b in self.backends if isinstance(b, JsonlBackend)), None)
        if jsonl is None:
            raise ValueError(
                "resume= continues a run's JSONL file: the tracker needs a "
                "steplog.JsonlBackend among its backends"
            )
        if not isinstance(resume, (str, os.PathLike)):
            raise TypeError(
                f"resume must be a run id, 'latest' or a run file's path, not {resume!r}"
            )
        directory = jsonl.root / self.experiment_name
        spec = os.fspath(resume)
        if spec == "latest":
            found = _latest_own_run(directory, group=group, rank=rank)
            if found is None:
                logger.info("steplog: no run to resume under %s; starting a new run", directory)
                return None
            path = found
        else:
            own = directory / f"{spec}.jsonl"
            try:  # an id of this experiment, a prefix, EXPERIMENT/ID, or a path
                path = own if own.is_file() else resolve_run(spec, jsonl.root)
            except RunNotFoundError as exc:
                raise RunNotFoundError(f"no run to resume: {exc}") from None
            if path.is_dir() or path.resolve().parent.parent != jsonl.root.resolve():
                raise ValueError(
                    f"cannot resume {spec!r}: the tracker's JsonlBackend writes under "
                    f"{str(jsonl.root)!r}; resume a run there (by its run id or file)"
                )
        point = resume_point(path)
        if path.stem != point.start.get("run_id"):
            raise RunFileError(f"{path}: its run id {point.start.get('run_id')!r} is not its name")
        jsonl._expect_size = point.size
        return point

    def _monitor(self, encoder: ValueEncoder) -> Monitor | None:
        """The writer's system metrics and watchers; ``None`` when both are off."""
        if self.system_metrics is None and not self.watchers:
            return None
        return Monitor(
            system_interval=self.system_metrics,
            watchers=self.watchers,
            on_alert=self.on_alert,
            encoder=encoder,
        )

    def _max_event_bytes(self) -> int:
        limits = [b.max_event_bytes for b in self.backends if isinstance(b, JsonlBackend)]
        return min(limits, default=16 * 2**20)

    def _activate(self, run: _Run) -> None:
        resumed = run.info.resumed
        self.summary = dict(run.previous_summary)
        self._steps = itertools.count(resumed.step if resumed is not None else 0)
        self._run = run
        self._encoder = run.encoder
        self._slow_calls = self._misses = self._host_calls = self._host_misses = 0
        self._buffer = run.buffer
        self._forked = False
        # A tracker dropped with its run still active (a train() function that forgot
        # finish(), a notebook cell rebinding the name) still gets its run ended.
        self._orphan_hook = weakref.finalize(
            self,
            _end_orphaned_run,
            run,
            self.summary,
            self.redact,
            self.shutdown_timeout,
            self.experiment_name,
        )
        self._orphan_hook.atexit = False  # the exit hook ends active runs itself
        watch(self)
        install_exit_hook()
        if self.handle_sigterm:
            install_sigterm_handler()

    def _deactivate(
        self, summary: Mapping[str, Any] | None, status: RunStatus, timeout: float | None
    ) -> Any:
        """Stop accepting events and ask the worker to end the run; None if inactive."""
        if summary is not None and not isinstance(summary, Mapping):
            raise TypeError(f"summary must be a mapping or None, not {type(summary).__name__}")
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._lifecycle:
            run = self._run
            if run is None:
                return None
            self._buffer = None
            self._run = None
            self._detach_orphan_hook()
            unwatch(self)
        merged = _redact({**self.summary, **(summary or {})}, self.redact)
        future = run.worker.stop(status, merged, timeout)
        # Until its end is written, exit waits for this run and SIGTERM can hurry it.
        track_ending(run.worker, future, self.shutdown_timeout)
        return run, future

    def _detach_orphan_hook(self) -> None:
        hook, self._orphan_hook = self._orphan_hook, None
        if hook is not None:
            hook.detach()

    def _cut_short(self, run: _Run, future: Any, status: RunStatus) -> None:
        """Ctrl-C (or a cancellation) while ``finish()`` waits: end the run now, as
        ``status``, and wait (bounded) for its run end to be written."""
        if not run.worker.hurry(status):
            return
        print(
            f"steplog: {status} while finishing run {run.info.run_id!r}; writing its run "
            "end now (remote backends stop where they are)",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            self._last_stats = future.result(2 * self.shutdown_timeout + 1)

    def _finished(self, stats: RunStats) -> RunStats:
        """Record a finished run's stats; with ``strict``, raise if a backend lost events."""
        self._last_stats = stats
        if not self.strict:
            return stats
        lost = {n: b for n, b in stats.backends.items() if b.failed or b.missing or b.disabled}
        if lost:
            detail = "; ".join(
                f"{n}: {b.failed} events failed, {b.missing} not delivered ({b.last_error})"
                for n, b in lost.items()
            )
            raise BackendFailedError(
                f"backends lost or have not got events: {detail} (the run file has them: "
                "`steplog sync` sends the missing ones)",
                stats,
            )
        return stats

    def _warn_reinit(self) -> None:
        warnings.warn(
            "init() called on an active tracker (previous run not finished); "
            "finishing the previous run first",
            TrackerWarning,
            stacklevel=3,
        )

    def _warn_inactive_finish(self) -> None:
        warnings.warn(
            "finish() called on an inactive tracker; ignoring", TrackerWarning, stacklevel=3
        )

    def _stop_run(self, run: _Run) -> None:
        """A thread of ``run`` is being stopped from outside (``RunThread.stop``, e.g. a
        test suite's check for leftover threads): end the run as the exit hook would, if
        it is still this tracker's active run."""
        if self._run is run:
            self._end_abruptly("unfinished", "was not finished and its thread was stopped")

    def _end_abruptly(self, status: RunStatus, reason: str) -> None:
        """Finish an active run as the process goes away (exit hook, SIGTERM).

        Bounded by ``shutdown_timeout``; reports on stderr, where the user will look.
        """
        run = self._run
        if run is None:
            return
        print(
            f"steplog: run {run.info.run_id!r} ({self.experiment_name}) {reason}; "
            f"writing what was logged and closing it as {status!r}",
            file=sys.stderr,
        )
        pending = self._deactivate(None, status, self.shutdown_timeout)
        if pending is None:
            return
        _, future = pending
        try:
            # The worker bounds its own shutdown; the margin covers closing the backends.
            self._last_stats = wait_with_progress(
                future, run.worker.pending, timeout=2 * self.shutdown_timeout + 1
            )
        except Exception as exc:
            print(f"steplog: run {run.info.run_id!r} could not be closed: {exc!r}", file=sys.stderr)
            return
        stats = self._last_stats
        lost = [f"{n}: {b.failed} failed" for n, b in stats.backends.items() if b.failed]
        if lost:
            print(f"steplog: undelivered events ({', '.join(lost)})", file=sys.stderr)


class Tracker(_TrackerBase):
    """An experiment tracker whose ``log()`` never waits on I/O.

    Lifecycle: ``init(config)`` opens a run, ``log(data)`` per step, ``finish(summary)``
    closes it; the tracker can then start another run. ``log()`` encodes each event on
    the calling thread; a background writer thread writes them, in batches, to every
    backend.

    Args:
        *backends: Where the events go; a :class:`steplog.JsonlBackend` writing under
            ``runs/`` when none is given.
        experiment_name: Groups runs (the JSONL backend's sub-directory).
        experiment_config: Config recorded with every run, under the ``init`` config.
        buffer_size: Events held in memory at most.
        buffer_bytes: Bytes of encoded events held in memory at most (about: events
            that wait for a device read count by number only). The overflow policy
            applies when either limit is reached.
        batch_size: Events that wake the writer thread. It then takes everything
            queued: the local backends (JSONL, memory, null) get it in one write, other
            backends in batches of at most 4 x ``batch_size`` events.
        flush_interval: Seconds an event may wait in memory before it is handed to the
            backends; also how much a killed process can lose.
        overflow: What ``log()`` does when the buffer is full: ``"block"`` (wait for
            the worker; nothing is lost), ``"drop_oldest"`` or ``"drop_newest"``
            (never wait; drops are counted).
        shutdown_timeout: Seconds the interpreter-exit hook waits for an unfinished
            run to be written before abandoning it; also how long ``finish()`` waits
            for a remote backend that is down (its lane goes on in the background, or
            the next resume or ``steplog sync`` delivers the rest).
        handle_sigterm: On SIGTERM (what schedulers send on pre-emption), finish the
            active run as ``"terminated"`` before the process ends as it would have
            (a handler of your own is called afterwards). Installed from the main
            thread only, never over an ignored SIGTERM.
        redact: Regular expression (case-insensitive) matched against config and
            summary keys, written in snake_case (``openaiApiKey`` is matched as
            ``openai_api_key``); values under matching keys, at any depth, are replaced by
            ``"<redacted>"`` before any backend sees them. The default matches a
            secret word that stands on its own and ends the key (``hf_token``,
            ``db_password``, ``api_key``, ``Authorization``; not ``max_new_tokens``,
            ``token_budget`` or ``password_min_length``). Passwords inside URLs
            (``postgres://u:pw@h``) and URL query parameters whose names match are
            redacted in any string value. ``None`` turns all of it off.
        retry: How failing backend writes are retried, and after how many failed
            batches in a row a backend is cut off (:class:`steplog.RetryPolicy`).
        strict: Make ``finish()`` raise :class:`steplog.BackendFailedError` (after
            closing everything) when a backend lost events or has not got them all by
            then; by default that is only counted in the returned statistics.
        snapshot: Record arrays and tensors as they are at the ``log()`` call, even if
            they are changed in place afterwards (see docs/tensors.md). ``False``
            stores references instead — no copy, no kernel launch — for code that
            promises never to modify a logged tensor or array in place.
        max_array_size: Arrays and tensors with more elements are recorded as a
            summary (shape, dtype, count, mean, min, max) instead of their values.
        durability: ``"thread"`` (default): the writer thread writes the JSONL file; a
            process killed with SIGKILL loses what was logged in its last
            ``flush_interval``. ``"process"``: ``log()`` puts each line into a ring of
            shared memory that a small writer process empties into the file; it
            outlives a SIGKILL of this process, writes everything that was logged and
            closes the run as ``"killed"``. Costs a child process (~20 ms to start) and
            ~0.3 µs more per ``log()``; POSIX on x86-64 only (elsewhere the thread
            writes, with a warning). See docs/concepts.md.
        delivery: Where the remote backends' lanes run (every backend that is not an
            in-process sink follows the run file through a lane, from a durable cursor;
            see docs/concepts.md). ``"process"`` (default): in a delivery process that
            the backends move to as their configuration (pickled); it costs the loop
            nothing per event and outlives a SIGKILL of this process, delivering what
            the file holds. A backend that cannot move (``Backend.movable`` false, not
            picklable) runs its lane in a thread. ``"thread"``: every lane in a thread
            of this process.
        group: Ties runs together: the ranks of one distributed job, the trials of a
            sweep. Default: ``$STEPLOG_GROUP``, else torchrun's job id
            (``TORCHELASTIC_RUN_ID``), else none. See docs/concepts.md.
        tags: Labels for the run (strings).
        rank0_only: In a distributed job (``RANK`` set), only rank 0 writes its run;
            the other ranks' trackers work as usual and write nothing. Every run
            records ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` when they are set.
        system_metrics: Every this many seconds, the writer thread records the
            process's CPU %, RSS, the steps per second and — with the ``gpu`` extra on
            a machine with an NVIDIA driver — each GPU's utilisation, memory and power,
            as ``"system"`` records of the run file (never mixed into step records).
            ``None`` or ``False``: off. Nothing is added to ``log()``. See
            docs/watchers.md.
        watchers: Checks the writer thread runs on the logged values and on the
            logging rate (:mod:`steplog.watch`: ``nonfinite``, ``above``, ``below``,
            ``diverging``, ``stalled``, ``slower``). An alert is written to the run
            file, logged as a warning and handed to ``on_alert``.
        on_alert: Called with each :class:`steplog.Alert`, in a thread of its own (it
            may block or ``log()``: the writer never waits for it; ``finish()`` waits
            until its deadline); its exceptions are logged once and counted in the
            statistics.
    """

    def init(self, config: ConfigLike = None, *, resume: ResumeLike = None) -> RunInfo:
        """Open a new run on every backend, or continue an earlier one.

        ``experiment_config`` is merged with ``config`` (``config`` wins). Either can
        be a mapping, an ``argparse.Namespace``, a dataclass instance or a pydantic
        model (their fields are the keys). If a run is still active it is finished
        first, with a :class:`steplog.TrackerWarning`.

        Args:
            config: The run's config.
            resume: Continue a run of this experiment instead of starting one (after a
                crash or a pre-emption): its run id, the path of its file under the
                JSONL backend's root, or ``"latest"`` (its most recently started run
                of this rank, unless that one finished; else a new run, so a job can
                always pass it).
                The run file is continued: a line torn by a killed writer is cut off,
                a resume record starts the new segment, steps go on after the last
                step recorded, ``config`` is merged over the run's config and
                :attr:`summary` starts from its summary. Other backends are opened
                with the same run id (MLflow continues its run). See docs/concepts.md.

        Raises:
            BackendOpenError: A backend could not open the run (nothing is started).
            TypeError: ``config`` is none of those.
            RunNotFoundError: ``resume`` names a run that is not there.
            RunFileError: The run to resume is not a readable run, or its writer still
                runs on this host.
        """
        with self._lifecycle:
            if self._run is not None:
                self._warn_reinit()
                self.finish()
            run, started = self._start(config, resume)
            try:
                run.info = started.result()
            finally:
                if started.exception() is not None:
                    run.worker.join()
            self._activate(run)
            return run.info

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event logged before this call is written by every backend.

        Raises:
            InactiveRunError: No run is active.
            FlushTimeoutError: ``timeout`` seconds passed first.
        """
        run = self._run
        if run is None:
            raise self._inactive("flush")
        future = run.worker.flush()
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            raise FlushTimeoutError(f"flush() did not complete within {timeout} s") from exc

    def finish(
        self,
        summary: Mapping[str, Any] | None = None,
        *,
        status: RunStatus = "finished",
        timeout: float | None = None,
    ) -> RunStats | None:
        """Drain the buffer, write the summary, close the backends.

        Args:
            summary: Final values, merged over :attr:`summary`.
            status: The run's end status.
            timeout: Seconds to wait for the backends; events a backend has not
                written by then are counted as failed. Closing then gets what is
                left, and at least 1 s, so this returns within about ``timeout`` + 2 s
                whatever a backend does (one stuck in a call that cannot be cancelled
                is left behind). ``None`` waits for them all.

        Returns:
            The run's statistics, or ``None`` (with a warning) if no run was active.

        Raises:
            KeyboardInterrupt: Ctrl-C while waiting: the run end is written first (status
                ``"interrupted"``, the summary, every event in the local backends;
                remote backends stop where they are).
        """
        pending = self._deactivate(summary, status, timeout)
        if pending is None:
            self._warn_inactive_finish()
            return None
        run, future = pending
        # A large backlog on a slow backend can take a while: say so on a terminal.
        try:
            stats: RunStats = wait_with_progress(future, run.worker.pending)
        except KeyboardInterrupt:
            self._cut_short(run, future, "interrupted")
            raise
        run.worker.join()
        return self._finished(stats)

    @contextlib.contextmanager
    def run(self, config: ConfigLike = None, *, resume: ResumeLike = None) -> Iterator[RunInfo]:
        """Run the block as one run: ``init(config, resume=resume)`` on entry,
        ``finish()`` on exit.

        The status is ``"finished"``, ``"failed"`` if the block raised, or
        ``"interrupted"`` on ``KeyboardInterrupt``; the exception propagates. Calling
        ``finish(summary)`` inside the block is allowed.
        """
        info = self.init(config, resume=resume)
        try:
            yield info
        except BaseException as exc:
            self._finish_run(info, _status_for(exc))
            raise
        self._finish_run(info, "finished")

    def _finish_run(self, info: RunInfo, status: RunStatus) -> None:
        if self._run is not None and self._run.info is info:
            self.finish(status=status)

    def __enter__(self) -> Tracker:
        self.init()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._run is not None:
            self.finish(status="finished" if exc is None else _status_for(exc))


class AsyncTracker(_TrackerBase):
    """The async flavour of :class:`Tracker` (asyncio or trio, through anyio): same
    arguments, awaitable lifecycle.

    ``log()`` is the same plain, non-blocking call; ``init``, ``flush`` and ``finish``
    are coroutines that never block the caller's event loop (the worker runs in its
    own thread). Use ``async with AsyncTracker(...) as tracker:`` or
    ``async with tracker.run(config):``.
    """

    async def init(self, config: ConfigLike = None, *, resume: ResumeLike = None) -> RunInfo:
        """Open a new run on every backend, or continue one (see :meth:`Tracker.init`)."""
        if self._run is not None:
            self._warn_reinit()
            await self.finish()
        run, started = self._start(config, resume)
        try:
            run.info = await wait_future(started)
        except BaseException:
            await anyio.to_thread.run_sync(run.worker.join)
            raise
        self._activate(run)
        return run.info

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event logged before this call is written (see :meth:`Tracker.flush`)."""
        run = self._run
        if run is None:
            raise self._inactive("flush")
        future = run.worker.flush()
        try:
            with anyio.fail_after(timeout):
                await wait_future(future)
        except TimeoutError as exc:
            raise FlushTimeoutError(f"flush() did not complete within {timeout} s") from exc

    async def finish(
        self,
        summary: Mapping[str, Any] | None = None,
        *,
        status: RunStatus = "finished",
        timeout: float | None = None,
    ) -> RunStats | None:
        """Drain, write the summary, close the backends (see :meth:`Tracker.finish`)."""
        pending = self._deactivate(summary, status, timeout)
        if pending is None:
            self._warn_inactive_finish()
            return None
        run, future = pending
        try:
            stats: RunStats = await wait_with_progress_async(future, run.worker.pending)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class())):
                # Ctrl-C under asyncio.run() arrives as a cancellation: end the run now
                # (the exit hook waits for its run end to be written).
                run.worker.hurry("interrupted")
            raise
        await anyio.to_thread.run_sync(run.worker.join)
        return self._finished(stats)

    @contextlib.asynccontextmanager
    async def run(
        self, config: ConfigLike = None, *, resume: ResumeLike = None
    ) -> AsyncIterator[RunInfo]:
        """Run the block as one run (see :meth:`Tracker.run`)."""
        info = await self.init(config, resume=resume)
        try:
            yield info
        except BaseException as exc:
            await self._finish_run(info, _status_for(exc))
            raise
        await self._finish_run(info, "finished")

    async def _finish_run(self, info: RunInfo, status: RunStatus) -> None:
        if self._run is not None and self._run.info is info:
            await self.finish(status=status)

    async def __aenter__(self) -> AsyncTracker:
        await self.init()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._run is not None:
            await self.finish(status="finished" if exc is None else _status_for(exc))


# -- helpers --------------------------------------------------------------------


def _end_orphaned_run(
    run: _Run,
    summary: dict[str, Any],
    pattern: re.Pattern[str] | None,
    timeout: float,
    experiment: str,
) -> None:
    """A tracker was garbage-collected with its run active: end the run ("unfinished",
    or "failed" if the thread that started it died of an exception).

    Runs wherever the collector runs (any thread, even inside ``log()``), so it only
    asks the writer to stop; exit waits for the run end to be written.
    """
    try:
        status = cast(RunStatus, crash_status(run.crash))
        print(
            f"steplog: run {run.info.run_id!r} ({experiment}) was dropped without "
            f"finish(); writing what was logged and closing it as {status!r}",
            file=sys.stderr,
        )
        future = run.worker.stop(status, _redact(dict(summary), pattern), timeout)
        track_ending(run.worker, future, timeout)
    except Exception as exc:  # never raise into the code the collector interrupted
        logger.error("steplog: ending a dropped run failed: %r", exc)


def _stop_hook(
    stop_run: weakref.WeakMethod[Callable[[_Run], None]], run: _Run
) -> Callable[[], None]:
    """``Stopper.end_run`` for ``run``: the tracker is held weakly (a dropped tracker's
    run is ending already, see :func:`_end_orphaned_run`)."""

    def end_run() -> None:
        method = stop_run()
        if method is not None:
            method(run)

    return end_run


def _status_for(exc: BaseException) -> RunStatus:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "finished"
    return "failed"


def _config_mapping(config: Any, what: str) -> Mapping[Any, Any] | None:
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


def _copy_mapping(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    raise TypeError(
        f"log() takes a mapping of names to values (e.g. {{'loss': 0.5}}), "
        f"not {type(data).__name__}"
    )


def _unique_names(backends: list[Backend]) -> list[str]:
    names: list[str] = []
    for backend in backends:
        base = backend_name(backend)
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


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


def _ranks() -> tuple[int | None, int | None, int | None]:
    """``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment, as torchrun,
    ``accelerate`` and DeepSpeed set them (``None`` where unset or not a number)."""
    values: list[int | None] = []
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        raw = os.environ.get(name)
        try:
            values.append(int(raw) if raw is not None else None)
        except ValueError:
            logger.warning("steplog: ignoring %s=%r (not an integer)", name, raw)
            values.append(None)
    rank, local_rank, world_size = values
    if rank is not None and (rank < 0 or (world_size is not None and rank >= world_size)):
        logger.warning(
            "steplog: RANK=%s is not a rank of a job of WORLD_SIZE=%s processes", rank, world_size
        )
    return rank, local_rank, world_size


def _elastic_run_id() -> str | None:
    """torchrun's job id (``--rdzv-id``), shared by every rank of a job; ``None`` when
    unset or torchrun's placeholder ``"none"``."""
    value = os.environ.get("TORCHELASTIC_RUN_ID")
    return value if value and value != "none" else None


def _latest_own_run(directory: Path, *, group: str | None, rank: int | None) -> Path | None:
    """The run ``resume="latest"`` continues: the most recently started run in
    ``directory`` that this process would have written — the same rank (in a distributed
    job every rank resumes its own run) and, when a group is set, the same group — unless
    it finished (then ``None``: a new run). Files that are not runs (empty, a torn first
    line: killed while creating them) are skipped."""
    runs = sorted(directory.glob("*.jsonl"), reverse=True) if directory.is_dir() else []
    for path in runs:  # run ids sort by start time
        start = read_start(path)
        if start is None:
            logger.warning("steplog: resume='latest' skips %s: not a readable run", path)
            continue
        if start.get("rank") != rank:
            continue
        if group is not None and start.get("group") != group:
            continue
        try:
            status = read_header(open_run(path)).status
        except (OSError, ValueError):
            status = None
        if status == "finished":  # it ended well: this is a new start, not a restart
            logger.info("steplog: the latest run %s finished; starting a new run", path.stem)
            return None
        return path
    return None
