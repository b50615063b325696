"""``Tracker`` and ``AsyncTracker``: the lifecycle of runs around the buffer and the
writer, and the hot path of ``log()``.

A tracker holds its options (:class:`TrackerOptions`, checked once when it is made)
and at most one active run (:class:`_Run`: its buffer, its writer and what ending it
takes). How a run starts — ranks, group, tags, resume — is :mod:`._runstart`'s; the
process's exit, SIGTERM and fork hooks see the active run, never the tracker
(:mod:`._hooks`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import logging
import operator
import re
import sys
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

import anyio
import anyio.to_thread
import orjson

from ._arrays import DEFER_KEY, host_reader
from ._arrays import snapshot as _snapshot
from ._buffer import SPEEDUPS, LineBuffer, shadows_slots
from ._delivery import RetryPolicy
from ._durability import buffer_type
from ._hooks import (
    crash_status,
    install_exit_hook,
    install_sigterm_handler,
    register,
    track_ending,
    unregister,
)
from ._monitor import Monitor, ValueTap
from ._names import new_run_id
from ._options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_ARRAY_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    OverflowLike,
    OverflowPolicy,
)
from ._progress import wait_future, wait_with_progress, wait_with_progress_async
from ._redact import DEFAULT_SECRET_KEYS
from ._redact import redact as _redact
from ._runstart import ResumeLike, latest_run, plan_run
from ._threads import Stopper
from ._tracker_options import DeliveryMode, Durability, TrackerOptions, tracker_options
from ._writer import Writer
from .backends.base import Backend
from .errors import BackendFailedError, FlushTimeoutError, InactiveRunError, TrackerWarning
from .events import RUN_STATUSES, RunInfo, RunStats, RunStatus
from .runfile.codec import ValueEncoder, has_null
from .watch import Alert, Watcher

__all__ = ["DEFAULT_EXPERIMENT_NAME", "AsyncTracker", "Tracker"]

logger = logging.getLogger("steplog")

DEFAULT_EXPERIMENT_NAME = "default"

#: A config: a mapping, an ``argparse.Namespace``, a dataclass instance, a pydantic
#: model, or ``None``.
ConfigLike = Any

_now = time.time
_dumps = orjson.dumps
_LINE = orjson.OPT_APPEND_NEWLINE
# After this many fast-path misses in a row, log() takes the slow path directly ...
_MISS_STREAK = 8
# ... for this many calls.
_SLOW_SPELL = 1_024

_T = TypeVar("_T")


class _Run:
    """The active run: its buffer and writer, and what ending it takes.

    Registered with the process's hooks (:func:`._hooks.register`) from its start until
    its end is asked for: they end it with :meth:`end_abruptly` or drop it with
    :meth:`forget_after_fork`, which go through the tracker that started it (held
    weakly: a tracker dropped with its run active ends the run from its finalizer).
    """

    __slots__ = (
        "buffer",
        "crash",
        "encoder",
        "info",
        "owner",
        "previous_summary",
        "shutdown_timeout",
        "tracker",
        "writer",
    )

    def __init__(
        self,
        info: RunInfo,
        buffer: LineBuffer,
        writer: Writer,
        encoder: ValueEncoder,
        tracker: _TrackerBase,
    ) -> None:
        self.info = info
        self.buffer = buffer
        self.writer = writer
        self.encoder = encoder
        self.tracker = weakref.ref(tracker)
        self.shutdown_timeout = tracker.shutdown_timeout
        #: The thread that started the run, and the exception it died of, if any (set
        #: by the process's excepthook: such a run ends "failed", not "unfinished").
        self.owner = threading.get_ident()
        self.crash: type[BaseException] | None = None
        #: A resumed run's summary so far: ``tracker.summary`` starts from it.
        self.previous_summary: dict[str, Any] = {}

    def stop(
        self, status: RunStatus, summary: dict[str, Any], timeout: float | None
    ) -> concurrent.futures.Future[RunStats]:
        """Ask the writer to end the run; until its end is written, exit waits for it
        and SIGTERM can hurry it."""
        future = self.writer.stop(status, summary, timeout)
        track_ending(self.writer, future, self.shutdown_timeout)
        return future

    def cut_short(self, future: Any, status: RunStatus) -> RunStats | None:
        """Ctrl-C (or a cancellation) while ``finish()`` waits: end the run now, as
        ``status``, and wait (bounded) for its run end to be written."""
        if not self.writer.hurry(status):
            return None
        print(
            f"steplog: {status} while finishing run {self.info.run_id!r}; writing its run "
            "end now (remote backends stop where they are)",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            stats: RunStats = future.result(2 * self.shutdown_timeout + 1)
            return stats
        return None

    def wait_abruptly(self, future: Any) -> RunStats | None:
        """Wait for the end of a run ended by :meth:`end_abruptly` (bounded: the writer
        bounds its own shutdown; the margin covers closing the backends); report on
        stderr, where the user will look."""
        try:
            stats: RunStats = wait_with_progress(
                future, self.writer.pending, timeout=2 * self.shutdown_timeout + 1
            )
        except Exception as exc:
            print(
                f"steplog: run {self.info.run_id!r} could not be closed: {exc!r}", file=sys.stderr
            )
            return None
        lost = [f"{n}: {b.failed} failed" for n, b in stats.backends.items() if b.failed]
        if lost:
            print(f"steplog: undelivered events ({', '.join(lost)})", file=sys.stderr)
        return stats

    def end_abruptly(self, status: str, reason: str) -> None:
        """End the run now, as the process goes away (exit, SIGTERM) or a thread of it
        is stopped from outside (``RunThread.stop``); a no-op once it is ending."""
        tracker = self.tracker()
        if tracker is not None:
            tracker._end_abruptly(self, cast(RunStatus, status), reason)

    def forget_after_fork(self) -> None:
        """In a forked child: the run stays the parent's (its writer did not come along)."""
        tracker = self.tracker()
        if tracker is not None:
            tracker._forget_after_fork(self)
        self.writer.forget_after_fork()


