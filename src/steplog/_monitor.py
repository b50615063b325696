"""System metrics and watchers, run by the writer thread (``Tracker(system_metrics=,
watchers=)``).

The writer creates a :class:`Monitor` only when one of those options is on, so a run
without them pays nothing. Everything here runs on the writer's side, except
:class:`ValueTap`: with value watchers, ``log()`` hands it each event's watched values
(one dict lookup per watched key; see docs/watchers.md for why there). Steps per second
come from the count of events the writer took; CPU from
``time.process_time()`` deltas; RSS from ``/proc/self/statm`` (Linux; elsewhere the
peak RSS of ``resource.getrusage``); GPUs through NVML (``nvidia-ml-py``, the ``gpu``
extra), when it is installed and a driver answers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import logging
import math
import numbers
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import orjson

from ._buffer import LOCK_FREE, refuse_hidden_slots
from ._threads import run_thread
from .runfile.codec import ValueEncoder, decode
from .runfile.schema import alert_record, lookup, system_record
from .watch import Alert, ClockWatcher, ValueWatcher, Watcher

__all__ = [
    "AlertCallback",
    "AlertCallbacks",
    "GpuSampler",
    "Monitor",
    "SystemSampler",
    "ValueTap",
]

logger = logging.getLogger("steplog")

AlertCallback = Callable[[Alert], object]


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 4096


class GpuSampler:
    """Per-device utilisation, memory and power through NVML (``pynvml``)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.handles = [
            nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
        ]
        self._failed: set[str] = set()

    @classmethod
    def start(cls) -> GpuSampler | None:
        """The sampler, or ``None`` (logged once) when NVML is missing or has no driver."""
        try:
            pynvml = importlib.import_module("pynvml")
        except ImportError:
            logger.info(
                "steplog: GPU metrics are off: nvidia-ml-py is not installed "
                "(pip install 'steplog[gpu]')"
            )
            return None
        try:
            pynvml.nvmlInit()
            sampler = cls(pynvml)
        except Exception as exc:  # no driver, no device, a library mismatch
            logger.info("steplog: GPU metrics are off: NVML could not start (%s)", exc)
            return None
        if not sampler.handles:
            logger.info("steplog: GPU metrics are off: NVML sees no device")
            return None
        return sampler

    def sample(self, out: dict[str, Any]) -> None:
        """Add ``gpu<i>.util_percent``, ``gpu<i>.mem_mb`` and ``gpu<i>.power_w`` to ``out``."""
        for index, handle in enumerate(self.handles):
            for metric in ("util_percent", "mem_mb", "power_w"):
                name = f"gpu{index}.{metric}"
                try:
                    out[name] = self._read(metric, handle)
                except Exception as exc:  # a device that does not report it (power, MIG)
                    if name not in self._failed:
                        self._failed.add(name)
                        logger.info("steplog: GPU metric %s is not available: %s", name, exc)

    def _read(self, metric: str, handle: Any) -> Any:
        nvml = self.nvml
        if metric == "util_percent":
            return nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        if metric == "mem_mb":
            return round(nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20, 1)
        return round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1)  # milliwatts

    def close(self) -> None:
        """Shut NVML down (errors ignored: the run is over)."""
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


