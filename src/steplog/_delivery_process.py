"""The delivery process: the lanes of a run's remote backends, outside the logging process.

A tracker with remote backends starts one (``Tracker(delivery="process")``, the
default): the backends move here as their configuration (pickled), and their lanes
(:mod:`steplog._lane`) read the run file from their cursors. The logging process then
pays nothing per event for them — no decoding, no HTTP, no GIL shared with an SDK — and
what it logged reaches them even when it is killed: this process notices its parent is
gone (end-of-file on the control socket), waits for the run file's writer to be done
(the writer process of ``durability="process"``, if any), delivers what the file holds,
closes every remote run with the status the file ends with (``killed`` when it has no
run end) and exits — within ``grace`` seconds; the cursors say how far each backend got.

Protocol, over one ``socketpair`` (the child holds the only other end, so end-of-file
means the parent is gone): messages are a 4-byte length and a pickle; a length of 0 is
a wake-up (the file grew).

parent → child: the start payload; ``("flush", id, offset)``; ``("stats", id, written,
drops)``; ``("finish", id, deadline_seconds, down_grace, written, drops)``.

child → parent: ``("opened", errors, unmovable, states)``; ``("flushed", id)``;
``("stats", id, stats)``; ``("finished", id, stats, states, done)``.

A backend whose pickle cannot be loaded here (a class defined in the user's
``__main__``) is reported ``unmovable``: the tracker runs its lane in a thread instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._threads import run_thread

__all__ = ["ProcessLanes", "main", "movable"]

logger = logging.getLogger("steplog")

_LENGTH = struct.Struct("<I")
#: Seconds the parent waits for the delivery process to start and open its backends.
START_TIMEOUT = 120.0
#: How long the delivery process goes on after its parent is gone, or after the run's
#: deadline passed, before it leaves the rest to the next resume or ``steplog sync``.
BACKGROUND_GRACE = 60.0


def movable(backend: Any) -> bytes | None:
    """``backend`` pickled (its configuration), or ``None`` if it cannot move: it says
    so (``Backend.movable``), or it does not pickle."""
    if not getattr(backend, "movable", True):
        return None
    try:
        return pickle.dumps(backend)
    except Exception:
        return None


_reaped: list[subprocess.Popen[bytes]] = []
_reaper_lock = threading.Lock()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a delivery process that goes on in the background (in a daemon thread,
    so that it is reaped, and never keeps this process from exiting)."""

    def reap() -> None:
        proc.wait()
        with _reaper_lock:
            _reaped.remove(proc)

    with _reaper_lock:
        _reaped.append(proc)
    threading.Thread(target=reap, name="steplog-delivery-reaper", daemon=True).start()


def public_state(backend: Any) -> dict[str, Any]:
    """The public attributes of ``backend`` that pickle (mirrored back to the parent's
    copy: a TensorBoard backend's ``path``, an MLflow backend's ``run_id``, …)."""
    out: dict[str, Any] = {}
    for key, value in vars(backend).items():
        if key.startswith("_"):
            continue
        try:
            pickle.dumps(value)
        except Exception:
            continue
        out[key] = value
    return out


def _send(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message)
    sock.sendall(_LENGTH.pack(len(data)) + data)


class _Reader:
    """Reads length-prefixed messages from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; the complete messages (``None`` for a wake-up)."""
        self.buffer += data
        out: list[Any] = []
        while len(self.buffer) >= 4:
            (size,) = _LENGTH.unpack_from(self.buffer)
            if len(self.buffer) < 4 + size:
                break
            body = self.buffer[4 : 4 + size]
            self.buffer = self.buffer[4 + size :]
            out.append(pickle.loads(body) if size else None)
        return out


# -- the parent's side -------------------------------------------------------------


