"""Watchers: checks that run in the run's writer thread, not in the logging loop.

Pass them to a tracker; each fires an :class:`Alert` when its condition starts::

    import steplog
    from steplog import watch

    tracker = steplog.Tracker(
        watchers=[
            watch.nonfinite("loss"),                    # NaN or ±inf
            watch.above("grad_norm", 100.0),            # a bound
            watch.diverging("loss", factor=2.0, window=100),
            watch.stalled(60.0),                        # no log() for a minute
            watch.slower(0.5),                          # steps/s halved
        ],
        on_alert=lambda alert: print(alert.message),
    )

An alert is written to the run file (an ``"alert"`` record, listed by ``steplog show``),
reported through ``logging`` as a warning, and handed to ``on_alert``, which runs in the
writer thread (its exceptions are logged and counted, never raised). A watcher fires
once per *episode*: when its condition becomes true, not again until it was false in
between; and at most once per ``cooldown`` seconds (episodes inside the cooldown are
counted in the next alert's ``suppressed``).

Value watchers (``nonfinite``, ``above``, ``below``, ``diverging``) get the values from
``log()``, which queues each event's watched values for the writer (one dict lookup per
watched key, only when one is configured; see docs/watchers.md for where and why, and
the figures). Clock watchers (``stalled``, ``slower``) use counters the writer keeps
anyway.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from typing import Any

from ._buffer import SPEEDUPS
from ._options import positive_int, positive_seconds

__all__ = [
    "Alert",
    "Watcher",
    "above",
    "below",
    "diverging",
    "nonfinite",
    "slower",
    "stalled",
]

#: Seconds a watcher stays quiet after it fired (new episodes meanwhile are counted).
DEFAULT_COOLDOWN = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """What a watcher reports when it fires (also stored as an ``"alert"`` record).

    Attributes:
        watcher: The kind of watcher: ``"nonfinite"``, ``"above"``, ``"below"``,
            ``"diverging"``, ``"stalled"`` or ``"slower"`` (in a run file also
            ``"writer_process"``: steplog's own record of a writer process that died).
        key: The watched key (``None`` for the clock watchers).
        value: The value that fired it (for ``stalled``: seconds without a ``log()``;
            for ``slower``: the steps per second).
        step: The step of that value (``None`` for the clock watchers).
        time: Wall-clock time the writer noticed it, seconds since the epoch.
        message: One line for a human.
        suppressed: Episodes of this watcher inside its cooldown since it last fired.
    """

    watcher: str
    key: str | None
    value: Any
    step: int | None
    time: float
    message: str
    suppressed: int = 0


class Watcher:
    """A check run by the writer thread; made by the functions of :mod:`steplog.watch`.

    Attributes:
        kind: The watcher's kind (``Alert.watcher``).
        key: The watched key, or ``None`` for the clock watchers.
        cooldown: Seconds it stays quiet after firing.
        fired: Alerts it fired in the current run.
        hits: Checks that found its condition true in the current run (values, or
            writer wake-ups for the clock watchers).
    """

    kind = "watcher"

    def __init__(self, key: str | None, *, cooldown: float) -> None:
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(f"the watched key must be a non-empty string, got {key!r}")
        if isinstance(cooldown, bool) or not (
            isinstance(cooldown, (int, float)) and 0 <= cooldown < math.inf
        ):
            raise ValueError(f"cooldown must be a number of seconds >= 0, got {cooldown!r}")
        self.key = key
        self.cooldown = float(cooldown)
        self.reset()

    def reset(self) -> None:
        """Forget the state of an earlier run (called when a run starts)."""
        self.fired = 0
        self.hits = 0
        self._active = False
        self._last_fired = -math.inf
        self._suppressed = 0

    def __repr__(self) -> str:
        return f"steplog.watch.{self.kind}({self._describe()})"

    def _describe(self) -> str:
        return repr(self.key)

    def _episode(
        self, condition: bool, now: float, mono: float, value: Any, step: int | None, message: str
    ) -> Alert | None:
        """Feed one check's outcome; returns the alert when an episode starts."""
        if not condition:
            self._active = False
            return None
        if not self._hit(mono):
            return None
        return self._alert(value, step, now, message)

    def _hit(self, mono: float) -> bool:
        """The condition holds: count it; True when an alert is due (a new episode,
        past the cooldown). The caller then builds the alert's message."""
        self.hits += 1
        if self._active:
            return False
        self._active = True
        if mono - self._last_fired < self.cooldown:
            self._suppressed += 1
            return False
        self._last_fired = mono
        self.fired += 1
        return True

    def _alert(self, value: Any, step: int | None, now: float, message: str) -> Alert:
        suppressed, self._suppressed = self._suppressed, 0
        return Alert(self.kind, self.key, value, step, now, message, suppressed)


class ValueWatcher(Watcher):
    """A watcher of one key's values (internal base class)."""

    key: str

    def check(self, step: int, value: Any, now: float, mono: float) -> Alert | None:
        """Check one logged value (numbers only; other values end nothing, fire nothing)."""
        if type(value) is not float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            value = _as_float(value)
        return self._check(step, value, now, mono)

    def check_batch(
        self, steps: Sequence[int], values: Sequence[float], now: float, mono: float
    ) -> list[Alert]:
        """Check a batch of numbers (ints and floats), in logging order."""
        alerts = []
        for step, value in zip(steps, values, strict=True):
            alert = self.check(step, value, now, mono)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _quiet(self, values: Sequence[float]) -> list[Alert]:
        """The batch had no value in the condition: an episode under way has ended."""
        if values:
            self._active = False
        return []

    def _episodes(
        self, held: list[bool], mono: float, alert: Callable[[int], Alert]
    ) -> list[Alert]:
        """Feed a batch's outcomes, in order, as :meth:`_episode` would one at a time;
        ``alert(i)`` makes the alert for index ``i`` where one is due (called then, so
        that it counts the episodes suppressed before it, not after).

        Run by run, not value by value: ``list.index`` finds where each run of equal
        outcomes ends at C speed, so a condition that holds for a whole batch (a loss
        that stays NaN, or keeps diverging) costs a few calls, not one per value.
        """
        alerts = []
        i, n = 0, len(held)
        while i < n:
            now_held = held[i]
            try:
                end = held.index(not now_held, i)
            except ValueError:
                end = n
            if not now_held:
                self._active = False
            else:
                if self._hit(mono):  # the run's first value (counts one hit)
                    alerts.append(alert(i))
                self.hits += end - i - 1  # the rest of the run: hits in an episode
            i = end
        return alerts

    def _check(self, step: int, value: float, now: float, mono: float) -> Alert | None:
        raise NotImplementedError


def _as_float(value: int | float) -> float:
    """A number as a float; an int beyond float range as ±infinity (``float()`` raises)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _all_finite(values: Sequence[float]) -> bool:
    """True if no value is NaN or ±inf (one C-speed sum; NaN and inf propagate)."""
    try:
        total = sum(values)
    except OverflowError:  # ints beyond float range mixed with floats
        return False
    return bool(total - total == 0)


_FLOAT = {float}

#: The compiled batch checks (``steplog._speedups``: ``finite_range``, ``diverging``), or
#: None; each gives the exact outcome of the Python code it stands for, or None where a
#: value is not a finite float (then the Python code decides).
_COMPILED = SPEEDUPS


def _finite_range(values: Sequence[Any]) -> tuple[float, float] | None:
    """``(min(values), max(values))`` when every value is a finite float (compiled: one
    pass, no float object per value), else None."""
    if _COMPILED is None or type(values) is not list:
        return None
    return _COMPILED.finite_range(values)  # type: ignore[no-any-return]


def _diverging_outcomes(
    series: list[Any], window: int, best: float, factor: float
) -> tuple[list[bool] | None, float] | None:
    """diverging()'s outcome for each window of ``series`` — whether its mean is over
    ``factor`` x the lowest mean so far (> 0) — or None where no mean is, and the
    lowest mean after them, when every value is a finite float and every sum finite
    (compiled: one pass, no float object per value); else None."""
    if _COMPILED is None:
        return None
    try:
        first = sum(series[:window])
    except OverflowError:  # ints beyond float range mixed with floats
        return None
    return _COMPILED.diverging(series, window, first, best, factor)  # type: ignore[no-any-return]


def _window_sums(series: list[float], window: int) -> list[float]:
    """The sums of the windows of ``window`` values in ``series``, in order.

    The first in full, then each the one before plus the value that enters minus the
    one that leaves, at C speed in one pipeline (~40 ns a value; materialising prefix
    sums first cost twice that, issue #26). Rounding accumulates over one batch at
    most: each batch starts from a fresh sum (sum(), not math.fsum: a sum beyond float
    range is inf here, where fsum raises).
    """
    steps = map(operator.sub, series[window:], series[:-window])
    return list(accumulate(steps, initial=sum(series[:window])))


def _floats(values: Sequence[Any]) -> bool:
    """Whether every value is a float (then outcomes need no per-value conversion)."""
    return not set(map(type, values)).difference(_FLOAT)


class _Condition(ValueWatcher):
    """A watcher of one condition on each value (nonfinite, above, below).

    A subclass says when a batch is quiet at C speed (:meth:`_quiet_batch`), whether
    the condition holds for one value (:meth:`_holds`) and for a batch of floats
    (:meth:`_holds_all`, at C speed), and what its alert says (:meth:`_fired`).
    """

    def check_batch(
        self, steps: Sequence[int], values: Sequence[float], now: float, mono: float
    ) -> list[Alert]:
        if self._quiet_batch(values):
            return self._quiet(values)
        if not _floats(values):
            return super().check_batch(steps, values, now, mono)
        held = self._holds_all(values)
        return self._episodes(held, mono, lambda i: self._fired(steps[i], values[i], now))

    def _check(self, step: int, value: float, now: float, mono: float) -> Alert | None:
        if not self._holds(value):
            self._active = False
            return None
        if not self._hit(mono):
            return None
        return self._fired(step, value, now)

    def _quiet_batch(self, values: Sequence[float]) -> bool:
        raise NotImplementedError

    def _holds(self, value: float) -> bool:
        raise NotImplementedError

    def _holds_all(self, values: Sequence[float]) -> list[bool]:
        raise NotImplementedError

    def _fired(self, step: int, value: float, now: float) -> Alert:
        raise NotImplementedError


class _NonFinite(_Condition):
    kind = "nonfinite"

    def _quiet_batch(self, values: Sequence[float]) -> bool:
        return _all_finite(values)

    def _holds(self, value: float) -> bool:
        return value - value != 0  # 0.0 for a finite float, NaN otherwise

    def _holds_all(self, values: Sequence[float]) -> list[bool]:
        return list(map((0.0).__ne__, map(operator.sub, values, values)))

    def _fired(self, step: int, value: float, now: float) -> Alert:
        return self._alert(value, step, now, f"{self.key} is {value} at step {step}")


class _Bound(_Condition):
    """above() and below(): the condition is ``_over(value, bound)``; a batch whose
    ``_extreme`` (max or min) is not over the bound is quiet."""

    _over: Callable[[Any, Any], bool]
    _extreme: Callable[..., Any]
    _end: int  # the extreme's place in (min, max)

    def __init__(self, key: str, bound: float, *, cooldown: float) -> None:
        super().__init__(key, cooldown=cooldown)
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound != bound:
            raise ValueError(f"{self.kind}() needs a number as its bound, got {bound!r}")
        self.bound = float(bound)

    def _describe(self) -> str:
        return f"{self.key!r}, {self.bound!r}"

    def _quiet_batch(self, values: Sequence[float]) -> bool:
        extremes = _finite_range(values)
        if extremes is not None:
            return not self._over(extremes[self._end], self.bound)
        return _all_finite(values) and not self._over(self._extreme(values), self.bound)

    def _holds(self, value: float) -> bool:
        return self._over(value, self.bound)

    def _holds_all(self, values: Sequence[float]) -> list[bool]:
        return list(map(self._over, values, repeat(self.bound)))

    def _fired(self, step: int, value: float, now: float) -> Alert:
        return self._alert(
            value, step, now, f"{self.key} = {value:g} is {self.kind} {self.bound:g} at step {step}"
        )


class _Above(_Bound):
    kind = "above"
    _over = staticmethod(operator.gt)
    _extreme = staticmethod(max)
    _end = 1


class _Below(_Bound):
    kind = "below"
    _over = staticmethod(operator.lt)
    _extreme = staticmethod(min)
    _end = 0


class _Diverging(ValueWatcher):
    kind = "diverging"

    def __init__(self, key: str, *, factor: float, window: int, cooldown: float) -> None:
        super().__init__(key, cooldown=cooldown)
        if isinstance(factor, bool) or not (
            isinstance(factor, (int, float)) and 1 < factor < math.inf
        ):
            raise ValueError(f"diverging() needs a factor above 1, got {factor!r}")
        self.factor = float(factor)
        self.window = positive_int("window", window)

    def _describe(self) -> str:
        return f"{self.key!r}, factor={self.factor!r}, window={self.window!r}"

    def reset(self) -> None:
        super().reset()
        self._values: list[float] = []  # the last window - 1 values
        self._best = math.inf

    def _check(self, step: int, value: float, now: float, mono: float) -> Alert | None:
        alerts = self.check_batch([step], [value], now, mono)
        return alerts[0] if alerts else None

    def check_batch(
        self, steps: Sequence[int], values: Sequence[float], now: float, mono: float
    ) -> list[Alert]:
        w = self.window
        prior = self._values
        series = prior + (values if type(values) is list else list(values))
        # Every window's outcome, compiled, where every value is a finite float (the
        # common case); else the values as floats, finite ones only, and
        # _python_outcomes decides.
        outcomes = None
        if len(series) >= w:
            outcomes = _diverging_outcomes(series, w, self._best, self.factor)
        if outcomes is None:
            if not _floats(values):  # ints: as floats (one beyond float range: ±inf)
                values = list(map(_as_float, values))
            if not _all_finite(values):  # nonfinite() is the watcher for those
                keep = [(s, v) for s, v in zip(steps, values, strict=True) if v - v == 0]
                steps, values = [s for s, _ in keep], [v for _, v in keep]
            series = prior + list(values)
        self._values = series[max(len(series) - w + 1, 0) :] if w > 1 else []
        if len(series) < w:
            return []
        offset = len(steps) - (len(series) - w + 1)  # (the first window's last step)
        if outcomes is not None:
            return self._compiled_outcomes(series, steps, offset, outcomes, now, mono)
        return self._python_outcomes(series, steps, offset, now, mono)

    def _compiled_outcomes(
        self,
        series: list[float],
        steps: Sequence[int],
        offset: int,
        outcomes: tuple[list[bool] | None, float],
        now: float,
        mono: float,
    ) -> list[Alert]:
        """The alerts of a batch whose outcomes :func:`_diverging_outcomes` gave."""
        w = self.window
        held, lowest = outcomes
        best, self._best = self._best, lowest
        if held is None:
            return self._quiet(series)
        known: list[list[float]] = [[], []]  # means and lowest means, windows 0, 1, ...

        def alert(index: int) -> Alert:
            # The means and lowest means are listed only for an alert's message, up to
            # its window; a later alert beyond them lists twice as many (with
            # cooldown=0 a batch may start an episode at every other value: listing up
            # to each alert's window afresh was quadratic in the batch).
            means, lows = known
            if index >= len(means):
                upto = min(max(index + 1, 2 * len(means)), len(held))
                means = [total / w for total in _window_sums(series[: upto + w - 1], w)]
                lows = list(accumulate(means, min, initial=best))[1:]
                known[:] = [means, lows]
            return self._diverged(means[index], lows[index], steps[offset + index], now)

        return self._episodes(held, mono, alert)

    def _python_outcomes(
        self, series: list[float], steps: Sequence[int], offset: int, now: float, mono: float
    ) -> list[Alert]:
        """The alerts of a batch of finite floats, decided in Python (the reference)."""
        w = self.window
        sums = _window_sums(series, w)
        factor = self.factor
        best = self._best
        # Division by w is monotonic, so min(sums) / w is exactly the lowest mean and
        # max(sums) / w the highest: the common cases compare those two and build no
        # list of means (a float object per value).
        low, high = min(sums) / w, max(sums) / w
        lowest = best if best < low else low
        if lowest > 0 and high <= factor * lowest:
            # No mean exceeds factor x even the lowest mean: quiet, and the running
            # minimum is the lowest.
            self._best = lowest
            return self._quiet(sums)
        if low >= best:
            # No new lowest mean (a mean rising, or an episode under way): every mean
            # compares with the same threshold, no running minimum to build
            # (accumulate's min() was ~100 ns a value).
            if best <= 0:
                return self._quiet(sums)  # (a lowest mean <= 0 never diverges)
            threshold = factor * best
            if low > threshold and high < math.inf:
                # Every mean is over it: the batch is one run of the condition. (A
                # sum can be NaN only after an infinite one, and then high or low is
                # infinite: such a batch takes the next line, value by value.)
                held = [True] * len(sums)
            else:
                held = list(map(threshold.__lt__, map(operator.truediv, sums, repeat(float(w)))))

            def alert(index: int) -> Alert:
                return self._diverged(sums[index] / w, best, steps[offset + index], now)

        else:
            means = list(map(operator.truediv, sums, repeat(float(w))))
            bests = list(accumulate(means, min, initial=best))[1:]
            self._best = bests[-1]
            # mean > factor x best, where best > 0 (bests only fall: one test of the last).
            held = list(map(operator.gt, means, map(operator.mul, bests, repeat(factor))))
            if bests[-1] <= 0:
                held = [h and b > 0 for h, b in zip(held, bests, strict=True)]

            def alert(index: int) -> Alert:
                return self._diverged(means[index], bests[index], steps[offset + index], now)

        return self._episodes(held, mono, alert)

    def _diverged(self, mean: float, best: float, step: int, now: float) -> Alert:
        message = (
            f"{self.key} is diverging: the mean of its last {self.window} values, {mean:g}, "
            f"is over {self.factor:g} x its lowest, {best:g} (step {step})"
        )
        return self._alert(mean, step, now, message)


class ClockWatcher(Watcher):
    """A watcher of the logging rate, checked at every writer wake-up (internal)."""

    def tick(self, events: int, now: float, mono: float) -> Alert | None:
        """Check the count of events logged so far, at monotonic time ``mono``."""
        raise NotImplementedError


class _Stalled(ClockWatcher):
    kind = "stalled"

    def __init__(self, seconds: float, *, cooldown: float) -> None:
        super().__init__(None, cooldown=cooldown)
        self.seconds = positive_seconds("stalled() seconds", seconds)

    def _describe(self) -> str:
        return repr(self.seconds)

    def reset(self) -> None:
        super().reset()
        self._events = 0
        self._since: float | None = None  # when the count last changed

    def tick(self, events: int, now: float, mono: float) -> Alert | None:
        if events != self._events or self._since is None:
            self._since = mono if events else None  # the clock starts at the first log()
            self._events = events
            return self._episode(False, now, mono, None, None, "")
        idle = mono - self._since
        return self._episode(
            idle >= self.seconds,
            now,
            mono,
            round(idle, 3),
            None,
            f"the loop stalled: no log() for {idle:.1f} s",
        )


class _Slower(ClockWatcher):
    kind = "slower"

    def __init__(self, fraction: float, *, window: float, cooldown: float) -> None:
        super().__init__(None, cooldown=cooldown)
        if isinstance(fraction, bool) or not (
            isinstance(fraction, (int, float)) and 0 < fraction < 1
        ):
            raise ValueError(f"slower() needs a fraction between 0 and 1, got {fraction!r}")
        self.fraction = float(fraction)
        self.window = positive_seconds("slower() window", window)

    def _describe(self) -> str:
        return f"{self.fraction!r}, window={self.window!r}"

    def reset(self) -> None:
        super().reset()
        self._start: float | None = None
        self._start_events = 0
        self._peak = 0.0

    def tick(self, events: int, now: float, mono: float) -> Alert | None:
        if self._start is None:
            if events:  # windows start at the first log()
                self._start, self._start_events = mono, events
            return None
        elapsed = mono - self._start
        if elapsed < self.window:
            return None
        rate = (events - self._start_events) / elapsed
        self._start, self._start_events = mono, events
        peak = self._peak
        if rate > peak:
            self._peak = peak = rate
        return self._episode(
            rate < self.fraction * peak,
            now,
            mono,
            round(rate, 3),
            None,
            f"steps/s dropped to {rate:.4g}, under {self.fraction:g} x the best "
            f"{peak:.4g} (over {self.window:g} s windows)",
        )


# -- the public constructors ---------------------------------------------------------


def nonfinite(key: str, *, cooldown: float = DEFAULT_COOLDOWN) -> Watcher:
    """Fire when ``key`` is NaN or ±infinity.

    Args:
        key: The logged key (a dotted key reaches into nested dicts: ``"grad.norm"``).
        cooldown: Seconds it stays quiet after firing.
    """
    return _NonFinite(key, cooldown=cooldown)


def above(key: str, bound: float, *, cooldown: float = DEFAULT_COOLDOWN) -> Watcher:
    """Fire when ``key`` goes above ``bound``.

    Args:
        key: The logged key (dotted for nested dicts).
        bound: The value it must not exceed.
        cooldown: Seconds it stays quiet after firing.
    """
    return _Above(key, bound, cooldown=cooldown)


def below(key: str, bound: float, *, cooldown: float = DEFAULT_COOLDOWN) -> Watcher:
    """Fire when ``key`` goes below ``bound``.

    Args:
        key: The logged key (dotted for nested dicts).
        bound: The value it must not fall under.
        cooldown: Seconds it stays quiet after firing.
    """
    return _Below(key, bound, cooldown=cooldown)


def diverging(
    key: str, *, factor: float = 2.0, window: int = 100, cooldown: float = DEFAULT_COOLDOWN
) -> Watcher:
    """Fire when ``key`` rises: the mean of its last ``window`` values exceeds ``factor``
    times the lowest such mean so far.

    Meant for positive quantities that should fall (a loss); NaN and infinities are
    left to :func:`nonfinite`.

    Args:
        key: The logged key (dotted for nested dicts).
        factor: How many times its best windowed mean the current one may reach (> 1).
        window: How many values each mean covers.
        cooldown: Seconds it stays quiet after firing.
    """
    return _Diverging(key, factor=factor, window=window, cooldown=cooldown)


def stalled(seconds: float, *, cooldown: float = DEFAULT_COOLDOWN) -> Watcher:
    """Fire when no ``log()`` call came for ``seconds``, by the writer thread's clock.

    The clock starts at the first ``log()`` of the run (setup before it is no stall);
    checked at every writer wake-up, so at least every ``flush_interval``.

    Args:
        seconds: How long the loop may go without logging.
        cooldown: Seconds it stays quiet after firing.
    """
    return _Stalled(seconds, cooldown=cooldown)


def slower(fraction: float, *, window: float = 10.0, cooldown: float = DEFAULT_COOLDOWN) -> Watcher:
    """Fire when steps per second fall under ``fraction`` of the best rate so far.

    The rate is measured by the writer over consecutive windows of ``window`` seconds,
    from the count of ``log()`` calls (nothing is measured inside ``log()``).

    Args:
        fraction: Part of the best rate under which it fires (between 0 and 1).
        window: Seconds each rate is measured over.
        cooldown: Seconds it stays quiet after firing.
    """
    return _Slower(fraction, window=window, cooldown=cooldown)