class _Option(Generic[_T]):
    """A tracker attribute that reads one of its options (fixed once it is made)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, tracker: None, owner: type) -> _Option[_T]: ...
    @overload
    def __get__(self, tracker: _OptionAttributes, owner: type | None = None) -> _T: ...
    def __get__(self, tracker: _OptionAttributes | None, owner: type | None = None) -> Any:
        if tracker is None:
            return self
        return getattr(tracker._options, self.name)

    def __set__(self, tracker: _OptionAttributes, value: object) -> None:
        raise AttributeError(
            f"{self.name} is fixed when the tracker is made: make a new tracker to change it"
        )


class _OptionAttributes:
    """A tracker's options as read-only attributes (see :class:`Tracker`'s arguments)."""

    __slots__ = ()

    _options: TrackerOptions

    backends = _Option[tuple[Backend, ...]]()
    experiment_name = _Option[str]()
    experiment_config = _Option[dict[str, Any]]()
    buffer_size = _Option[int]()
    buffer_bytes = _Option[int]()
    batch_size = _Option[int]()
    flush_interval = _Option[float]()
    overflow = _Option[OverflowPolicy]()
    shutdown_timeout = _Option[float]()
    snapshot = _Option[bool]()
    max_array_size = _Option[int]()
    handle_sigterm = _Option[bool]()
    #: The compiled ``redact`` pattern, or ``None``.
    redact = _Option["re.Pattern[str] | None"]()
    retry = _Option[RetryPolicy]()
    strict = _Option[bool]()
    durability = _Option[Durability]()
    delivery = _Option[DeliveryMode]()
    group = _Option["str | None"]()
    tags = _Option[tuple[str, ...]]()
    rank0_only = _Option[bool]()
    #: Seconds between system-metrics samples, or ``None`` (off).
    system_metrics = _Option["float | None"]()
    #: The checks the writer thread runs (see :mod:`steplog.watch`).
    watchers = _Option[tuple[Watcher, ...]]()
    on_alert = _Option["Callable[[Alert], object] | None"]()


class _TrackerBase(_OptionAttributes):
    """What ``Tracker`` and ``AsyncTracker`` share: options, ``log()``, the active run."""

    # Slots: fixed offsets, which the compiled ``log()`` reads directly (``_buffer``,
    # ``_detour``, ``_steps``, ``_misses``, ``_slow_calls``, ``_tap``), and CPython's
    # fastest attribute access on every version. The subclasses add ``__dict__`` and
    # ``__weakref__`` (a user's own attributes, weak references).
    __slots__ = (
        "_buffer",
        "_detour",
        "_encoder",
        "_ended",
        "_forked",
        "_host",
        "_host_calls",
        "_host_misses",
        "_last_stats",
        "_lifecycle",
        "_misses",
        "_next_run_id",
        "_options",
        "_orphan_hook",
        "_run",
        "_slow_calls",
        "_steps",
        "_tap",
        "summary",
    )

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
        self._options: TrackerOptions = tracker_options(
            backends,
            experiment_name=experiment_name,
            experiment_config=experiment_config,
            buffer_size=buffer_size,
            buffer_bytes=buffer_bytes,
            batch_size=batch_size,
            flush_interval=flush_interval,
            overflow=overflow,
            shutdown_timeout=shutdown_timeout,
            snapshot=snapshot,
            max_array_size=max_array_size,
            handle_sigterm=handle_sigterm,
            redact=redact,
            retry=retry,
            strict=strict,
            durability=durability,
            delivery=delivery,
            group=group,
            tags=tags,
            rank0_only=rank0_only,
            system_metrics=system_metrics,
            watchers=watchers,
            on_alert=on_alert,
        )
        self._host = host_reader(max_array_size)
        #: Summary values gathered during the run; ``finish(summary)`` is merged over it.
        self.summary: dict[str, Any] = {}
        self._run: _Run | None = None
        # The hot path reads these attributes.
        self._buffer: LineBuffer | None = None
        self._steps: Iterator[int] = itertools.count()
        self._encoder = ValueEncoder()
        self._slow_calls = 0  # calls left that go straight to the slow path
        #: Value watchers' queue of values (see ValueTap), or None.
        self._tap: ValueTap | None = None
        #: Whether log() takes its rare branch: a slow spell, or a tap to feed. One
        #: flag, so that a tracker without watchers pays nothing for them.
        self._detour = False
        self._misses = 0  # fast-path misses in a row
        self._host_calls = 0  # slow calls left that go straight to the snapshot
        self._host_misses = 0  # host-value misses in a row
        self._lifecycle = threading.RLock()
        self._last_stats: RunStats | None = None
        self._ended = False  # a run was ended (its stats may still be on their way)
        self._forked = False
        self._orphan_hook: weakref.finalize[Any, Any] | None = None
        #: The id the next run takes instead of a new one (set by integrations whose
        #: host library asks for the run's id before the run can start, e.g. Lightning).
        self._next_run_id: str | None = None

    def __repr__(self) -> str:
        state = f"active run {self._run.info.run_id!r}" if self._run else "inactive"
        return f"{type(self).__name__}({self.experiment_name!r}, {state})"

    # -- the hot path -----------------------------------------------------------

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
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
        if self._detour and self._took_detour(buffer, data, step, now):
            return
        # The fast path: orjson's own type dispatch is the check. Strict (no default,
        # no numpy option), so anything it cannot store as itself fails at once and
        # takes the slow path with the copy and snapshot of arrays and tensors. (The
        # option is positional: ~20 ns less than option=, no keyword names to match.)
        try:
            line = _dumps({"step": step, "time": now, "data": data}, None, _LINE)
        except TypeError:  # orjson.JSONEncodeError included
            self._missed_fast()
            self._log_slow(buffer, data, step, now)
            return
        if self._misses:
            self._misses = 0
        if line.rpartition(b"null")[1]:  # NaN and infinities come out as null: tag them
            line = self._encoder.encode_row(step, now, data)
        size = len(line)
        # Lock-free: from here to the return no other thread and no signal handler
        # can run (no call, no backward jump: `+=` on a bytearray is one BINARY_OP that
        # stores back the object it loaded), and the writer closes this path
        # (limit = 0) before it swaps the buffer. The argument, and why the three
        # limits are one comparison: LineBuffer's docstring. Keep this region free of
        # calls (tests/test_hot_path.py checks it).
        if buffer.count < buffer.limit and size <= buffer.fast_line:
            buffer.data += line
            buffer.count += 1
            return
        if size > buffer.line_limit:
            self._queue_line(buffer, line, step, now, data)
        else:  # a wake-up, an overflow, or the writer process's ring
            buffer.put_slow(line)

    #: The pure-Python ``log()``: the reference, and the fallback of the compiled one
    #: (``_compiled_log`` makes ``log`` the compiled method where it is built).
    _log_py = log

    #: Whether the class hides one of these slots (the compiled ``log()`` reads it).
    _steplog_hides_slots = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The compiled log() reads this class's slots at their offsets; a subclass (or a
        # base before this class in its MRO) that puts anything else under one of their
        # names — a slot of its own, a class attribute, a property — would not be seen
        # there: the compiled method hands calls on its instances to the Python one,
        # which looks names up. (Decided when the class is made: a class attribute
        # added to a tracker class later under one of these names is not seen.)
        cls._steplog_hides_slots = shadows_slots(cls, _TrackerBase)

    def _took_detour(self, buffer: LineBuffer, data: dict[str, Any], step: int, now: float) -> bool:
        """``log()``'s rare branch: feed the value watchers' tap, or take the slow path
        during a slow spell. Returns whether the event is queued (else the fast path
        goes on). The compiled ``log()`` feeds a plain float to the tap itself (the
        first case below) and calls this for the rest."""
        tap = self._tap
        if tap is not None:
            # One watched key: a float is queued right here, an absent key (None)
            # skipped; anything else (and several keys: tap.absent) goes to capture.
            value = data.get(tap.key, tap.absent)
            if type(value) is float:
                pair = (step, value)  # (made before the queue is read: see ValueTap)
                tap.values[0].extend(pair)
            elif value is not None and tap.capture(step, data):
                # A watched value that is no plain number: read it from the encoding.
                self._log_slow(buffer, data, step, now, tap)
                return True
        if self._slow_calls:
            self._slow_calls -= 1
            if not self._slow_calls:
                self._detour = tap is not None
            self._log_slow(buffer, data, step, now)
            return True
        return False

    def _missed_fast(self) -> None:
        # Loops that log tensors or numpy values every step would pay for a failed
        # fast attempt on every call: after a streak of misses, go straight to the
        # slow path for a while, then try the fast one again.
        self._misses += 1
        if self._misses >= _MISS_STREAK:
            self._misses = 0
            self._slow_calls = _SLOW_SPELL
            self._detour = True

    def _log_slow(
        self,
        buffer: LineBuffer,
        data: dict[str, Any],
        step: int,
        now: float,
        tap: ValueTap | None = None,
    ) -> None:
        """The slow path, never raising into the caller when another thread changes a
        container of ``data`` while it is read (retried; then a marker is recorded).
        ``tap``: hand it the watched values, from what is queued."""
        for attempt in range(3):
            try:
                self._log_slow_once(buffer, data, step, now, tap)
            except RuntimeError as exc:  # "dictionary changed size during iteration"
                if attempt == 2:
                    line = self._encoder.unencodable(step, now, exc)
                    self._queue_line(buffer, line, step, now, data, tap)
            else:
                return

    def _log_slow_once(
        self,
        buffer: LineBuffer,
        data: dict[str, Any],
        step: int,
        now: float,
        tap: ValueTap | None = None,
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
                if has_null(line):
                    line = self._encoder.encode_row(step, now, data)
                self._queue_line(buffer, line, step, now, data, tap)
                return
        data = data.copy()
        if buffer.libraries and not buffer.is_plain(map(type, data.values())):
            if not self._options.snapshot:
                if tap is not None:
                    tap.row(step, data)  # (before the row: see ValueTap)
                buffer.put_row((step, now, data))  # references: the writer reads them
                return
            data = _snapshot(data, max_array_size=self._options.max_array_size)
            if DEFER_KEY in data:
                if tap is not None:
                    tap.row(step, data)
                buffer.put_row((step, now, data))
                return
        try:
            line = self._encoder.encode_row(step, now, data)
        except Exception as exc:  # pragma: no cover - encode_row has its own fallbacks
            line = self._encoder.unencodable(step, now, exc)
        self._queue_line(buffer, line, step, now, data, tap)

    def _queue_line(
        self,
        buffer: LineBuffer,
        line: bytes,
        step: int,
        now: float,
        data: Mapping[str, Any],
        tap: ValueTap | None = None,
    ) -> None:
        """Queue a line ``log()``'s fast path did not: one longer than ``max_event_bytes``
        becomes the too-large marker; the watchers' tap gets the line's values."""
        if len(line) > self._encoder.max_event_bytes:
            line = self._encoder.too_large(step, now, data, len(line))
            buffer.put_slow(line)
        else:
            buffer.put(line)
        if tap is not None:
            tap.line(step, line)

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

    def _inactive(self, method: str) -> InactiveRunError:
        if self._forked:
            hint = (
                "this process was forked from one with an active run, which stays the "
                "parent's; call init() to start this process's own run"
            )
        elif self._last_stats is None and not self._ended:
            hint = "call init() (or use 'with tracker.run(config):') first"
        else:
            hint = "the run was finished (or is finishing); call init() to start a new run"
        return InactiveRunError(f"{method}() called with no active run: {hint}")

    # -- the start of a run -----------------------------------------------------

    def _start(self, config: Mapping[str, Any] | None, resume: ResumeLike) -> tuple[_Run, Any]:
        run_id, self._next_run_id = self._next_run_id or new_run_id(), None
        plan = plan_run(self._options, config, resume=resume, run_id=run_id)
        buffer = buffer_type(self.durability)(
            self.buffer_size,
            wake_at=self.batch_size,
            policy=self.overflow,
            byte_budget=self.buffer_bytes,
            line_limit=self._options.max_event_bytes,
        )
        encoder = ValueEncoder(max_event_bytes=buffer.line_limit)
        writer = Writer(
            buffer,
            plan.backends,
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
        writer.refresh_inspection()
        run = _Run(plan.info, buffer, writer, encoder, self)
        run.previous_summary = plan.previous_summary
        writer.stopper = Stopper(
            end_run=functools.partial(
                run.end_abruptly, "unfinished", "was not finished and its thread was stopped"
            ),
            grace=2 * self.shutdown_timeout + 1,
        )
        return run, writer.start(plan.info)

    def _latest_run(self) -> Path | None:
        """The run file ``init(resume="latest")`` would continue if called now, or
        ``None`` (for Lightning, which asks a logger for its version first)."""
        return latest_run(self._options)

    def _monitor(self, encoder: ValueEncoder) -> Monitor | None:
        """The writer's system metrics and watchers; ``None`` when both are off."""
        options = self._options
        if options.system_metrics is None and not options.watchers:
            return None
        return Monitor(
            system_interval=options.system_metrics,
            watchers=options.watchers,
            on_alert=options.on_alert,
            encoder=encoder,
        )

    def _activate(self, run: _Run) -> None:
        resumed = run.info.resumed
        self.summary = dict(run.previous_summary)
        self._steps = itertools.count(resumed.step if resumed is not None else 0)
        self._run = run
        self._encoder = run.encoder
        self._slow_calls = self._misses = self._host_calls = self._host_misses = 0
        monitor = run.writer.monitor
        self._tap = monitor.tap if monitor is not None else None
        self._detour = self._tap is not None
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
        register(run)
        install_exit_hook()
        if self.handle_sigterm:
            install_sigterm_handler()

    # -- the end of a run -------------------------------------------------------

    def _deactivate(
        self, summary: Mapping[str, Any] | None, status: RunStatus, timeout: float | None
    ) -> Any:
        """Stop accepting events and ask the writer to end the run; None if inactive."""
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
            self._ended = True
            self._detach_orphan_hook()
            unregister(run)
        merged = _redact({**self.summary, **(summary or {})}, self.redact)
        return run, run.stop(status, merged, timeout)

    def _detach_orphan_hook(self) -> None:
        hook, self._orphan_hook = self._orphan_hook, None
        if hook is not None:
            hook.detach()

    def _finished(self, stats: RunStats) -> RunStats:
        """Record a finished run's stats; with ``strict``, raise if a backend lost events."""
        self._last_stats = stats
        if self.strict:
            _raise_if_lost(stats)
        return stats

    # -- what the process hooks ask of a run (through _Run) ---------------------

    def _end_abruptly(self, run: _Run, status: RunStatus, reason: str) -> None:
        """Finish ``run``, if it is still the active run, as the process goes away (exit
        hook, SIGTERM) or one of its threads is stopped from outside.

        Bounded by ``shutdown_timeout``; reports on stderr, where the user will look.
        """
        if self._run is not run:
            return
        print(
            f"steplog: run {run.info.run_id!r} ({self.experiment_name}) {reason}; "
            f"writing what was logged and closing it as {status!r}",
            file=sys.stderr,
        )
        pending = self._deactivate(None, status, self.shutdown_timeout)
        if pending is not None:
            stats = run.wait_abruptly(pending[1])
            if stats is not None:
                self._last_stats = stats

    def _forget_after_fork(self, run: _Run) -> None:
        """In a forked child: drop the parent's run (its writer did not come along)."""
        if self._run is not run:
            return
        self._detach_orphan_hook()
        self._forked = True
        self._run = None
        self._buffer = None


