"""Process-level hooks: interpreter exit, SIGTERM and fork.

Trackers with an active run register here; the hooks end those runs when the process
is about to go away (``"unfinished"`` at exit, ``"terminated"`` on SIGTERM) and reset
them in a forked child, which inherits the parent's memory but not its worker thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any

__all__ = ["active_runs", "install_exit_hook", "install_sigterm_handler"]

logger = logging.getLogger("steplog")


_trackers: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_exit_hook_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


def active_runs() -> weakref.WeakSet[Any]:
    """The trackers the hooks look after (they add themselves when constructed)."""
    return _trackers


def _end_all(status: str, reason: str) -> None:
    for tracker in list(_trackers):
        try:
            tracker._end_abruptly(status, reason)
        except Exception:  # one tracker's failure must not stop the others
            logger.exception("steplog: ending a run (%s) failed", status)


# -- interpreter exit -------------------------------------------------------------


def install_exit_hook() -> None:
    """Finish active runs when the interpreter exits, before thread pools shut down.

    ``atexit`` is too late: by then ``concurrent.futures`` has shut down its thread
    pools (which aiofiles and ``anyio.to_thread`` use) and refuses new work. Hooks
    registered with ``threading._register_atexit`` run earlier, in reverse order of
    registration; importing ``concurrent.futures.thread`` first guarantees that its
    own hook is registered before ours and so runs after it.
    """
    global _exit_hook_installed
    with _lock:
        if _exit_hook_installed:
            return
        import concurrent.futures.thread  # noqa: F401

        register = getattr(threading, "_register_atexit", None)
        try:
            if register is None:
                raise RuntimeError("threading._register_atexit is not available")
            register(_end_all, "unfinished", "was not finished")
        except RuntimeError:
            import atexit

            atexit.register(_end_all, "unfinished", "was not finished")
        _exit_hook_installed = True


# -- SIGTERM ----------------------------------------------------------------------


def install_sigterm_handler() -> bool:
    """Finish active runs as ``"terminated"`` on SIGTERM, then behave as before.

    Installed once per process, and only where that is safe: from the main thread, and
    only over the default action or a Python handler (which is then called after the
    runs are finished). A SIGTERM that is ignored (``SIG_IGN``) stays ignored, and a
    handler installed later by the user replaces this one, as it should.

    Returns:
        Whether the handler is (now) installed.
    """
    global _sigterm_installed, _previous_sigterm
    with _lock:
        if _sigterm_installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            logger.debug("steplog: not in the main thread; SIGTERM handler not installed")
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_IGN or previous is None:
            return False  # ignored, or set from C: leave it alone
        _previous_sigterm = previous
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True
        return True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _end_all("terminated", "received SIGTERM")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    # The default action: end the process, killed by the signal as it would have been.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


# -- fork -------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    # The child has copies of the parent's trackers but no worker thread: forget the
    # parent's runs so the child never writes into the parent's files.
    for tracker in list(_trackers):
        tracker._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
