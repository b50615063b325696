"""Progress bars for long work: tqdm when it is installed and stderr is a terminal.

Quiet otherwise: scripts, CI logs and pipes never see a bar.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio

__all__ = ["bar", "enabled", "wait_future", "wait_with_progress", "wait_with_progress_async"]

T = TypeVar("T")

#: Seconds before a bar appears: work that ends sooner never shows one.
DELAY = 1.0


def _size() -> dict[str, int]:
    """tqdm's ncols/nrows for the terminal on stderr.

    A terminal that reports no size (a fresh pseudo-terminal says 0 x 0) gets 80 x 24:
    tqdm would otherwise hide every bar below row 0.
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return {"ncols": size.columns or 80, "nrows": size.lines or 24}
    except (AttributeError, OSError, ValueError):
        return {"ncols": 80, "nrows": 24}


def enabled() -> bool:
    """Whether bars would be drawn: tqdm importable and stderr a terminal."""
    try:
        isatty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
    if not isatty:
        return False
    try:
        _tqdm()
    except ImportError:
        return False
    return True


def _tqdm() -> Any:
    """The ``tqdm.tqdm`` class (an optional dependency: ``steplog[progress]``)."""
    return importlib.import_module("tqdm").tqdm


@contextlib.contextmanager
def bar(
    total: float | None, desc: str, unit: str = "B", delay: float = DELAY
) -> Iterator[Callable[[float], None] | None]:
    """A progress bar on stderr, or ``None`` where bars are off; yields ``update(n)``."""
    if not enabled():
        yield None
        return
    tqdm = _tqdm()
    scale = unit == "B"
    with tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scale,
        unit_divisor=1024 if scale else 1000,
        delay=delay,
        leave=False,
        file=sys.stderr,
        **_size(),
    ) as progress:
        yield progress.update


def wait_with_progress(
    future: concurrent.futures.Future[T],
    pending: Callable[[], dict[str, int]],
    timeout: float | None = None,
) -> T:
    """Wait for ``future``; after :data:`DELAY` seconds, show a bar per backend.

    ``pending`` returns the events each backend still has to write (read from another
    thread, so approximate). Raises ``concurrent.futures.TimeoutError`` like
    ``future.result(timeout)``.
    """
    if not enabled():
        return future.result(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    started = time.monotonic()
    bars: dict[str, Any] = {}
    totals: dict[str, int] = {}
    try:
        while True:
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            try:
                return future.result(wait)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            if time.monotonic() - started < DELAY:
                continue
            _draw(bars, totals, pending())
    finally:
        for progress in bars.values():
            progress.close()


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Await a ``concurrent.futures.Future`` from any async library anyio runs on
    (asyncio or trio): polled, from every millisecond up to every 20 ms, so it needs no
    loop-specific wake-up from the writer's thread (these are lifecycle calls, not the
    hot path)."""
    pause = 0.001
    while not future.done():
        await anyio.sleep(pause)
        pause = min(pause * 2, 0.02)
    return future.result()


async def wait_with_progress_async(
    future: concurrent.futures.Future[T], pending: Callable[[], dict[str, int]]
) -> T:
    """:func:`wait_with_progress` for a coroutine: the event loop is never blocked."""
    if not enabled():
        return await wait_future(future)
    started = time.monotonic()
    bars: dict[str, Any] = {}
    totals: dict[str, int] = {}
    try:
        while True:
            with anyio.move_on_after(0.2):
                return await wait_future(future)
            if time.monotonic() - started >= DELAY:
                _draw(bars, totals, pending())
    finally:
        for progress in bars.values():
            progress.close()


def _draw(bars: dict[str, Any], totals: dict[str, int], pending: dict[str, int]) -> None:
    tqdm = _tqdm()
    for name, left in pending.items():
        progress = bars.get(name)
        if progress is None:
            if left <= 0:
                continue
            totals[name] = left
            progress = bars[name] = tqdm(
                total=left,
                desc=f"steplog: writing {left:,} events to {name}",
                unit="ev",
                leave=False,
                file=sys.stderr,
                **_size(),
            )
        total = max(totals[name], left)
        if total != progress.total:
            progress.total = totals[name] = total
        progress.n = total - max(left, 0)
        progress.refresh()