class SystemSampler:
    """Process CPU %, RSS and steps per second, from deltas between two samples."""

    def __init__(self, events: int) -> None:
        self.statm = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
        self.page = _page_size()
        self.wall = time.monotonic()
        self.cpu = time.process_time()
        self.events = events
        self.gpu = GpuSampler.start()

    def rss_mb(self) -> tuple[str, float]:
        """The resident set size in MiB: current (Linux), else the peak so far."""
        if self.statm:
            try:
                with open("/proc/self/statm", "rb") as f:
                    pages = int(f.read().split()[1])
                return "rss_mb", round(pages * self.page / 2**20, 1)
            except (OSError, ValueError, IndexError):
                self.statm = False
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # kilobytes on Linux, bytes on macOS
        return "max_rss_mb", round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)

    def sample(self, events: int) -> dict[str, Any]:
        """One sample: the rates are over the time since the previous one."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self.wall
        data: dict[str, Any] = {}
        if elapsed > 0:
            data["cpu_percent"] = round(100 * (cpu - self.cpu) / elapsed, 1)
            data["steps_per_s"] = round((events - self.events) / elapsed, 2)
        name, rss = self.rss_mb()
        data[name] = rss
        if self.gpu is not None:
            self.gpu.sample(data)
        self.wall, self.cpu, self.events = wall, cpu, events
        return data

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()


class AlertCallbacks:
    """Calls ``on_alert`` in a thread of its own, one alert after the other, in order.

    Never in the writer thread: a callback that blocks, or that logs into its own
    tracker while the buffer is full under ``"block"``, must not hold up the writer,
    which alone makes room. ``finish()`` waits for the callbacks until its deadline,
    then leaves one that has not returned behind (a daemon thread), as it leaves a
    stuck backend. The thread starts with the first alert.
    """

    def __init__(self, callback: AlertCallback, name: str) -> None:
        self.callback = callback
        self.name = name
        #: Calls that raised (the first is logged with its traceback).
        self.errors = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, alert: Alert) -> None:
        """Hand ``alert`` to the callback (returns at once)."""
        if self._thread is None:
            self._thread = run_thread(self._main, name=self.name)
            self._thread.start()
        self._queue.put(alert)

    def mark(self) -> concurrent.futures.Future[None] | None:
        """A future done once every alert submitted so far has been through the
        callback; ``None`` when no alert ever was."""
        if self._thread is None:
            return None
        marker: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(marker)
        return marker

    def runs_in(self, ident: int) -> bool:
        """Whether the thread ``ident`` is the one that runs the callback."""
        thread = self._thread
        return thread is not None and thread.ident == ident

    def close(self, timeout: float | None, *, own: bool = False) -> None:
        """Let the callback finish the alerts it has (up to ``timeout`` seconds), then
        end its thread; one still running then is left behind, with a warning. ``own``:
        the callback itself asked for the end (``finish()`` inside ``on_alert``), which
        must not wait for it: its thread ends when it returns."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if own:
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "steplog: on_alert had not returned when the run had to end; it is left "
                "running (in daemon thread %r) and later alerts are not passed to it",
                self.name,
            )

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, concurrent.futures.Future):
                if not item.done():
                    item.set_result(None)
                continue
            try:
                self.callback(item)
            except Exception as exc:
                self.errors += 1
                if self.errors == 1:
                    logger.error(
                        "steplog: the on_alert callback raised (later errors are only counted)",
                        exc_info=exc,
                    )


#: Types whose values a value watcher ignores (what they encode to is no number).
_NOT_NUMBERS = frozenset({type(None), str, bool, list, tuple, dict, bytes})


#: ``ValueTap.key`` when log() cannot queue on its own: equal to no key of any dict.
_NO_KEY = object()


class _Later:
    """A watched value still to be read from its event's data once the writer has read
    the event's tensors back (a device tensor, or a reference kept with
    ``snapshot=False``): the row's own dict, resolved in place by the writer."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


class _Steps(Sequence[int]):
    """The steps of a queue's flat ``step, value`` pairs, read on demand."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[Any]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs) // 2

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self.pairs[::2][index]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("step index out of range")
        return int(self.pairs[2 * index])

    def __iter__(self) -> Iterator[int]:
        return iter(self.pairs[::2])


