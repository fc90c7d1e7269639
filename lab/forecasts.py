"""The forecasts a backtest's predictive strategy plans with: Prophet fitted walk-forward on the
trace before each fit, once per replayed day or every `--refit-interval-s` as the service refits,
or the replayed day itself (`--forecast exact`), which tells how much of the strategy's cost is the
forecast's error and how much the policy's own steps, landing and event budget; or a forecast given
as a trace (`--forecast given --forecast-file CSV`), such as a generator's expected rate."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from serve_app.autoscaling.cover import planned_forecast
from serve_app.autoscaling.forecaster import Forecast, ForecasterSettings, RateForecaster, mape
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.rate_history import RateHistory

DAY = 86400
# The forecaster's default: the backtest replays the service as it ships.
PLAN_CHANGES_PER_DAY = ForecasterConfig.model_fields["plan_changes_per_day"].default
FORECASTS = ("prophet", "exact", "given")
# The suite's: "expected" gives each generated trace's expected rate (lab/suite.py) as "given".
SUITE_FORECASTS = ("prophet", "exact", "expected")
FORECAST_HELP = (
    "what predictive plans with: Prophet walk-forward (default); exact, the replayed day "
    "itself: the policy's cost without the forecast's error; given, the rate of --forecast-file"
)


@dataclass
class FitForecasts:
    """One forecast per fit, in the order of their fits (None where history was too short), for
    lookups without peeking: once per replayed day, or every refit interval."""

    fit_starts: list[float]
    forecasts: list[Forecast | None]
    statuses: list[str]
    lead_time_s: float
    planned_steps: bool = False

    def _last_fit(self, now: float) -> int:
        """The index of the last fit at or before now (-1 before the first)."""
        return int(np.searchsorted(self.fit_starts, now, side="right")) - 1

    def latest(self, now: float) -> Forecast | None:
        """The forecast of the last fit at or before now (None before the first)."""
        i = self._last_fit(now)
        return self.forecasts[i] if i >= 0 else None

    def status_at(self, now: float) -> str:
        """The status of the last fit at or before now."""
        i = self._last_fit(now)
        return self.statuses[i] if i >= 0 else "insufficient_history"

    def planned(self, max_changes_per_day: int) -> "FitForecasts":
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
        """(upper bound at now + lead, fit time, yhat at now + lead) from the latest forecast;
        planned, the most the steps ask for from now to now + lead, as the forecaster publishes
        it."""
        forecast = self.latest(now)
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
    refit_interval_s: float = DAY,
) -> FitForecasts:
    """Fit a forecaster at the start of each replayed day, and every `refit_interval_s` within it,
    on the trace strictly before the fit; each forecasts a day (+ lead) from its fit, as the
    service's `horizon_h` of 24 does."""
    fit_starts = [
        start + k * refit_interval_s
        for start in day_starts
        for k in range(math.ceil(DAY / refit_interval_s))
    ]
    forecasts, statuses = [], []
    for fit, start in enumerate(fit_starts):
        # Prophet samples its interval with numpy's global generator: seed it so a backtest repeats
        # exactly.
        np.random.seed(seed + fit)
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
    return FitForecasts(fit_starts, forecasts, statuses, lead_time_s)


def trace_forecasts(
    trace: RateHistory,
    day_starts: list[float],
    lead_time_s: float,
    step_s: float,
    upper_factor: float = 1.0,
    status: str = "exact",
) -> FitForecasts:
    """Each replayed day (+ lead) of `trace` as that day's forecast, upper bound `upper_factor` x
    the rate, step for step (two points per step, so the interpolation between them keeps each
    step's rate flat to its end). With the replayed trace itself and a factor of 1, the forecast
    is the rate the simulator draws its arrivals from (`--forecast exact`)."""
    forecasts = []
    for start in day_starts:
        ahead = trace.between(start, start + DAY + lead_time_s + step_s)
        times = [t + offset for t in ahead.timestamps for offset in (0.0, step_s - 1e-3)]
        rates = [float(r) for r in ahead.rps for _ in range(2)]
        upper = [r * upper_factor for r in rates]
        forecasts.append(Forecast(times, rates, rates, upper, start, start))
    return FitForecasts(day_starts, forecasts, [status] * len(day_starts), lead_time_s)


def day_ahead_mape(
    forecasts: FitForecasts, history: RateHistory, day_starts: list[float]
) -> tuple[list[float | None], float | None]:
    """MAPE of each replayed day against the fit made at its start, however often it refits, and
    their mean (None where a day had no forecast)."""
    by_day: list[float | None] = []
    for start in day_starts:
        forecast = forecasts.latest(start)
        actual = history.between(start, start + DAY)
        if forecast is None or len(actual) == 0:
            by_day.append(None)
            continue
        predicted = [forecast.at(t, "yhat") for t in actual.timestamps]
        by_day.append(round(mape(actual.rps, predicted), 2))
    known = [m for m in by_day if m is not None]
    return by_day, (round(float(np.mean(known)), 2) if known else None)
