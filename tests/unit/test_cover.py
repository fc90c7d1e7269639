"""The cheapest step cover (serve_app/autoscaling/cover.py) against brute force, and the planned
forecast made of it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serve_app.autoscaling.cover import cheapest_cover, held_upper, planned_forecast
from serve_app.autoscaling.forecaster import Forecast


def brute_force_cost(levels: np.ndarray, weights: np.ndarray, max_changes: int) -> float:
    """The least area of any cover with at most max_changes changes: every set of change points,
    each segment at its highest level (no cover of that segmentation is cheaper)."""
    n = len(levels)
    best = np.inf
    for changes in range(min(max_changes, n - 1) + 1):
        for cuts in itertools.combinations(range(1, n), changes):
            edges = (0, *cuts, n)
            cost = sum(
                levels[a:b].max() * weights[a:b].sum()
                for a, b in zip(edges, edges[1:], strict=False)
            )
            best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_cover_is_the_cheapest_within_its_budget(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    levels = rng.integers(0, 10, size=n).astype(float)
    weights = rng.integers(1, 4, size=n).astype(float)
    max_changes = int(rng.integers(0, 4))
    cover = cheapest_cover(levels, weights, max_changes)
    assert np.all(cover >= levels)
    assert np.count_nonzero(np.diff(cover)) <= max_changes
    assert float((cover * weights).sum()) == pytest.approx(
        brute_force_cost(levels, weights, max_changes)
    )


def test_no_change_allowed_is_the_peak_and_enough_changes_is_the_series():
    levels = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    weights = np.ones(5)
    assert cheapest_cover(levels, weights, 0).tolist() == [5.0] * 5
    assert cheapest_cover(levels, weights, 4).tolist() == levels.tolist()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        cheapest_cover(np.ones(3), np.ones(2), 1)
    with pytest.raises(ValueError, match="max_changes"):
        cheapest_cover(np.ones(3), np.ones(3), -1)


def day_forecast() -> Forecast:
    times = [float(t) for t in range(0, 86400 + 1, 300)]
    upper = [100 + 80 * np.sin(2 * np.pi * t / 86400) for t in times]
    return Forecast(times, [u * 0.9 for u in upper], [u * 0.8 for u in upper], upper, 0.0, 0.0)


@pytest.mark.parametrize("per_day", [4, 16])
def test_a_planned_forecast_covers_the_bound_in_at_most_its_steps(per_day):
    forecast = day_forecast()
    planned = planned_forecast(forecast, per_day)
    for t, u in zip(forecast.timestamps, forecast.upper, strict=True):
        assert planned.at(t) >= u - 1e-9
        assert planned.at(t, "yhat") == pytest.approx(forecast.at(t, "yhat"))
    # Levels between points, never a ramp: one scale event per change.
    levels = [planned.at(t + 1.0) for t in forecast.timestamps[:-1]]
    changes = sum(1 for a, b in zip(levels, levels[1:], strict=False) if a != b)
    assert 0 < changes <= per_day


def test_held_upper_is_the_most_the_steps_ask_for_until_now_plus_lead():
    forecast = Forecast([0.0, 100.0, 200.0, 300.0], [1, 1, 1, 1], [1, 1, 1, 1], [5, 9, 2, 2], 0, 0)
    # A step inside (now, now + lead) counts, not only its two ends.
    assert held_upper(forecast, 50.0, 150.0) == 9
    assert held_upper(forecast, 200.0, 300.0) == 2
    assert held_upper(forecast, 250.0, 400.0) is None  # beyond the forecast
