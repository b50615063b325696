"""Process-level hooks: interpreter exit, SIGTERM, uncaught exceptions and fork.

Runs register here (:func:`register`) while they are active, each as an object that knows
how to end itself (:class:`Registered`); the hooks end those runs when the process is about
to go away (``"unfinished"`` at exit, ``"failed"`` after an uncaught exception,
``"terminated"`` on SIGTERM) and drop them in a forked child, which inherits the
parent's memory but not its writer thread. The hooks only call those methods: they
never see a tracker. Runs whose end is under way (:func:`track_ending`) are waited for
at exit and hurried on SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Protocol

__all__ = [
    "Registered",
    "crash_status",
    "install_exit_hook",
    "install_sigterm_handler",
    "register",
    "track_ending",
    "unregister",
]

logger = logging.getLogger("steplog")


class Registered(Protocol):
    """An active run, as the hooks see it (see :func:`register`)."""

    #: The thread that started the run.
    owner: int
    #: The exception type that thread died of, if any (set by the thread excepthook:
    #: such a run ends "failed", not "unfinished").
    crash: type[BaseException] | None

    def end_abruptly(self, status: str, reason: str) -> None:
        """End the run now, bounded by its shutdown timeout (exit, SIGTERM); report
        ``reason`` on stderr."""

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's run (its writer did not come along)."""


# Active runs, from their start until their end is asked for (then :func:`track_ending`
# looks after them). Added to and discarded from without a lock: a garbage-collected
# tracker unregisters its run from whatever thread the collector runs on.
_registered: set[Registered] = set()
_lock = threading.Lock()
_exit_hook_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


class Ending:
    """A run whose end is under way: ``finish()`` waiting on it, or a run left behind
    by a tracker that was garbage-collected. Kept here (strongly) until its run end is
    written, so that exit waits for it and SIGTERM can bring it forward."""

    __slots__ = ("future", "timeout", "writer")

    def __init__(self, writer: Any, future: concurrent.futures.Future[Any], timeout: float):
        self.writer = writer
        self.future = future
        self.timeout = timeout


# Added to and discarded from without a lock, as _registered.
_ending: set[Ending] = set()


def register(run: Registered) -> None:
    """Look after an active run at exit, on SIGTERM, after fork and when the thread
    that started it dies of an exception (until :func:`unregister`)."""
    _registered.add(run)


def unregister(run: Registered) -> None:
    """Stop looking after ``run`` (its end is asked for, or it was dropped)."""
    _registered.discard(run)


def track_ending(writer: Any, future: concurrent.futures.Future[Any], timeout: float) -> None:
    """Look after a run whose end is under way until its ``future`` is done."""
    ending = Ending(writer, future, timeout)
    _ending.add(ending)
    future.add_done_callback(lambda _: _ending.discard(ending))


def _end_all(status: str, reason: str) -> None:
    for run in list(_registered):
        try:
            run.end_abruptly(*_exit_status(run, status, reason))
        except Exception:  # one run's failure must not stop the others
            logger.exception("steplog: ending a run (%s) failed", status)
    _wait_for_endings(None if status == "unfinished" else status)


def _wait_for_endings(hurry: str | None) -> None:
    """Wait (bounded) for runs already ending; with ``hurry``, end them now as that."""
    endings = list(_ending)
    if hurry is not None:
        for ending in endings:
            ending.writer.hurry(hurry)
    for ending in endings:
        try:
            ending.future.result(2 * ending.timeout + 1)
        except concurrent.futures.TimeoutError:
            print("steplog: a run could not be closed in time", file=sys.stderr)
        except Exception:  # reported by whoever waits on it, or logged by the writer
            pass


# -- uncaught exceptions ----------------------------------------------------------

#: The uncaught exception the interpreter is exiting through (its type), if any.
_crash: type[BaseException] | None = None


def _exit_status(run: Registered, status: str, reason: str) -> tuple[str, str]:
    """A run left active at exit is "unfinished", unless the program died of an
    uncaught exception: of the main thread (every run), or of the thread that started
    the run. Then it is "failed" ("interrupted" for KeyboardInterrupt)."""
    if status != "unfinished":
        return status, reason
    crash = _crash or run.crash
    if crash is None:
        return status, reason
    status = crash_status(crash)
    if status == "interrupted":
        return status, "was interrupted (KeyboardInterrupt)"
    return status, f"was not finished: the program raised {crash.__name__}"


def crash_status(crash: type[BaseException] | None) -> str:
    """The status of a run whose program (or thread) died of ``crash``, if any."""
    if crash is None:
        return "unfinished"
    return "interrupted" if issubclass(crash, KeyboardInterrupt) else "failed"


def _install_excepthooks() -> None:
    """Note uncaught exceptions (then call the hooks that were there before)."""
    previous_hook = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        global _crash
        _crash = exc_type
        previous_hook(exc_type, exc, tb)

    previous_thread_hook = threading.excepthook

    def thread_excepthook(args: Any) -> None:
        thread = args.thread
        if thread is not None and args.exc_type is not SystemExit:
            for run in list(_registered):
                if run.owner == thread.ident:
                    run.crash = args.exc_type
        previous_thread_hook(args)

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


# -- interpreter exit -------------------------------------------------------------


def install_exit_hook() -> None:
    """Finish active runs when the interpreter exits, before thread pools shut down.

    ``atexit`` is too late for the common case: by then ``concurrent.futures`` has shut
    down its thread pools and refuses new work. Hooks registered with
    ``threading._register_atexit`` run earlier, in reverse order of registration;
    importing ``concurrent.futures.thread`` first guarantees that its own hook is
    registered before ours and so runs after it. Runs in threads that Python still
    waits for stay usable: see :func:`_at_exit`.
    """
    global _exit_hook_installed
    with _lock:
        if _exit_hook_installed:
            return
        register = getattr(threading, "_register_atexit", None)
        try:
            import concurrent.futures.thread  # noqa: F401  (registers its hook)

            if register is None:
                raise RuntimeError("threading._register_atexit is not available")
            register(_at_exit)
        except RuntimeError:
            # The interpreter is shutting down already (a thread Python waits for
            # started this run): atexit runs after those threads have ended.
            import atexit

            atexit.register(_end_all, "unfinished", "was not finished")
        _install_excepthooks()
        _exit_hook_installed = True


def _at_exit() -> None:
    """Python is about to wait for its non-daemon threads, then exit.

    With none left (thread pools aside: they shut down after this), end the runs now.
    Otherwise those threads may still log, init and finish: their runs end only once
    Python has waited for them, from an ``atexit`` hook (which runs after that).
    """
    if _threads_python_waits_for():
        import atexit

        atexit.register(_end_all, "unfinished", "was not finished")
        return
    _end_all("unfinished", "was not finished")


def _threads_python_waits_for() -> list[threading.Thread]:
    """Alive non-daemon threads other than this one and the thread pools' workers."""
    pools: Any = ()
    module = sys.modules.get("concurrent.futures.thread")
    if module is not None:
        pools = getattr(module, "_threads_queues", ())
    current = threading.current_thread()
    return [
        thread
        for thread in threading.enumerate()
        if not thread.daemon
        and thread is not current
        and thread is not threading.main_thread()
        and thread not in pools
        and thread.is_alive()
    ]


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
    # The child has copies of the parent's runs but not their writer threads: forget
    # them so the child never writes into the parent's files.
    for run in list(_registered):
        run.forget_after_fork()
    _registered.clear()
    for ending in list(_ending):  # runs the parent was finishing: theirs too
        ending.writer.forget_after_fork()
    _ending.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
