"""The writer process's control socket and acknowledgement pipe (this process's side).

:class:`steplog._ring.ProcessWriter` talks to its writer process (``_ringchild.py``)
over two channels, held here by a :class:`ControlChannel`:

- the control socket (here → child), one end of a ``socketpair``: ``W`` wake, ``F``
  flush request, ``C`` + length + end line to close. The child holds the only other
  end and this process the only copy of this one, so end-of-file tells the child its
  parent is gone. (A socket rather than a pipe: ``send(MSG_NOSIGNAL)`` to a dead child
  fails with ``EPIPE`` instead of raising SIGPIPE, which kills programs that restored
  its default.)
- the ack pipe (child → here): ``R`` once attached, ``A`` per flush request served;
  end-of-file tells this process that the child is gone. A flush decides by reading
  the ring's ``head``, so a lost or late ``A`` only costs a re-check.

Standard library only, like ``_ring.py``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["ControlChannel"]

_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# How often a waiting flush re-reads ``head`` when no acknowledgement comes (one can
# be lost when the control socket is full of wake bytes).
_RECHECK_SECONDS = 0.05
# How long a message waits for the control socket's lock before it goes without it.
_CTL_LOCK_WAIT = 0.25


class ControlChannel:
    """This side of the control socket (:attr:`ctl`) and of the ack pipe (:attr:`ack`).

    ``wake()``, ``send_all()`` and ``flush()`` are safe to call from several threads.

    Attributes:
        ctl: This end of the control socket (non-blocking), once created.
        ack: The read end of the ack pipe, once created (-1 before and after).
        broken: A send failed: the child's end is closed, so it is exiting.
        gone: End-of-file on the ack pipe: the child is exiting.
    """

    def __init__(self) -> None:
        # Held while sending on or closing the control socket: a message sent in parts
        # must not have a wake-up byte in its middle, and a descriptor must not be
        # written after it is closed (its number may be reused by then).
        self._ctl_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.ctl: socket.socket | None = None
        self.ack = -1
        self.broken = False
        self.gone = False

    @contextlib.contextmanager
    def _control(self) -> Iterator[None]:
        """Hold the control socket's lock to send a message — unless a thread is stuck
        holding it: a signal handler (SIGTERM: end the run now) that interrupted that
        thread inside ``wake()`` waits for this very message. ``wake()`` holds the lock
        only to send one byte, so after a short wait the message goes without it; the
        interrupted thread's byte can only follow the whole message (it is frozen), and
        an extra wake-up is harmless."""
        held = self._ctl_lock.acquire(timeout=_CTL_LOCK_WAIT)
        try:
            yield
        finally:
            if held:
                self._ctl_lock.release()

    def wake(self) -> None:
        """Ask the child to write now (one byte on the control socket; never blocks)."""
        # Busy: another thread is sending a message, which wakes the child as well.
        if not self._ctl_lock.acquire(blocking=False):
            return
        try:
            if self.ctl is not None:
                # Full: the child has wake-ups queued already. Broken: alive() says so.
                with contextlib.suppress(OSError):
                    self.ctl.send(b"W", _NOSIGNAL)
        finally:
            self._ctl_lock.release()

    def send_all(self, data: bytes, deadline: float | None, exited: Callable[[], bool]) -> bool:
        """Send a whole control message before ``deadline`` (False: out of time, or the
        child is gone — ``exited()`` says whether it was reaped)."""
        view = memoryview(data)
        poller = select.poll()
        with self._control():
            ctl = self.ctl
            if ctl is None:
                return False
            poller.register(ctl, select.POLLOUT)
            while view:
                try:
                    view = view[ctl.send(view, _NOSIGNAL) :]
                    continue
                except BlockingIOError:
                    pass
                except OSError:  # the child is gone
                    self.broken = True
                    return False
                wait = _RECHECK_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return False
                poller.poll(wait * 1000)
                if exited():
                    return False
        return True

    def flush(
        self, done: Callable[[], bool], timeout: float | None, exited: Callable[[], bool]
    ) -> bool:
        """Ask the child to write what it was given and wait until ``done()`` (the
        ring's ``head`` reached the caller's target); False on timeout, or when the
        child is gone first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # One request in flight at a time: an acknowledgement then answers the thread
        # that is waiting, and a late one only makes the next waiter re-check ``head``.
        if not self._flush_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            return False
        try:
            if done():
                return True
            ack = self.ack
            if ack < 0:
                return False
            with self._control():
                if self.ctl is None:
                    return False
                try:
                    self.ctl.send(b"F", _NOSIGNAL)
                except BlockingIOError:
                    pass  # full of wake-ups: the child drains soon anyway
                except OSError:
                    return False
            poller = select.poll()
            poller.register(ack, select.POLLIN)
            while not done():
                wait = _RECHECK_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return False
                if poller.poll(wait * 1000):
                    try:
                        acks = os.read(ack, 4096)
                    except OSError:
                        acks = b""
                    if not acks:  # the child is gone (or going: it closed its end)
                        self.gone = True
                        return done()
                elif exited():
                    # (End-of-file should have said so, unless a fork of this process
                    # holds a copy of the child's end of the ack pipe.)
                    return done()
            return True
        finally:
            self._flush_lock.release()

    def close(self) -> None:
        """Close both (the child is reaped already)."""
        with self._control():
            if self.ctl is not None:
                self.ctl.close()
                self.ctl = None
        # A flush() still waiting has seen end-of-file (the child is gone) and leaves.
        with self._flush_lock:
            if self.ack >= 0:
                os.close(self.ack)
            self.ack = -1

    def abandon(self) -> None:
        """Close both at once (a failed start: no other thread uses them yet)."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.ack >= 0:
            os.close(self.ack)
            self.ack = -1

    def forget_after_fork(self) -> None:
        """Drop this process's copies (in a forked child, which has one thread: a lock
        held by a thread that no longer exists would never be released)."""
        self._ctl_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.ack >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ack)
            self.ack = -1