def _compiled_log() -> None:
    """Make ``Tracker.log`` the compiled fast path (``steplog._speedups``), when built.

    The compiled ``log()`` takes the same steps as the Python one, which stays as
    ``_log_py``: the reference, the fallback it hands every uncommon call to (before
    any side effect), and ``Tracker.log`` where the extension was not built (no
    compiler at install time), on a free-threaded build running without the GIL (its
    lock-free append rests on the GIL), or with ``STEPLOG_PURE_PYTHON=1`` set
    (``_buffer.SPEEDUPS`` decides).
    """
    if SPEEDUPS is None:
        return
    # (It calls _now and _dumps; it reads the three classes' slots.)
    SPEEDUPS.setup(globals(), _LINE, itertools.count, _TrackerBase, LineBuffer, ValueTap)
    doc = "log($self, /, data, step=None)\n--\n\n" + (_TrackerBase.log.__doc__ or "")
    _TrackerBase.log = SPEEDUPS.bind(_TrackerBase, doc)  # type: ignore[method-assign]


_compiled_log()


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
            the writer; nothing is lost), ``"drop_oldest"`` or ``"drop_newest"``
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
                _warn_reinit()
                self.finish()
            run, started = self._start(config, resume)
            try:
                run.info = started.result()
            finally:
                if started.exception() is not None:
                    run.writer.join()
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
        future = run.writer.flush()
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
            _warn_inactive_finish()
            return None
        run, future = pending
        # A large backlog on a slow backend can take a while: say so on a terminal.
        try:
            stats: RunStats = wait_with_progress(future, run.writer.pending)
        except KeyboardInterrupt:
            cut = run.cut_short(future, "interrupted")
            if cut is not None:
                self._last_stats = cut
            raise
        run.writer.join()
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
    are coroutines that never block the caller's event loop (the writer runs in its
    own thread). Use ``async with AsyncTracker(...) as tracker:`` or
    ``async with tracker.run(config):``.
    """

    async def init(self, config: ConfigLike = None, *, resume: ResumeLike = None) -> RunInfo:
        """Open a new run on every backend, or continue one (see :meth:`Tracker.init`)."""
        if self._run is not None:
            _warn_reinit()
            await self.finish()
        run, started = self._start(config, resume)
        try:
            run.info = await wait_future(started)
        except BaseException:
            await anyio.to_thread.run_sync(run.writer.join)
            raise
        self._activate(run)
        return run.info

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event logged before this call is written (see :meth:`Tracker.flush`)."""
        run = self._run
        if run is None:
            raise self._inactive("flush")
        future = run.writer.flush()
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
            _warn_inactive_finish()
            return None
        run, future = pending
        try:
            stats: RunStats = await wait_with_progress_async(future, run.writer.pending)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class())):
                # Ctrl-C under asyncio.run() arrives as a cancellation: end the run now
                # (the exit hook waits for its run end to be written).
                run.writer.hurry("interrupted")
            raise
        await anyio.to_thread.run_sync(run.writer.join)
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
        unregister(run)
        status = cast(RunStatus, crash_status(run.crash))
        print(
            f"steplog: run {run.info.run_id!r} ({experiment}) was dropped without "
            f"finish(); writing what was logged and closing it as {status!r}",
            file=sys.stderr,
        )
        run.stop(status, _redact(dict(summary), pattern), timeout)
    except Exception as exc:  # never raise into the code the collector interrupted
        logger.error("steplog: ending a dropped run failed: %r", exc)


def _raise_if_lost(stats: RunStats) -> None:
    """``strict``: a backend lost events, or has not got them all yet."""
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


def _warn_reinit() -> None:
    warnings.warn(
        "init() called on an active tracker (previous run not finished); "
        "finishing the previous run first",
        TrackerWarning,
        stacklevel=3,
    )


def _warn_inactive_finish() -> None:
    warnings.warn("finish() called on an inactive tracker; ignoring", TrackerWarning, stacklevel=3)


def _status_for(exc: BaseException) -> RunStatus:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "finished"
    return "failed"


def _copy_mapping(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    raise TypeError(
        f"log() takes a mapping of names to values (e.g. {{'loss': 0.5}}), "
        f"not {type(data).__name__}"
    )
