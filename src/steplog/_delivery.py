"""One backend's delivery: retries with backoff, the circuit breaker, the counts.

Shared by the writer thread (:class:`DirectRunner`, for each ``SyncBackend``), the
fan-out's per-backend runners (:class:`steplog._fanout.BackendRunner`) and
:func:`steplog.replay`. The retry contract (see ``Backend.write``): a failed batch is
passed again, as the same object, until it is written or given up; the next batch
waits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .backends.base import Backend, SyncBackend
from .errors import PermanentBackendError
from .events import BackendStats, Event

__all__ = ["Delivery", "DirectRunner", "RetryPolicy"]

logger = logging.getLogger("steplog")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a failing backend write is retried.

    Attributes:
        retries: Further attempts after the first failure of a batch.
        backoff: Seconds before the first retry; doubled for each further one.
        max_backoff: Longest wait between two attempts.
        breaker_after: Batches given up in a row before the backend is cut off (the
            circuit breaker opens); 0 never cuts it off. An open breaker is probed
            again after a pause and closes when the backend answers.
        probe_backoff: Seconds before the first probe of a backend that is down; doubled
            after each failed probe ...
        max_probe_backoff: ... up to this.
        jitter: Every pause is varied by up to this fraction, so that many processes
            do not retry a recovering server in step. A server's ``Retry-After`` (an
            exception with a ``retry_after`` attribute, in seconds) is honoured.
    """

    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    breaker_after: int = 5
    probe_backoff: float = 1.0
    max_probe_backoff: float = 30.0
    jitter: float = 0.25

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): doubling, capped,
        with jitter, and never sooner than a server's ``Retry-After``."""
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return self._jittered(delay, retry_after)

    def probe_delay(self, probes: int, retry_after: float | None = None) -> float:
        """Seconds before probing a backend that is down again, after ``probes`` failed
        probes: ``probe_backoff`` doubling up to ``max_probe_backoff``, with jitter."""
        delay = min(self.probe_backoff * 2**probes, self.max_probe_backoff)
        return self._jittered(delay, retry_after)

    def _jittered(self, delay: float, retry_after: float | None) -> float:
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return float(delay)


