"""The threads a run starts, and how something outside may stop them.

Every thread steplog starts for a run (its writer; the fan-out loop, the lanes' loop,
the delivery process's answer reader and the ``on_alert`` caller it starts in turn) is
a daemon thread: it never keeps the interpreter alive, and the exit hook ends its run
(``"unfinished"``, everything logged written) before Python stops it. Test suites
sometimes do that end early: Lightning's, for one, calls ``stop()`` on each daemon
thread a test left behind and fails the test if the thread is still alive afterwards.
So these threads are :class:`RunThread` instances, and ``stop()`` does what the end of
the process would do, now: it ends the thread's run as the exit hook would, then waits
for the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RunThread", "Stopper", "run_thread"]


@dataclass(frozen=True)
class Stopper:
    """How the threads of one run are stopped.

    Attributes:
        end_run: Ends the run as the exit hook would (``"unfinished"``, bounded by the
            tracker's shutdown timeout), if it is still active; a no-op otherwise.
        grace: Seconds to wait for a thread once its run has ended.
    """

    end_run: Callable[[], None]
    grace: float


class RunThread(threading.Thread):
    """A daemon thread serving one run, with a ``stop()`` that ends that run.

    Args:
        target: What the thread runs.
        name: The thread's name.
        args: ``target``'s arguments.
        stopper: How to end the run (see :class:`Stopper`).
    """

    def __init__(
        self,
        target: Callable[..., Any],
        *,
        name: str,
        stopper: Stopper,
        args: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(target=target, name=name, args=args, daemon=True)
        self.stopper = stopper

    def stop(self) -> None:
        """End this thread's run as the end of the process would, then wait (up to the
        run's shutdown deadline and a grace) for the thread to end.

        The run ends ``"unfinished"`` with everything that was logged, exactly as when
        a program exits without ``finish()``; a run already ended or ending is not
        touched. A thread kept alive by a backend stuck in a call that cannot be
        cancelled is left behind, as at exit (``is_alive()`` stays true).

        Raises:
            RuntimeError: Called from this thread itself.
        """
        if threading.current_thread() is self:
            raise RuntimeError(f"{self.name} cannot stop itself")
        self.stopper.end_run()
        self.join(self.stopper.grace)


def run_thread(
    target: Callable[..., Any],
    *,
    name: str,
    args: tuple[Any, ...] = (),
    stopper: Stopper | None = None,
) -> threading.Thread:
    """A daemon thread (not started) for ``target``.

    It is a :class:`RunThread` when it serves a run: ``stopper`` is given, or the
    calling thread is itself a thread of a run (the writer starts the fan-out, the
    lanes and the ``on_alert`` caller of its run). Elsewhere it is a plain daemon
    thread.
    """
    if stopper is None:
        creator = threading.current_thread()
        if isinstance(creator, RunThread):
            stopper = creator.stopper
    if stopper is None:
        return threading.Thread(target=target, name=name, args=args, daemon=True)
    return RunThread(target, name=name, args=args, stopper=stopper)
