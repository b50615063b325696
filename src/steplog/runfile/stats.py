"""Statistics of a run's keys in one streaming pass (``steplog show``, ``compare``):
per key its count, first and last values, min/max with their steps, mean, NaN and inf
counts; system samples and alerts in the same pass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..watch import Alert
from .records import RecordKind, alert_of, kind_of, sample_of
from .schema import INCOMPLETE, flat_data
from .snapshot import RunSnapshot, iter_steps

__all__ = ["MetricStats", "MonitorScan", "StepScan", "metric_stats"]


@dataclasses.dataclass(slots=True)
class MetricStats:
    """Running statistics of one key over a run."""

    count: int = 0
    first: Any = None
    last: Any = None
    numeric: int = 0
    nan: int = 0
    inf: int = 0
    min: float = math.inf
    min_step: int | None = None
    max: float = -math.inf
    max_step: int | None = None
    total: float = 0.0
    finite: int = 0

    def add(self, step: int, value: Any) -> None:
        if self.count == 0:
            self.first = value
        self.count += 1
        self.last = value
        if type(value) is not float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return
            try:
                value = float(value)
            except OverflowError:  # an int beyond float range (stored as a $int tag)
                value = math.inf if value > 0 else -math.inf
        self.numeric += 1
        if value - value != 0:  # NaN or ±inf (and never true for finite values)
            if value != value:
                self.nan += 1
            else:
                self.inf += 1
            return
        self.finite += 1
        self.total += value
        if value < self.min:
            self.min, self.min_step = value, step
        if value > self.max:
            self.max, self.max_step = value, step

    @property
    def mean(self) -> float | None:
        return self.total / self.finite if self.finite else None


@dataclasses.dataclass(slots=True)
class StepScan:
    """What one pass over a snapshot's step records found."""

    metrics: dict[str, MetricStats]
    records: int = 0
    last_step: int | None = None  # the step of the last record
    others: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # typed records

    def last_resume(self) -> dict[str, Any] | None:
        """The last resume record met, or ``None`` (a run never resumed)."""
        resumes = (r for r in reversed(self.others) if kind_of(r) is RecordKind.RESUME)
        return next(resumes, None)

    def config(self, start: Mapping[str, Any]) -> dict[str, Any]:
        """The run's config as it stands: the last resume record's (the resuming
        ``init``'s config merged over the run's), else the run-start record ``start``'s."""
        config = (self.last_resume() or start).get("config")
        return config if isinstance(config, dict) else {}

    def segment_statuses(self) -> list[str]:
        """How each segment of the run ended, in order (one unless it was resumed)."""
        statuses = [INCOMPLETE]
        for record in self.others:
            kind = kind_of(record)
            if kind is RecordKind.RESUME:
                statuses.append(INCOMPLETE)
            elif kind is RecordKind.RUN_END:
                statuses[-1] = str(record.get("status"))
        return statuses


def metric_stats(
    snapshot: RunSnapshot,
    progress: Callable[[int], None] | None = None,
    *,
    into: dict[str, MetricStats] | None = None,
    monitor: MonitorScan | None = None,
) -> StepScan:
    """Per-key statistics over every step record of the snapshot (added to ``into``, if
    given: statistics over several runs, such as the ranks of a group), and into
    ``monitor`` its system samples and alerts, in the same pass."""
    stats: dict[str, MetricStats] = {} if into is None else into
    records = 0
    step: int | None = None
    others: list[dict[str, Any]] = []

    def other(record: dict[str, Any]) -> None:
        others.append(record)
        if monitor is not None:
            monitor.add(record)

    for record in iter_steps(snapshot, progress, others=other):
        records += 1
        step = record["step"]
        for key, value in flat_data(record["data"]).items():
            entry = stats.get(key)
            if entry is None:
                entry = stats[key] = MetricStats()
            entry.add(step, value)
    return StepScan(stats, records, step, others)


@dataclasses.dataclass(slots=True)
class MonitorScan:
    """System samples and alerts met by a streaming pass (``metric_stats(monitor=)``).

    Attributes:
        system: Per system key, its statistics (the "step" of a value is the count of
            events logged by then).
        samples: System samples read.
        alerts: The alerts, in file order.
    """

    system: dict[str, MetricStats] = dataclasses.field(default_factory=dict)
    samples: int = 0
    alerts: list[Alert] = dataclasses.field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        """Take one typed record (others are ignored)."""
        kind = kind_of(record)
        if kind is RecordKind.SYSTEM:
            sample = sample_of(record)
            if sample is None:
                return
            self.samples += 1
            for key, value in flat_data(sample.data).items():
                entry = self.system.get(key)
                if entry is None:
                    entry = self.system[key] = MetricStats()
                entry.add(sample.events, value)
        elif kind is RecordKind.ALERT:
            self.alerts.append(alert_of(record))
