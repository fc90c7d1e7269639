"""The forecasts a backtest's predictive strategy plans with, one per replayed day: Prophet fitted
walk-forward on the trace before that day (what the service does), or the replayed day itself
(`--forecast exact`), which tells how much of the strategy's cost is the forecast's error and how
much the policy's own steps, landing and event budget."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from serve_app.autoscaling.cover import planned_forecast
from serve_app.autoscaling.forecaster import Forecast, ForecasterSettings, RateForecaster
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.rate_history import RateHistory

DAY = 86400
# The forecaster's default: the backtest replays the service as it ships.
PLAN_CHANGES_PER_DAY = ForecasterConfig.model_fields["plan_changes_per_day"].default
FORECASTS = ("prophet", "exact")
FORECAST_HELP = (
    "what predictive plans with: Prophet walk-forward (default), or exact, the replayed day "
    "itself: the policy's cost without the forecast's error"
)


@dataclass
class DayForecasts:
    """One forecast per replayed day (None where history was too short), for lookups without
    peeking."""

    day_starts: list[float]
    forecasts: list[Forecast | None]
    statuses: list[str]
    lead_time_s: float
    planned_steps: bool = False

    def of_day(self, now: float) -> Forecast | None:
        """The forecast fitted at the start of now's day (None before the first replayed day)."""
        i = int(np.searchsorted(self.day_starts, now, side="right")) - 1
        return self.forecasts[i] if 0 <= i < len(self.forecasts) else None

    def planned(self, max_changes_per_day: int) -> "DayForecasts":
        """Each day's upper bound as the forecaster publishes it with `plan_changes_per_day`: its
        cheapest step cover (serve_app/autoscaling/cover.py)."""
        return replace(
            self,
            forecasts=[
                None if f is None else planned_forecast(f, max_changes_per_day)
                for f in self.forecasts
            ],
            planned_steps=True,
        )

    def lookup(self, now: float) -> tuple[float | None, float | None, float | None]:
        """(upper bound at now + lead, fit time, yhat at now + lead) from the forecast fitted at
        the start of now's day; planned, the most the steps ask for from now to now + lead, as the
        forecaster publishes it."""
        forecast = self.of_day(now)
        if forecast is None:
            return None, None, None
        at = now + self.lead_time_s
        if self.planned_steps:
            # A planned step must be held until its end, not only until now + lead.
            inside = [forecast.at(t, "upper") for t in forecast.timestamps if now < t < at]
            upper = max(
                [forecast.at(now, "upper") or 0.0, forecast.at(at, "upper") or 0.0] + inside
            )
            return upper, forecast.fitted_at, forecast.at(at, "yhat")
        return forecast.at(at, "upper"), forecast.fitted_at, forecast.at(at, "yhat")


def walk_forward(
    history: RateHistory,
    day_starts: list[float],
    settings: ForecasterSettings,
    lead_time_s: float,
    step_s: float,
    seed: int = 0,
) -> DayForecasts:
    """Fit one forecaster per replayed day on the trace strictly before that day, forecast the day
    (+ lead)."""
    forecasts, statuses = [], []
    for day, start in enumerate(day_starts):
        # Prophet samples its interval with numpy's global generator: seed it so a backtest repeats
        # exactly.
        np.random.seed(seed + day)
        past = history.between(-math.inf, start)
        forecaster = RateForecaster(settings)
        if len(past) < 2:
            forecasts.append(None)
            statuses.append("insufficient_history")
            continue
        outcome = forecaster.fit(past.timestamps, past.rps, now=start)
        statuses.append(outcome.status)
        if outcome.status != "ok":
            forecasts.append(None)
            continue
        forecasts.append(forecaster.predict(start, DAY + lead_time_s + step_s, step_s))
    return DayForecasts(day_starts, forecasts, statuses, lead_time_s)


def exact_forecasts(
    history: RateHistory, day_starts: list[float], lead_time_s: float, step_s: float
) -> DayForecasts:
    """Each replayed day (+ lead) as its own forecast, bounds equal to the expected value: the
    rate the simulator draws its arrivals from, step for step (two points per step, so the
    interpolation between them keeps each step's rate flat to its end)."""
    forecasts = []
    for start in day_starts:
        ahead = history.between(start, start + DAY + lead_time_s + step_s)
        times = [t + offset for t in ahead.timestamps for offset in (0.0, step_s - 1e-3)]
        rates = [float(r) for r in ahead.rps for _ in range(2)]
        forecasts.append(Forecast(times, rates, rates, rates, start, start))
    return DayForecasts(day_starts, forecasts, ["exact"] * len(day_starts), lead_time_s)