class ProcessLanes:
    """The logging process's handle on its delivery process (called from the writer
    thread only; a reader thread resolves the answers).

    Args:
        path: The run file.
        lanes: ``(name, pickled backend, cursor file)`` per lane.
        targets: The backends (a Sampled one's inner backend) by lane name, whose
            public attributes are mirrored back after open and at the end.
        batch_size: Most points per write.
        retry: The retry policy (pickled along).
        ring_pid: The writer process of ``durability="process"``: after a kill, the
            run file is final once it is gone.
    """

    def __init__(
        self,
        path: Path,
        lanes: Sequence[tuple[str, bytes, Path]],
        *,
        batch_size: int,
        retry: Any,
        ring_pid: int | None = None,
        targets: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        #: The backends (inner ones of Sampled) whose public state is mirrored back.
        self.targets = dict(targets or {})
        self._wait: float | None = None
        self._finish_args = (0, 0)
        self._finishing: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.specs = list(lanes)
        self.names = [name for name, _, _ in lanes]
        self.batch_size = batch_size
        self.retry = retry
        self.ring_pid = ring_pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self._futures: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = iter(range(1, 2**62))
        self._lock = threading.Lock()
        self._opened: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._reader: threading.Thread | None = None
        self._last_stats: dict[str, Any] = {}
        self._closed = False

    def start(self, info: Any) -> tuple[dict[str, BaseException], list[str], dict[str, Any]]:
        """Start the process and open the backends there.

        Returns:
            The open errors by lane name, the lanes whose backend could not be loaded
            there (run them in a thread), and each opened backend's public state.
        """
        parent, child = socket.socketpair()
        with child:
            fd = child.fileno()
            os.set_inheritable(fd, True)
            code = (
                "import sys; sys.path[:0] = sys.argv[2:]; "
                "from steplog._delivery_process import main; main(int(sys.argv[1]))"
            )
            paths = [p for p in sys.path if p]
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(fd), *paths],
                pass_fds=[fd],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to the job does not reach it
            )
        self.sock = parent
        resumed = getattr(info, "resumed", None)
        _send(
            parent,
            {
                "path": str(self.path),
                "lanes": [(name, data, str(cursor)) for name, data, cursor in self.specs],
                "info": info,
                "segment": resumed.segment if resumed is not None else 0,
                "batch_size": self.batch_size,
                "retry": self.retry,
                "ring_pid": self.ring_pid,
                "parent": os.getpid(),
            },
        )
        self._reader = run_thread(self._read_answers, name="steplog-delivery-answers")
        self._reader.start()
        try:
            errors, unmovable, states = self._opened.result(START_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.kill()
            raise RuntimeError(
                f"the steplog delivery process did not open its backends within {START_TIMEOUT:g} s"
            ) from None
        return errors, unmovable, states

    def _read_answers(self) -> None:
        sock = self.sock
        assert sock is not None
        reader = _Reader(sock)
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                for message in reader.feed(data):
                    self._answer(message)
        finally:
            error = RuntimeError("the steplog delivery process has exited")
            if not self._opened.done():
                self._opened.set_exception(error)
            with self._lock:
                futures, self._futures = self._futures, {}
            for future in futures.values():
                if not future.done():
                    future.set_exception(error)

    def _answer(self, message: Any) -> None:
        kind = message[0]
        if kind == "opened":
            self._opened.set_result(message[1:])
            return
        with self._lock:
            future = self._futures.pop(message[1], None)
        if future is not None and not future.done():
            future.set_result(message[2:])

    def _request(self, *message: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        sock = self.sock
        if sock is None or self._closed:
            future.set_exception(RuntimeError("the steplog delivery process is not running"))
            return future
        ident = next(self._ids)
        with self._lock:
            self._futures[ident] = future
        try:
            _send(sock, (message[0], ident, *message[1:]))
        except OSError as exc:
            with self._lock:
                self._futures.pop(ident, None)
            future.set_exception(RuntimeError(f"the steplog delivery process is gone: {exc}"))
        return future

    def wake(self) -> None:
        """The run file grew (one small message; never blocks for long)."""
        sock = self.sock
        if sock is None or self._closed:
            return
        with contextlib.suppress(OSError):
            sock.sendall(_LENGTH.pack(0))

    def flush(self, offset: int) -> concurrent.futures.Future[None]:
        """A future done once every lane has the file up to ``offset`` (or is down)."""
        answer = self._request("flush", offset)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def resolve(_: concurrent.futures.Future[Any]) -> None:
            if not done.done():
                done.set_result(None)  # a delivery process that died is not waited for

        answer.add_done_callback(resolve)
        return done

    def stats(self, written: int, shared_drops: int) -> dict[str, Any]:
        """The lanes' counts now (the last ones known if the process does not answer)."""
        try:
            (stats,) = self._request("stats", written, shared_drops).result(5.0)
        except Exception:
            return self._fallback(written, shared_drops)
        self._last_stats = stats
        return dict(stats)

    def _fallback(self, written: int, shared_drops: int) -> dict[str, Any]:
        from .events import BackendStats

        out = dict(self._last_stats)
        for name in self.names:
            out.setdefault(
                name,
                BackendStats(
                    dropped=shared_drops,
                    missing=written,
                    last_error="the delivery process did not answer",
                ),
            )
        return out

    def send_finish(
        self, deadline: float | None, *, down_grace: float, written: int, shared_drops: int
    ) -> None:
        """Ask the lanes to deliver the run end until ``deadline`` (see
        :meth:`wait_finished`); lanes still busy then go on in the delivery process, in
        the background, for :data:`BACKGROUND_GRACE` seconds at most."""
        self._wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._finish_args = (written, shared_drops)
        self._finishing = self._request("finish", self._wait, down_grace, written, shared_drops)

    def wait_finished(self) -> dict[str, Any]:
        """The lanes' final counts (and their backends' public states, applied to this
        process's copies); the delivery process is let go of."""
        wait = self._wait
        written, shared_drops = self._finish_args
        try:
            stats, states, done = self._finishing.result(None if wait is None else wait + 5.0)
        except Exception:
            stats, states, done = self._fallback(written, shared_drops), {}, False
        self._last_stats = stats
        self.apply_states(states)
        self.release(wait_for_exit=done)
        return dict(stats)

    def apply_states(self, states: dict[str, Any]) -> None:
        """Mirror the delivery process's backends' public attributes onto the copies the
        user holds (``TensorBoardBackend.path``, ``MlflowBackend.run_id``, …)."""
        for name, state in states.items():
            target = self.targets.get(name)
            if target is not None:
                with contextlib.suppress(Exception):
                    target.__dict__.update(state)

    def release(self, *, wait_for_exit: bool) -> None:
        """Let go of the delivery process (it exits once its lanes are done)."""
        self._closed = True
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            if wait_for_exit and self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5.0)
            sock.close()
        if self.proc is not None and self.proc.poll() is None:
            _reap_later(self.proc)  # still finishing in the background

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.release(wait_for_exit=False)

    def pending(self) -> dict[str, int]:
        return {}

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copy of the control socket, so the
        delivery process still sees end-of-file when the real parent dies."""
        self._closed = True
        self._lock = threading.Lock()
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


# -- the child's side ----------------------------------------------------------------


def main(fd: int) -> None:
    """The delivery process (``python -c ... main(fd)``)."""
    import anyio

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    reader = _Reader(sock)
    payload: Any = None
    while payload is None:
        data = sock.recv(65536)
        if not data:
            return  # the parent died before it said anything
        messages = reader.feed(data)
        if messages:
            payload = messages[0]
            pending = messages[1:]
    anyio.run(_serve, sock, reader, payload, pending, backend="asyncio")


async def _serve(sock: socket.socket, reader: _Reader, payload: Any, pending: list[Any]) -> None:
    import anyio

    from ._lane import Lane
    from ._lanehost import LaneHost

    path = Path(payload["path"])
    lanes: list[Lane] = []
    unmovable: list[str] = []
    for name, data, cursor in payload["lanes"]:
        try:
            backend = pickle.loads(data)
        except Exception:
            unmovable.append(name)
            continue
        lanes.append(
            Lane(
                path,
                backend,
                cursor=Path(cursor),
                name=name,
                batch_size=payload["batch_size"],
                retry=payload["retry"],
            )
        )
    host = LaneHost(path, lanes)
    errors = await host.open(payload["info"], segment=payload["segment"])
    await anyio.to_thread.run_sync(_send, sock, ("opened", errors, unmovable, _states(host.lanes)))
    if errors:
        return
    state = {"parent_gone": False, "finish": None}
    async with anyio.create_task_group() as group:
        group.start_soon(host.serve)
        group.start_soon(_control, sock, reader, host, pending, state, payload, group)


def _states(lanes: Sequence[Any]) -> dict[str, Any]:
    return {lane.name: public_state(lane.target) for lane in lanes}


async def _control(
    sock: socket.socket,
    reader: _Reader,
    host: Any,
    pending: list[Any],
    state: dict[str, Any],
    payload: Any,
    group: Any,
) -> None:
    """Answer the parent's requests; after end-of-file (the parent is gone) or once the
    run was finished, see the lanes through, within the grace, and leave."""
    import anyio

    sock.setblocking(False)
    messages = list(pending)
    finishing: tuple[Any, ...] | None = None
    while True:
        for message in messages:
            if message is None:
                host.wake()
            elif message[0] == "flush":
                ident = message[1]
                host.add_flush(message[2], lambda ident=ident: _reply(sock, ("flushed", ident)))
            elif message[0] == "stats":
                _reply(sock, ("stats", message[1], host.stats(message[2], message[3])))
            elif message[0] == "finish":
                finishing = message
                group.start_soon(_finish, sock, host, message)
        messages = []
        try:
            await anyio.wait_socket_readable(sock)
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            break
        messages = reader.feed(data)
    # The parent is gone (killed), or let go of us after finish(). Our stdout and stderr
    # were its: a shell pipeline or a program capturing its output would wait for us to
    # let go of them. What is said from now on goes to a log file next to the run.
    _detach_output(Path(payload["path"]))
    if finishing is None:
        await _orphaned(host, payload)
    else:
        with anyio.move_on_after(BACKGROUND_GRACE):
            await host.wait_done()
        await host.abandon()


async def _finish(sock: socket.socket, host: Any, message: tuple[Any, ...]) -> None:
    import anyio

    _, ident, wait, down_grace, written, drops = message
    host.finish()
    started = time.monotonic()
    while True:
        if all(host._done[lane.name].is_set() for lane in host.lanes):
            break
        elapsed = time.monotonic() - started
        if wait is not None and elapsed >= wait:
            break
        if elapsed >= down_grace and host.all_busy_down():
            break
        await anyio.sleep(0.05)
    done = all(host._done[lane.name].is_set() for lane in host.lanes)
    _reply(sock, ("finished", ident, host.stats(written, drops), _states(host.lanes), done))


async def _orphaned(host: Any, payload: Any) -> None:
    """The logging process was killed: once the file's writer is done, deliver what the
    file holds and close every remote run with the status it ends with."""
    import anyio

    ring_pid = payload.get("ring_pid")
    deadline = time.monotonic() + BACKGROUND_GRACE
    while ring_pid and _alive(ring_pid) and time.monotonic() < deadline:
        await anyio.sleep(0.05)  # the writer process drains the ring and ends the run
    host.finish()
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        await host.wait_done()
    await host.abandon("killed")


def _detach_output(run: Path) -> None:
    """Point stdout and stderr at ``<run>.delivery.log`` (or nowhere)."""
    try:
        fd = os.open(f"{run}.delivery.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reply(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message)
    frame = _LENGTH.pack(len(data)) + data
    view = memoryview(frame)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            select.select([], [sock], [], 1.0)
        except OSError:
            return  # the parent is gone
