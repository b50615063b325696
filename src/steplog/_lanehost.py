"""Where lanes run: an event loop that drives a run's lanes, in a thread of the logging
process (:class:`ThreadLanes`) or in the delivery process (:mod:`steplog._delivery_process`).

:class:`LaneHost` is the loop's side: one task per lane pumps it whenever the run file
grew (a wake-up from the writer, or a look every ``poll`` seconds), probes a backend
that is down with a growing pause, answers flushes (every lane has read up to an offset
and has nothing unacknowledged, or is down), and at the end lets every lane deliver the
run end and close its backend, until a deadline; lanes still busy then are left to
finish in the background (the delivery process) or abandoned with their cursors where
they are (a thread), never losing anything: the file and the cursors say what is left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from ._lane import Lane
from ._threads import run_thread
from .errors import BackendOpenError, WorkerError
from .events import BackendStats, RunEnd, RunInfo, RunStats
from .runfile.snapshot import open_run

__all__ = ["CLOSE_GRACE_SECONDS", "POLL_SECONDS", "LaneGroups", "LaneHost", "ThreadLanes"]

logger = logging.getLogger("steplog")

#: How often a lane looks at the run file when nobody woke it (seconds).
POLL_SECONDS = 0.25
#: Seconds lanes get to close their backends after the deadline has passed.
CLOSE_GRACE_SECONDS = 1.0
#: Seconds a lane waits for another process that holds its cursor (the delivery
#: process of a killed segment, finishing it) before leaving the backend to it.
LOCK_WAIT_SECONDS = 10.0


class LaneHost:
    """Drives the lanes of one run in the running event loop (see the module docstring).

    Args:
        path: The run file.
        lanes: The lanes, prepared (cursor loaded).
        poll: Seconds between looks at the file when not woken.
    """

    def __init__(self, path: Path, lanes: Sequence[Lane], *, poll: float = POLL_SECONDS) -> None:
        self.path = path
        self.lanes = list(lanes)
        self.poll = poll
        #: The run is over: lanes deliver its end (or, without one, close as killed).
        self.final = False
        self.abandoned = False
        self._wake = anyio.Event()
        self._flushes: list[tuple[int, Callable[[], None]]] = []
        self._done: dict[str, anyio.Event] = {}
        self._scope: anyio.CancelScope | None = None
        self._over: anyio.Event | None = None
        #: Lanes left to another process that holds their cursor.
        self.left: list[str] = []

    # -- in the loop ------------------------------------------------------------

    async def open(
        self, info: RunInfo, *, segment: int, lock_wait: float = LOCK_WAIT_SECONDS
    ) -> dict[str, BaseException]:
        """Take each lane's cursor lock, load its cursor and open its backend; the open
        errors by lane name.

        A lane whose cursor another process still holds (the delivery process of the
        killed segment before, finishing it) is waited for up to ``lock_wait`` seconds,
        then left to that process, with a warning: this run does not feed that backend.
        """
        errors: dict[str, BaseException] = {}
        opened: list[Lane] = []
        body = open_run(self.path).body
        deadline = time.monotonic() + lock_wait
        for lane in list(self.lanes):
            while lane.lock is not None and not lane.lock.acquire():
                if time.monotonic() >= deadline:
                    logger.warning(
                        "steplog: run %s's delivery to %r is still held by another process "
                        "(%s); this process leaves that backend to it",
                        info.run_id,
                        lane.name,
                        lane.lock.path,
                    )
                    self.lanes.remove(lane)
                    self.left.append(lane.name)
                    break
                await anyio.sleep(0.05)
            else:
                try:
                    lane.prepare(info.run_id, body, segment=segment)
                    lane.resend_last_step()
                    await lane.open(info)
                except Exception as exc:
                    errors[lane.name] = exc
                    continue
                opened.append(lane)
        if errors:
            end = RunEnd(info.run_id, time.time(), "failed", {}, RunStats())
            for lane in opened:
                with anyio.move_on_after(5):
                    await lane.close(end)
        return errors

    async def serve(self) -> None:
        """Drive every lane until it has delivered the run end, or is abandoned; returns
        once the run is over (``finish``) and every lane is done (a lane that stopped
        early — its backend refused the run — leaves the loop running for the others,
        and for flushes)."""
        for lane in self.lanes:
            self._done[lane.name] = anyio.Event()
        self._over = anyio.Event()
        async with anyio.create_task_group() as group:
            self._scope = group.cancel_scope
            for lane in self.lanes:
                group.start_soon(self._drive, lane)
            await self._over.wait()

    async def _drive(self, lane: Lane) -> None:
        probes = 0
        try:
            while not self.abandoned:
                try:
                    progress = await lane.pump(final=self.final)
                except Exception as exc:  # the file vanished, a bug: stop this lane
                    lane.delivery.record_error("read the run file", exc)
                    logger.error("steplog: the lane of backend %r stopped", lane.name, exc_info=exc)
                    return
                finally:
                    self._check_flushes()
                if progress.ended or lane.closed or lane.given_up is not None:
                    return
                if progress.down:
                    await self._pause(lane.probe_delay(probes))
                    probes += 1
                    continue
                probes = 0
                await self._pause(self.poll)
        finally:
            if lane.lock is not None and (lane.closed or self.abandoned):
                lane.save_cursor()
                lane.lock.release()
            self._done[lane.name].set()
            self._check_flushes()

    async def _pause(self, seconds: float) -> None:
        """Sleep until woken, or ``seconds`` pass."""
        event = self._wake
        with anyio.move_on_after(seconds):
            await event.wait()

    def wake(self) -> None:
        """The file grew, or the run is over: every lane looks now (in the loop)."""
        event, self._wake = self._wake, anyio.Event()
        event.set()

    def add_flush(self, offset: int, done: Callable[[], None]) -> None:
        """Call ``done`` (in the loop) once every lane has read up to ``offset`` with
        nothing unacknowledged — or is down, has given up, or has ended."""
        self._flushes.append((offset, done))
        self.wake()
        self._check_flushes()

    def take_flushes(self) -> list[tuple[int, Callable[[], None]]]:
        flushes, self._flushes = self._flushes, []
        return flushes

    def _check_flushes(self) -> None:
        if not self._flushes:
            return
        left = []
        for offset, done in self._flushes:
            if all(self._reached(lane, offset) for lane in self.lanes):
                done()
            else:
                left.append((offset, done))
        self._flushes = left

    def _reached(self, lane: Lane, offset: int) -> bool:
        if lane.closed or lane.given_up is not None or lane.down_since is not None:
            return True
        if self._done.get(lane.name) is not None and self._done[lane.name].is_set():
            return True
        return lane.reached(offset)

    def finish(self) -> None:
        """The run is over: lanes deliver its end (in the loop)."""
        self.final = True
        self.wake()
        if self._over is not None:
            self._over.set()

    async def wait_done(self) -> None:
        for lane in self.lanes:
            await self._done[lane.name].wait()

    async def abandon(self, status: str = "unfinished") -> None:
        """Stop the lanes still busy: their cursors stay where they are (the next lane,
        a resume or ``steplog sync`` goes on from there); their backends are closed as
        ``status`` within the close grace."""
        self.abandoned = True
        for lane in self.lanes:
            lane.stopping = True
        self.wake()
        busy = [lane for lane in self.lanes if not lane.closed]
        with anyio.move_on_after(CLOSE_GRACE_SECONDS):
            for lane in busy:
                end = RunEnd(lane.run_id, time.time(), status, {}, RunStats())  # type: ignore[arg-type]
                await lane.close(end, delivered_end=False)
        for lane in self.lanes:
            if lane.lock is not None:
                lane.save_cursor()
                lane.lock.release()
        if self._over is not None:
            self._over.set()
        if self._scope is not None:
            self._scope.cancel()

    def busy(self) -> list[Lane]:
        """The lanes still delivering (their task has not ended)."""
        return [lane for lane in self.lanes if not self._done[lane.name].is_set()]

    def all_busy_down(self) -> bool:
        """Whether every lane still delivering has its backend down (an outage)."""
        busy = [lane for lane in self.lanes if not self._done[lane.name].is_set()]
        return all(lane.down_since is not None for lane in busy)

    def stats(self, written: int, shared_drops: int) -> dict[str, BackendStats]:
        out = {lane.name: lane.stats(written, shared_drops) for lane in self.lanes}
        for name in self.left:  # another process holds these lanes' cursors
            out[name] = BackendStats(
                dropped=shared_drops,
                missing=written,
                last_error="delivered by another process (its cursor was held)",
            )
        return out

    def pending(self) -> dict[str, int]:
        """Points each lane has made and not had acknowledged (a rough backlog)."""
        return {lane.name: lane.pending() for lane in self.lanes if not lane.closed}


class ThreadLanes:
    """Lanes in a daemon thread of the logging process (``delivery="thread"``, and the
    backends that cannot move to the delivery process).

    Called from the writer thread; every call returns within its deadline whatever a
    backend does (a backend that blocks the loop is left behind).
    """

    def __init__(self, path: Path, lanes: Sequence[Lane], *, poll: float = POLL_SECONDS) -> None:
        self.host = LaneHost(path, lanes, poll=poll)
        self.names = [lane.name for lane in lanes]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._opened: concurrent.futures.Future[dict[str, BaseException]] = (
            concurrent.futures.Future()
        )
        self._served: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        """Start the thread and open every backend (after its cursor lock).

        Raises:
            BackendOpenError: A backend could not open the run.
        """
        self._info = info
        self._thread = run_thread(self._thread_main, name=f"steplog-lanes-{info.run_id}")
        self._thread.start()
        errors = self._opened.result()
        if errors:
            name, exc = next(iter(errors.items()))
            lane = next(lane for lane in self.host.lanes if lane.name == name)
            error = BackendOpenError(
                f"backend {name!r} ({lane.backend!r}) could not open run {info.run_id!r}: {exc}"
            )
            error.__cause__ = exc
            raise error

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main, backend="asyncio")
        except BaseException as exc:  # never die silently
            logger.error("steplog: the lanes' thread died", exc_info=exc)
            if not self._opened.done():
                self._opened.set_exception(WorkerError(f"the steplog lanes died: {exc!r}"))
        finally:
            if not self._served.done():
                self._served.set_result(None)
            for _, done in self.host.take_flushes():  # nobody will answer them now
                done()

    async def _main(self) -> None:
        assert self._info is not None
        self._loop = asyncio.get_running_loop()
        resumed = self._info.resumed
        errors = await self.host.open(self._info, segment=resumed.segment if resumed else 0)
        self._opened.set_result(errors)
        if errors:
            return
        await self.host.serve()

    def _call(self, callback: Callable[..., Any], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def wake(self) -> None:
        """The run file grew (cheap: once per batch)."""
        self._call(self.host.wake)

    def flush(self, offset: int) -> concurrent.futures.Future[None]:
        """A future done once every lane has what the file holds up to ``offset``
        (or is down, has given up, or has ended)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        if self._served.done() or not self._call(self.host.add_flush, offset, resolve):
            resolve()
        return done

    def finish(self, deadline: float | None, *, down_grace: float) -> None:
        """Let the lanes deliver the run end until ``deadline`` (``time.monotonic()``;
        ``None``: as long as they make progress); abandon those still busy then (their
        cursors say where the next lane, a resume or ``steplog sync`` goes on). Lanes
        whose backend is down are waited for ``down_grace`` seconds at most."""
        if not self._call(self.host.finish):
            return
        started = time.monotonic()
        while True:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self._served.result(0.05)
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if now - started >= down_grace and self.host.all_busy_down():
                break
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self.host.abandon(), loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self._served.result(CLOSE_GRACE_SECONDS + 1.0)
            return
        # Still busy: a backend stuck in a call that cannot be cancelled, or blocking
        # the loop. It is left behind (a daemon thread); its cursor says where it was.
        for lane in self.host.busy():
            what = "close" if lane.closed else "write"
            lane.delivery.record_error(
                what, TimeoutError(f"{what}() did not return by finish()'s deadline")
            )

    def stats(self, written: int, shared_drops: int) -> dict[str, BackendStats]:
        return self.host.stats(written, shared_drops)

    def pending(self) -> dict[str, int]:
        return self.host.pending()

    def forget_after_fork(self) -> None:
        for lane in self.host.lanes:
            if lane.lock is not None:
                lane.lock.forget_after_fork()

    def kill(self) -> None:
        """Stop the lanes at once (a run that failed to start)."""
        self.finish(time.monotonic(), down_grace=0.0)


