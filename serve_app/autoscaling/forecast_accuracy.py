"""How good the published forecasts were: each forecast the Forecaster published, kept (bounded),
scored against the request rate that actually came at the time it was for.

A cloud predictive scaler shows this before it is allowed to act; `predictive.mode: forecast_only`
is that stage here. Three figures per model over the kept window:

- MAPE (%) of `yhat` against the actual rate, over points whose actual rate is positive;
- interval coverage: the share of points whose actual rate lies inside [lower, upper];
- under-forecast minutes: the time the actual rate was above `upper` (each kept point stands for
  `step_s` seconds), when a forecast floor would have left the service short.

The maths are pure functions of their inputs; `PublishedLog` keeps the points, one per step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class PublishedPoint:
    """One published forecast: the time it was for and its bounds, in requests per second."""

    target_s: float
    yhat: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ScoredPoint:
    """A published forecast next to the actual rate at its time."""

    point: PublishedPoint
    actual: float


@dataclass(frozen=True)
class Accuracy:
    """The figures over the scored points; None where there is nothing to compute them from."""

    points: int
    mape_pct: float | None
    coverage: float | None
    under_forecast_minutes: float

    def as_dict(self) -> dict[str, float | int | None]:
        """Plain values for the status answer."""
        return {
            "points": self.points,
            "mape_pct": None if self.mape_pct is None else round(self.mape_pct, 2),
            "interval_coverage": None if self.coverage is None else round(self.coverage, 4),
            "under_forecast_minutes": round(self.under_forecast_minutes, 2),
        }


NO_POINTS = Accuracy(points=0, mape_pct=None, coverage=None, under_forecast_minutes=0.0)


def actual_at(
    timestamps: np.ndarray, rps: np.ndarray, when: float, tolerance_s: float
) -> float | None:
    """The actual rate of the history point nearest to `when`, None when none is within
    `tolerance_s` (a gap in the history is unknown, not zero)."""
    if len(timestamps) == 0:
        return None
    i = int(np.searchsorted(timestamps, when))
    candidates = [j for j in (i - 1, i) if 0 <= j < len(timestamps)]
    nearest = min(candidates, key=lambda j: abs(timestamps[j] - when))
    if abs(timestamps[nearest] - when) > tolerance_s:
        return None
    return float(rps[nearest])


def score(
    published: Iterable[PublishedPoint],
    timestamps: Sequence[float],
    rps: Sequence[float],
    tolerance_s: float,
) -> list[ScoredPoint]:
    """Each published point with the actual rate at its target time; points without one are left
    out."""
    ts = np.asarray(timestamps, dtype=float)
    ys = np.asarray(rps, dtype=float)
    scored = []
    for point in published:
        actual = actual_at(ts, ys, point.target_s, tolerance_s)
        if actual is not None and math.isfinite(actual):
            scored.append(ScoredPoint(point, actual))
    return scored


def accuracy(scored: Sequence[ScoredPoint], step_s: float) -> Accuracy:
    """MAPE, interval coverage and under-forecast minutes of scored points `step_s` apart."""
    if not scored:
        return NO_POINTS
    positive = [s for s in scored if s.actual > 0]
    mape_pct = (
        100.0 * sum(abs(s.point.yhat - s.actual) / s.actual for s in positive) / len(positive)
        if positive
        else None
    )
    inside = sum(1 for s in scored if s.point.lower <= s.actual <= s.point.upper)
    under = sum(1 for s in scored if s.actual > s.point.upper)
    return Accuracy(
        points=len(scored),
        mape_pct=mape_pct,
        coverage=inside / len(scored),
        under_forecast_minutes=under * step_s / 60.0,
    )


class PublishedLog:
    """The forecasts published for one model, at most one per `step_s` and at most `window_s` of
    them: memory stays bounded however long the Forecaster runs."""

    def __init__(self, step_s: float, window_s: float):
        if step_s <= 0 or window_s < step_s:
            raise ValueError(
                f"need step_s > 0 and window_s >= step_s, got step_s={step_s!r}, "
                f"window_s={window_s!r}"
            )
        self.step_s = step_s
        self.window_s = window_s
        self.points: deque[PublishedPoint] = deque(maxlen=int(window_s // step_s) + 1)

    def record(self, point: PublishedPoint) -> bool:
        """Keep `point` unless one was kept less than a step before it; True when kept."""
        if self.points and point.target_s - self.points[-1].target_s < self.step_s:
            return False
        self.points.append(point)
        return True

    def due(self, now: float) -> list[PublishedPoint]:
        """Points whose target time has passed by a step (the actual rate over it is known) and that
        lie within the window."""
        return [p for p in self.points if now - self.window_s <= p.target_s <= now - self.step_s]
