"""The interface every backend implements (:class:`Backend`), and the one the writer
thread drives itself (:class:`SyncBackend`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from .._extras import require
from ..events import Event, RunEnd, RunInfo
from ..runfile.codec import ValueEncoder

__all__ = ["Backend", "SyncBackend"]


class Backend(abc.ABC):
    """A destination for the events of a run.

    steplog calls the three methods in order, from one thread and event loop of its own
    (asyncio, driven by anyio: a remote backend's lane, or the fan-out of local sinks):
    ``open`` once when the run starts, ``write`` once per batch with events in the
    order they were logged, and ``close`` once at the end.
    A backend never sees two calls at once. It may be reused for several runs: each
    run calls ``open`` again after the previous ``close``.

    Errors raised by ``open`` make ``init()`` fail with :class:`steplog.BackendOpenError`.
    Errors raised by ``write`` or ``close`` are logged and counted in the run
    statistics; they never reach the code calling ``log()``.

    Retries: when ``write`` raises, it is called again with *the same batch object*
    (``events is`` the previous one), after a pause, until it succeeds — for a remote
    backend, whose lane follows the run file, also after an outage of any length; only
    then does the next batch come. So a backend must make a retry store only what the
    failed call did not (resume after what made it, or write idempotently, e.g. keyed
    by step), and a backend that keeps state per batch (a counter, a plot's points)
    must not apply it twice: recognise the retry by identity. One batch can also come
    again as a new object: the one a crash (of the logging or the delivery process)
    caught between the backend's acknowledgement and the lane's cursor update; store
    it idempotently where you can (MLflow keeps one point per key, step, time and value;
    W&B ignores a step it has). ``PermanentBackendError`` is not retried: the lane stops
    (``steplog sync`` can send the rest later).

    Backends must not block the event loop for long (it is shared by all backends of
    the run): do file or network I/O asynchronously, or in a worker thread.
    """

    #: Name used in statistics and messages; defaults to the class name, lower-cased,
    #: without a ``Backend`` suffix.
    name: str = ""

    #: Whether this backend is an in-process sink (memory, console, a live plot, null):
    #: the writer thread of the logging process feeds it, batch by batch — itself for a
    #: :class:`SyncBackend`, else through the fan-out's event loop. Every other
    #: backend is remote: a *lane* feeds it from the run file, by default in a delivery
    #: process (see docs/concepts.md, "Remote backends follow the run file").
    local: bool = False

    #: Whether a remote backend may move to the delivery process (pickled: its
    #: configuration) when the tracker has one (``Tracker(delivery="process")``, the
    #: default). A backend whose state you read back in this process (a test double)
    #: says ``False``; one that does not pickle stays here too. Either way its lane
    #: runs in a thread of the logging process.
    movable: bool = True

    @abc.abstractmethod
    async def open(self, run: RunInfo) -> None:
        """Start a run: create files, connections, remote run objects."""

    @abc.abstractmethod
    async def write(self, events: Sequence[Event]) -> None:
        """Store one batch of events, in order.

        Called again with the same ``events`` object if it raised (see the class
        documentation: a retry must not store anything twice).
        """

    @abc.abstractmethod
    async def close(self, end: RunEnd) -> None:
        """Store the summary, status and statistics, and release resources."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SyncBackend(Backend):
    """A local backend the writer thread writes itself, synchronously (JSONL, memory, null).

    Declaring a backend this way is what makes it cheap: the run's writer thread calls
    :meth:`open_sync`, :meth:`write_sync` and :meth:`close_sync` between two drains of
    the buffer, with no event loop, task or queue in between. Every other in-process
    backend (``local = True``: the console, a live plot) goes through the fan-out's event
    loop, and a remote one (``local = False``) through a lane that follows the run file.
    So a ``SyncBackend`` must be quick: the logging loop waits for it when the buffer is
    full (``overflow="block"``).

    The contract of :class:`Backend` holds for the synchronous methods: one call at a
    time, in order; a ``write_sync`` that raises is called again with the *same* batch
    object (store only what the failed call did not); a batch given up after the retries
    gets one :meth:`discard_sync`. The async ``open``, ``write`` and ``close`` call the
    synchronous ones, for when the backend is driven like any other (``steplog.replay``,
    ``steplog sync``, or as a remote backend: ``local = False``).

    A subclass that replaces ``open``, ``write`` or ``close`` (written against the async
    contract, e.g. a :class:`steplog.MemoryBackend` that fails on purpose) gets
    ``synchronous = False`` unless its body sets it: it is then driven through those
    methods like any in-process backend, so its overrides run. Override the ``*_sync``
    methods instead to stay on the writer thread.
    """

    local = True

    #: Whether the writer thread calls the ``*_sync`` methods itself (see the class
    #: documentation for the subclasses that get ``False``).
    synchronous: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "synchronous" not in cls.__dict__ and any(
            name in cls.__dict__ for name in ("open", "write", "close")
        ):
            cls.synchronous = False

    @abc.abstractmethod
    def open_sync(self, run: RunInfo, encoder: ValueEncoder) -> None:
        """Start a run.

        Args:
            run: The run.
            encoder: The run's value encoder, which made the JSON lines of the batches;
                a backend that writes records of its own encodes them with it (the run
                file does), others ignore it.
        """

    @abc.abstractmethod
    def write_sync(self, events: Sequence[Event]) -> None:
        """Store one batch of events, in order (usually a :class:`steplog.EventBatch`,
        whose ``data`` holds its JSON lines)."""

    def discard_sync(self) -> int:
        """Give up the batch whose ``write_sync`` kept failing; returns how many of its
        events stay stored (whole ones only). The default: none were stored."""
        return 0

    @abc.abstractmethod
    def close_sync(self, end: RunEnd) -> None:
        """Store the summary, status and statistics, and release resources."""

    async def open(self, run: RunInfo) -> None:
        """Start a run (calls :meth:`open_sync`, with an encoder of its own)."""
        self.open_sync(run, ValueEncoder())

    async def write(self, events: Sequence[Event]) -> None:
        """Store one batch (calls :meth:`write_sync`)."""
        self.write_sync(events)

    async def close(self, end: RunEnd) -> None:
        """End the run (calls :meth:`close_sync`)."""
        self.close_sync(end)


def backend_name(backend: Backend) -> str:
    """Return the display name of ``backend``."""
    if backend.name:
        return backend.name
    name = type(backend).__name__
    if name.endswith("Backend") and name != "Backend":
        name = name[: -len("Backend")]
    return name.lower()


class PicklesAsConfiguration:
    """A backend whose pickled copy (the delivery process gets one) is its
    configuration: not a run's client, nor the SDK module, which the copy imports again.

    ``_sdk``: the attribute holding the SDK module, and ``require()``'s module, extra and
    feature; ``_run_state``: the attributes of a run, ``None`` in the copy.
    """

    _sdk: ClassVar[tuple[str, str, str, str]]
    _run_state: ClassVar[tuple[str, ...]]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in (self._sdk[0], *self._run_state):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        attribute, module, extra, feature = self._sdk
        setattr(self, attribute, require(module, extra, feature))
        for key in self._run_state:
            setattr(self, key, None)
