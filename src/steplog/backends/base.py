"""The interface every backend implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from ..events import Event, RunEnd, RunInfo

__all__ = ["Backend"]


class Backend(abc.ABC):
    """A destination for the events of a run.

    The worker calls the three methods in order, from its own thread and event loop
    (asyncio, driven by anyio): ``open`` once when the run starts, ``write`` once per
    batch with events in the order they were logged, and ``close`` once at the end.
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
    #: the writer thread of the logging process feeds it, batch by batch. Every other
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

    def _direct_sink(self) -> Any:
        """The synchronous side the writer thread drives itself, or ``None``.

        Only the built-in local backends (JSONL, memory, null) have one, and only while
        a subclass has not replaced their methods: every other backend is driven through
        ``open``/``write``/``close`` on the event loop of the run's fan-out thread.
        """
        return None


def _overrides(backend: Backend, base: type, *names: str) -> bool:
    """Whether ``backend``'s class replaces any of ``base``'s methods ``names``."""
    cls = type(backend)
    return any(getattr(cls, name) is not getattr(base, name) for name in names)


def backend_name(backend: Backend) -> str:
    """Return the display name of ``backend``."""
    if backend.name:
        return backend.name
    name = type(backend).__name__
    if name.endswith("Backend") and name != "Backend":
        name = name[: -len("Backend")]
    return name.lower()