class LaneGroups:
    """A run's lanes, wherever they run: the delivery process and/or a thread of this
    process (the backends that cannot move), behind the one interface the writer uses."""

    def __init__(self, groups: Sequence[Any]) -> None:
        self.groups = list(groups)

    def wake(self) -> None:
        for group in self.groups:
            group.wake()

    def flush(self, offset: int) -> concurrent.futures.Future[None]:
        futures = [group.flush(offset) for group in self.groups]
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        left = [len(futures)]
        lock = threading.Lock()

        def one(_: concurrent.futures.Future[None]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last and not done.done():
                done.set_result(None)

        if not futures:
            done.set_result(None)
        for future in futures:
            future.add_done_callback(one)
        return done

    def stats(self, written: int, shared_drops: int) -> dict[str, BackendStats]:
        out: dict[str, BackendStats] = {}
        for group in self.groups:
            out.update(group.stats(written, shared_drops))
        return out

    def finish(
        self, deadline: float | None, *, down_grace: float, written: int, shared_drops: int
    ) -> dict[str, BackendStats]:
        """Let every group deliver the run end (at once); their final counts."""
        out: dict[str, BackendStats] = {}
        threads = [g for g in self.groups if isinstance(g, ThreadLanes)]
        others = [g for g in self.groups if not isinstance(g, ThreadLanes)]
        for group in others:  # asks the delivery process first: it works meanwhile
            group.send_finish(deadline, down_grace=down_grace, written=written,
                              shared_drops=shared_drops)  # fmt: skip
        for group in threads:
            group.finish(deadline, down_grace=down_grace)
            out.update(group.stats(written, shared_drops))
        for group in others:
            out.update(group.wait_finished())
        return out

    def pending(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for group in self.groups:
            out.update(group.pending())
        return out

    def forget_after_fork(self) -> None:
        for group in self.groups:
            group.forget_after_fork()