class Delivery:
    """One backend's delivery: its retries, its circuit breaker and its counts.

    :meth:`send` delivers a batch to an async backend (the fan-out's runners and
    :func:`steplog.replay` both use it); :class:`DirectRunner` does the same
    synchronously for each ``SyncBackend``, which the writer thread drives itself.

    ``clock`` (monotonic seconds, also the clock of ``deadline``) and ``sleep`` (the
    async pause between attempts) are the seams a test drives time through.
    """

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        retry: RetryPolicy,
        deadline: Callable[[], float | None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.backend = backend
        self.name = name
        self.retry = retry
        self._deadline = deadline
        self.clock = clock
        self.sleep = sleep
        self.disabled = False
        self._failed_in_a_row = 0
        self._reopen_at = 0.0  # when an open breaker lets a probe through
        self._trips = 0
        #: The last batch was given up on a PermanentBackendError (retrying is useless).
        self.permanent_error = False
        #: The server's last ``Retry-After`` (seconds), if it sent one.
        self.retry_after: float | None = None
        #: Whether batches given up in a row open the circuit breaker (a runner that
        #: catches up from the run file pauses and probes by itself instead).
        self.uses_breaker = True
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None

    def _retry_after(self, attempt: int, exc: Exception) -> float | None:
        """Count a failed attempt; seconds to wait before the next one, or None: give up."""
        self.record_error("write", exc)
        self.permanent_error = isinstance(exc, PermanentBackendError)
        if self.permanent_error and not self.disabled:
            # A 4xx (other than 408/429): retrying cannot help, nor can later batches.
            self.disabled = True
            self._reopen_at = math.inf
            self.last_error = f"stopped: {self.last_error}"
            logger.error(
                "steplog: backend %r refused the run (%s); it gets no more events in this "
                "run (the other backends go on)",
                self.name,
                exc,
            )
        hint = getattr(exc, "retry_after", None)
        self.retry_after = float(hint) if isinstance(hint, (int, float)) else None
        delay = self.retry.delay(attempt, self.retry_after)
        if self.permanent_error or attempt > self.retry.retries or self._out_of_time(delay):
            return None
        return delay

    def _succeeded(self) -> None:
        self._failed_in_a_row = 0
        self.permanent_error = False
        self.retry_after = None
        if self.disabled:
            self.disabled = False  # the probe got through: the breaker closes
            logger.warning("steplog: backend %r answers again; it gets events again", self.name)

    def _gave_up(self) -> None:
        """A batch was given up: trip the circuit breaker after too many in a row."""
        self._failed_in_a_row += 1
        breaker_after = self.retry.breaker_after if self.uses_breaker else 0
        # A refused run stays cut off for good: no probe pause replaces its reopen time.
        if breaker_after and self._failed_in_a_row >= breaker_after and not self.permanent_error:
            pause = self.retry.probe_delay(self._trips, self.retry_after)
            self._reopen_at = self.clock() + pause
            self._trips += 1
            if not self.disabled:
                self.disabled = True
                self.last_error = (
                    f"cut off after {self._failed_in_a_row} failed batches: {self.last_error}"
                )
                logger.error(
                    "steplog: backend %r failed %d batches in a row; it is cut off and "
                    "probed again in %.1f s (the other backends go on)",
                    self.name,
                    self._failed_in_a_row,
                    pause,
                )

    def _out_of_time(self, wait: float = 0.0) -> bool:
        """Whether the run's stop deadline passes within ``wait`` seconds."""
        deadline = self._deadline()
        return deadline is not None and self.clock() + wait >= deadline

    async def send(self, batch: Sequence[Event]) -> bool:
        """Write one batch with retries; count it as delivered or failed."""
        if await self.write_with_retries(batch):
            self.delivered += len(batch)
            return True
        self.failed += len(batch)
        return False

    async def write_with_retries(self, batch: Sequence[Event]) -> bool:
        """Write one batch, retrying transient errors; returns whether it was written.

        Retries keep order and never duplicate: the next batch waits until this one is
        written or given up. After ``breaker_after`` batches in a row are given up, the
        backend is cut off (the circuit breaker opens): later batches are counted as
        failed without calling it, so a dead backend costs nothing, until a probe after
        a growing pause gets through and the breaker closes again.
        """
        if self.disabled and self.clock() < self._reopen_at:
            return False  # the breaker is open: not called (one probe once it is time)
        attempt = 0
        while True:
            try:
                await self.backend.write(batch)
            except Exception as exc:
                attempt += 1
                delay = self._retry_after(attempt, exc)
                if delay is None:
                    break
                await self.sleep(delay)
            else:
                self._succeeded()
                return True
        self._gave_up()
        return False

    def record_error(self, what: str, exc: BaseException) -> None:
        """Count a failed backend call and log it (at 1, 10, 100, … failures)."""
        self.errors += 1
        self.last_error = f"{what}: {exc!r}"
        if _is_power_of_ten(self.errors):
            logger.warning(
                "steplog: backend %r failed to %s (%d failure%s so far); "
                "the other backends and the run go on",
                self.name,
                what,
                self.errors,
                "" if self.errors == 1 else "s",
                # A traceback once, unless the run file will heal this backend (an
                # outage is reported in one line when it starts and when it ends).
                exc_info=exc if self.errors == 1 and self.uses_breaker else None,
            )

    def stats(self, shared_drops: int) -> BackendStats:
        """Return this backend's counts; ``shared_drops`` are the buffer's drops."""
        return BackendStats(
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped + shared_drops,
            errors=self.errors,
            last_error=self.last_error,
            disabled=self.disabled,
        )


# -- SyncBackends, written by the writer thread itself ---------------------------------


class DirectRunner(Delivery):
    """Feeds one :class:`~steplog.backends.base.SyncBackend` from the writer thread,
    with retries: the synchronous twin of :meth:`Delivery.send`."""

    backend: SyncBackend

    def __init__(self, backend: SyncBackend, name: str, **kwargs: Any) -> None:
        super().__init__(backend, name, **kwargs)

    def send_now(self, batch: Sequence[Event]) -> None:
        """Write one batch, retrying transient errors (the same batch object again);
        count it. A batch given up is discarded (the backend keeps its whole events)."""
        if self.disabled:
            self.failed += len(batch)
            return
        attempt = 0
        while True:
            try:
                self.backend.write_sync(batch)
            except Exception as exc:
                attempt += 1
                delay = self._retry_after(attempt, exc)
                if delay is None:
                    break
                time.sleep(delay)
            else:
                self._succeeded()
                self.delivered += len(batch)
                return
        answer: object = 0
        try:
            answer = self.backend.discard_sync()
        except Exception as exc:
            self.record_error("discard a failed batch", exc)
        kept = answer if type(answer) is int else -1
        if not 0 <= kept <= len(batch):
            # A discard_sync that forgot its return value (None) or miscounted must
            # not take the writer thread down: the batch counts as not stored.
            self.record_error(
                "discard a failed batch",
                TypeError(
                    f"{type(self.backend).__name__}.discard_sync() must return how many "
                    f"of the batch's {len(batch)} events stay stored (an int from 0 to "
                    f"{len(batch)}), not {answer!r}"
                ),
            )
            kept = 0
        self.delivered += kept
        self.failed += len(batch) - kept
        self._gave_up()


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