class ValueTap:
    """``log()``'s side of the value watchers: each event's watched values, queued.

    A value watcher checks one key of every event. ``log()`` has the event's dict at
    hand, so the value is one dict lookup away there; the writer has only the encoded
    lines, and decoding them cost +2.5 µs per event (issue #26). So ``log()`` calls
    :attr:`capture` (``Tracker.log`` does, only for trackers with value watchers: it is
    a branch that every tracker's ``log()`` takes anyway for slow spells) and queues
    the step and the value per watched key; the writer checks each queue a batch at a time
    (:meth:`Monitor.check_values`). A value that is no plain number when logged
    (a tensor, a numpy array, another object) is read from what the run file gets, as
    before: :meth:`line` decodes the event's encoded line, on the slow path that such
    an event takes anyway; :meth:`row` queues the event's own dict, for the writer to
    read once it has read the tensors back (in place).

    Each queue is one flat list of pairs, a step and its value side by side (``[step,
    value, step, value, ...]``): a ``(step, value)`` tuple per value, made by ``log()``
    and freed by the writer, was a third of a watcher's cost (issue #26). Producers add
    a pair with one call that the GIL makes atomic, like the buffer's append (see
    ``LineBuffer``): ``self.values[i].extend(pair)`` on one line, the pair made *before*
    that line, since making it can start the garbage collector, whose finalizers may
    let the writer run and swap the queue between its load and the call; the compiled
    ``log()`` appends the step and then the value, with nothing between the queue's
    load and the two appends that allocates an object or runs Python code, so no swap
    comes between them either. The writer swaps each queue for an empty one
    (:meth:`swap`) *before* it takes a batch: every value it gets was queued before
    that batch was taken, so a row's value is resolved when it is checked (:meth:`row`
    queues before the row).
    Without the GIL (:data:`~steplog._buffer.LOCK_FREE` false), both sides take a lock.
    """

    # Slots: the compiled ``log()`` reads key, absent and values at their offsets (as
    # the tracker's: see _TrackerBase).
    __slots__ = ("absent", "capture", "key", "keys", "lock", "lookups", "rows", "values")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refuse_hidden_slots(cls, ValueTap)

    def __init__(self, keys: Sequence[str]) -> None:
        #: Queue the watched values of one event; True when one of them must be read
        #: from the encoded event instead (:meth:`line` or :meth:`row`; nothing queued).
        self.capture: Callable[[int, dict[str, Any]], bool] = self._capture_many
        self.keys = list(keys)
        self.lookups = [(key, "." not in key) for key in self.keys]
        #: One queue per watched key: ``step, value`` pairs, flat; a value is a
        #: number or a _Later.
        self.values: list[list[Any]] = [[] for _ in self.keys]
        #: Rows queued so far (the writer looks for _Later values only when it moved).
        self.rows = 0
        self.lock = threading.Lock() if not LOCK_FREE else None
        #: The one watched key, not dotted (the GIL): ``log()`` queues a float under it
        #: itself, without calling :attr:`capture`. Otherwise a key no dict has.
        self.key: Any = _NO_KEY
        #: What ``log()`` gets for :attr:`key` when the event lacks it: None (nothing
        #: to check) for the one key; for several, anything else (call capture).
        self.absent: Any = _NO_KEY
        if self.lock is None and len(self.keys) == 1 and "." not in self.keys[0]:
            self.key = self.keys[0]
            self.absent = None
            self.capture = self._capture_one

    def _capture_many(self, step: int, data: dict[str, Any]) -> bool:
        # capture() for several keys, dotted keys, or a build without the GIL.
        values = []
        for key, flat in self.lookups:
            value = data.get(key) if flat else lookup(data, key)
            kind = type(value)
            if kind is float or kind is int:
                values.append(value)
            elif kind in _NOT_NUMBERS:
                values.append(None)
            elif isinstance(value, (int, float)):  # numpy.float64, IntEnum: as encoded
                values.append(float(value))
            else:
                return True
        pairs = [(index, (step, value)) for index, value in enumerate(values) if value is not None]
        with self.lock or contextlib.nullcontext():
            for index, pair in pairs:
                self.values[index].extend(pair)
        return False

    def _capture_one(self, step: int, data: dict[str, Any]) -> bool:
        # capture() for the common case: one watched key, not dotted, the GIL.
        value = data.get(self.key)
        kind = type(value)
        if kind is float or kind is int:
            pair = (step, value)  # (made before the queue is read: see the class doc)
            self.values[0].extend(pair)
        elif kind not in _NOT_NUMBERS:
            if not isinstance(value, (int, float)):
                return True
            pair = (step, float(value))
            self.values[0].extend(pair)
        return False

    def line(self, step: int, line: bytes) -> None:
        """Queue the watched values of an event from its encoded line (slow path)."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:  # pragma: no cover - log() encoded it
            return
        event = record.get("data")
        if type(event) is not dict:
            return  # a marker line (unencodable, too large): no values
        with self.lock or contextlib.nullcontext():
            for index, (key, flat) in enumerate(self.lookups):
                value: Any = event.get(key) if flat else lookup(event, key)
                if type(value) is dict:  # a tagged value: NaN, ±inf, a big int
                    value = decode(value)
                kind = type(value)
                if kind is float or kind is int:
                    pair = (step, value)
                    self.values[index].extend(pair)

    def row(self, step: int, data: dict[str, Any]) -> None:
        """Queue the watched values of an event the writer reads back (call it before
        the row is queued: a swap must never hold the value of a row not yet queued)."""
        pair = (step, _Later(data))
        self.rows += 1
        with self.lock or contextlib.nullcontext():
            for index in range(len(self.keys)):
                self.values[index].extend(pair)

    def swap(self) -> list[list[Any]]:
        """Take every queued pair, per key (the writer, before it takes a batch)."""
        fresh: list[list[Any]] = [[] for _ in self.keys]
        with self.lock or contextlib.nullcontext():
            queued = self.values
            taken = []
            for index in range(len(fresh)):
                taken.append(queued[index])
                queued[index] = fresh[index]  # (a store: no call between it and the load)
        return taken

    def numbers(self, index: int, pairs: list[Any]) -> tuple[Sequence[int], list[Any]]:
        """The steps and numbers of queue ``index``'s ``pairs`` (rows read back)."""
        queued = pairs[1::2]
        if not (self.rows and any(type(v) is _Later for v in queued)):
            # Steps are read only when a watcher fires: not listed up front.
            return _Steps(pairs), queued
        key, flat = self.lookups[index]
        steps: list[int] = []
        values: list[Any] = []
        for step, value in zip(pairs[::2], queued, strict=True):
            if type(value) is _Later:
                data = value.data
                value = data.get(key) if flat else lookup(data, key)
                if type(value) is dict:
                    value = decode(value)
                if type(value) is not float and type(value) is not int:
                    if isinstance(value, bool) or not isinstance(value, numbers.Real):
                        continue  # no number, or a dropped row (placeholders left)
                    value = float(value)  # a numpy scalar: a number in the file
            steps.append(step)
            values.append(value)
        return steps, values


