"""The cheapest step cover: the piecewise-constant series with at most `max_changes` changes that is
nowhere below a given series and has the least area under it.

Both the backtest's budgeted yardstick (the cheapest clairvoyant fleet within a scale-event budget)
and the planned forecast (`forecaster.plan_changes_per_day`: the upper bound the policy reads, as
steps fixed when the forecast is made) are this cover. Pure, exact (dynamic programming over changes
used and points covered), O(max_changes x n²) with numpy over one axis.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from serve_app.autoscaling.forecaster import Forecast

DAY = 86400.0
# How far before its forecast point a planned step's old level ends.
STEP_EDGE_S = 1e-3


def cheapest_cover(levels: np.ndarray, weights: np.ndarray, max_changes: int) -> np.ndarray:
    """Per point, the level of the cheapest cover of `levels` (point i lasting `weights[i]`) that
    changes at most `max_changes` times."""
    levels = np.asarray(levels, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if levels.shape != weights.shape or levels.ndim != 1:
        raise ValueError("levels and weights must be 1-d series of the same length")
    if max_changes < 0:
        raise ValueError(f"max_changes must be >= 0, got {max_changes}")
    n = len(levels)
    if n == 0:
        return levels.copy()
    edges = np.concatenate([[0.0], np.cumsum(weights)])
    segments = min(max_changes + 1, n)
    best = np.full((segments + 1, n + 1), np.inf)
    best[0, 0] = 0.0
    choice = np.zeros((segments + 1, n + 1), dtype=np.int64)
    rows = np.arange(segments)
    for end in range(1, n + 1):
        # The highest level over points [start, end) for every start.
        top = np.maximum.accumulate(levels[end - 1 :: -1])[::-1]
        cost = best[:segments, :end] + top * (edges[end] - edges[:end])
        choice[1:, end] = cost.argmin(axis=1)
        best[1:, end] = cost[rows, choice[1:, end]]
    used = int(best[1:, n].argmin()) + 1
    cover = np.empty(n)
    end = n
    for k in range(used, 0, -1):
        start = int(choice[k, end])
        cover[start:end] = levels[start:end].max()
        end = start
    return cover


def planned_forecast(forecast: Forecast, max_changes_per_day: int) -> Forecast:
    """The forecast with its upper bound replaced by the bound's cheapest cover with at most
    `max_changes_per_day` changes a day (pro rata over the forecast's span); yhat and lower as
    they were.

    Each change is a step at a forecast point, not a ramp between two: interpolated, a ramp would
    move the floor a little every control period, one scale event each.
    """
    times = np.asarray(forecast.timestamps, dtype=np.float64)
    if len(times) < 2:
        return forecast
    span = float(times[-1] - times[0])
    changes = int(max_changes_per_day * span / DAY)
    weights = np.diff(times, append=times[-1] + span / (len(times) - 1))
    cover = cheapest_cover(np.asarray(forecast.upper, dtype=np.float64), weights, changes)
    steps = np.flatnonzero(np.diff(cover)) + 1
    # The level before each step, held until just before its point.
    new_times = np.concatenate([times, times[steps] - STEP_EDGE_S])
    new_upper = np.concatenate([cover, cover[steps - 1]])
    order = np.argsort(new_times, kind="stable")
    new_times = new_times[order]
    return replace(
        forecast,
        timestamps=[float(t) for t in new_times],
        yhat=[float(v) for v in np.interp(new_times, times, forecast.yhat)],
        lower=[float(v) for v in np.interp(new_times, times, forecast.lower)],
        upper=[float(v) for v in new_upper[order]],
    )


def held_upper(forecast: Forecast, now: float, at: float) -> float | None:
    """The most the upper bound asks for between now and `at` (None when `at` is outside the
    forecast): a planned step must be held until its end, not only planned lead time ahead."""
    ahead = forecast.at(at, "upper")
    if ahead is None:
        return None
    inside = [u for t, u in zip(forecast.timestamps, forecast.upper, strict=True) if now < t < at]
    return max([ahead, forecast.at(now, "upper") or 0.0, *inside])