class Monitor:
    """The writer's periodic work for system metrics and watchers.

    Args:
        system_interval: Seconds between system samples, or ``None`` (off).
        watchers: Checks to run.
        on_alert: Called with each :class:`Alert`, in a thread of its own
            (:class:`AlertCallbacks`).
        encoder: The run's encoder (alerts may hold NaN or infinities).
    """

    def __init__(
        self,
        *,
        system_interval: float | None,
        watchers: Sequence[Watcher],
        on_alert: AlertCallback | None,
        encoder: ValueEncoder,
    ) -> None:
        self.system_interval = system_interval
        self.encoder = encoder
        #: Where ``on_alert`` runs (``None`` without one).
        self.callbacks = (
            AlertCallbacks(on_alert, "steplog-on-alert") if on_alert is not None else None
        )
        self.clock_watchers = [w for w in watchers if isinstance(w, ClockWatcher)]
        self.value_watchers: dict[str, list[ValueWatcher]] = {}
        for watcher in watchers:
            watcher.reset()
            if isinstance(watcher, ValueWatcher):
                self.value_watchers.setdefault(watcher.key, []).append(watcher)
        #: Where log() queues the watched values (None without value watchers).
        self.tap = ValueTap(list(self.value_watchers)) if self.value_watchers else None
        self.sampler: SystemSampler | None = None
        self.next_sample = math.inf
        self.alerts = 0
        #: Batches a value watcher raised on (logged once, then counted).
        self.watcher_errors = 0
        self.records: list[bytes] = []

    def start(self) -> None:
        """The run starts (in the writer thread: NVML's start can take a while)."""
        if self.system_interval is not None:
            self.sampler = SystemSampler(0)
            self.next_sample = time.monotonic() + self.system_interval

    # -- called by the writer after each drain ------------------------------------

    def check_values(self, taken: Sequence[list[tuple[int, Any]]]) -> None:
        """Check the values ``log()`` queued (``taken``: :meth:`ValueTap.swap`, called
        before the batch whose rows have been read back since)."""
        tap = self.tap
        if tap is None:
            return
        now = mono = 0.0
        fired: list[Alert] = []
        for index, watchers in enumerate(self.value_watchers.values()):
            if not taken[index]:
                continue
            steps, values = tap.numbers(index, taken[index])
            if not values:
                continue
            if not mono:
                now, mono = time.time(), time.monotonic()
            for watcher in watchers:
                try:
                    fired += watcher.check_batch(steps, values, now, mono)
                except Exception:  # a watcher's bug must not end the writer thread
                    self.watcher_errors += 1
                    if self.watcher_errors == 1:
                        logger.warning(
                            "steplog: the watcher %r raised on a batch of %r; its values"
                            " are not checked (later errors are only counted)",
                            watcher,
                            watcher.key,
                            exc_info=True,
                        )
        if len(fired) > 1:
            fired.sort(key=lambda alert: alert.step if alert.step is not None else -1)
        for alert in fired:  # in step order, whichever watcher saw it
            self._fire(alert)

    def tick(self, events: int) -> None:
        """Run the clock watchers and take a system sample when one is due."""
        now, mono = time.time(), time.monotonic()
        for watcher in self.clock_watchers:
            alert = watcher.tick(events, now, mono)
            if alert is not None:
                self._fire(alert)
        if mono >= self.next_sample and self.sampler is not None:
            self._sample(events, now)
            self.next_sample = mono + (self.system_interval or math.inf)

    def finish(self, events: int) -> None:
        """The run ends: a last system sample (the final RSS, the last rates)."""
        if self.sampler is not None:
            self._sample(events, time.time())
            self.sampler.close()
            self.sampler = None

    def take_records(self) -> bytes:
        """The encoded records made since the last call, joined."""
        records, self.records = self.records, []
        return b"".join(records)

    # -- internals ------------------------------------------------------------------

    def _sample(self, events: int, now: float) -> None:
        if self.sampler is None:
            return
        data = self.sampler.sample(events)
        self.records.append(self.encoder.encode(system_record(now, events, data)))

    def _fire(self, alert: Alert) -> None:
        self.alerts += 1
        self.records.append(self.encoder.encode(alert_record(alert)))
        extra = f" ({alert.suppressed} more in the cooldown)" if alert.suppressed else ""
        logger.warning("steplog alert [%s]: %s%s", alert.watcher, alert.message, extra)
        if self.callbacks is not None:
            self.callbacks.submit(alert)

    @property
    def callback_errors(self) -> int:
        """Calls of ``on_alert`` that raised."""
        return self.callbacks.errors if self.callbacks is not None else 0
