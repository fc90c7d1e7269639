"""`--forecast exact`: the predictive strategy planning with the replayed day itself, the rate the
simulator draws its arrivals from, so its cost is the policy's own, without the forecast's error;
and `--forecast given`, a forecast read from a trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.backtest import BacktestOptions, run_backtest
from lab.forecasts import DAY, trace_forecasts
from serve_app.autoscaling.rate_history import RateHistory
from tests.unit.test_backtest_properties import HISTORY_DAYS, short_trace

STEP_S = 900.0
LEAD_S = 180.0


def stepped_history(days: int = 2) -> RateHistory:
    times = np.arange(0, days * DAY, STEP_S, dtype=float) + 1_700_000_000.0
    rates = 10.0 + np.arange(len(times), dtype=float)  # every step a different rate
    return RateHistory(times, rates)


def test_each_lookup_is_the_rate_of_the_step_lead_seconds_ahead():
    history = stepped_history()
    day = float(history.timestamps[0]) + DAY
    forecasts = trace_forecasts(history, [day], LEAD_S, STEP_S)
    assert forecasts.statuses == ["exact"]
    step_end = day + STEP_S - LEAD_S  # from here on, now + lead is in the next step
    for now in (day, day + 700.0, step_end - 0.01, step_end, day + 5000.0):
        step = int((now + LEAD_S - history.timestamps[0]) // STEP_S)
        upper, fitted_at, yhat = forecasts.lookup(now)
        assert upper == pytest.approx(history.rps[step]) and yhat == upper
        assert fitted_at == day  # "fitted" when the day starts, as the walk-forward one is


def test_the_exact_forecast_has_no_error_and_replays_the_same_arrivals(tmp_path):
    trace = short_trace(tmp_path, 5)
    options = {"trace": trace, "replica_rps": 25.0, "history_days": HISTORY_DAYS, "workers": 1}
    exact = run_backtest(BacktestOptions(out=tmp_path / "e", forecast="exact", **options))
    prophet = run_backtest(BacktestOptions(out=tmp_path / "p", **options))
    assert exact.mape_overall == 0.0 and prophet.mape_overall > 0
    assert exact.day_statuses == ["exact"]
    rows = {r["strategy"]: r for r in exact.summary}
    same = {r["strategy"]: r for r in prophet.summary}
    # Only predictive plans with a forecast: every other strategy is the very same replay.
    for name in ("static_peak", "fixed_headroom", "ray_default", "reactive", "oracle"):
        assert rows[name] == same[name], name
    assert rows["predictive"] != same["predictive"]


def test_an_unknown_forecast_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--forecast must be one of prophet, exact"):
        BacktestOptions(trace=tmp_path / "t.csv", out=tmp_path, forecast="psychic")


# --- a given forecast (`--forecast given`, the suite's `--forecast expected`) ---------------------


def test_a_given_forecast_reads_its_upper_bound_as_a_factor_of_its_rate():
    history = stepped_history()
    day = float(history.timestamps[0]) + DAY
    forecasts = trace_forecasts(history, [day], LEAD_S, STEP_S, 1.25, "given")
    assert forecasts.statuses == ["given"]
    upper, _, yhat = forecasts.lookup(day + 700.0)
    step = int((day + 700.0 + LEAD_S - history.timestamps[0]) // STEP_S)
    assert yhat == pytest.approx(history.rps[step])
    assert upper == pytest.approx(1.25 * history.rps[step])


def test_the_replayed_trace_given_as_the_forecast_is_the_exact_forecast(tmp_path):
    trace = short_trace(tmp_path, 9)
    options = {"trace": trace, "replica_rps": 25.0, "history_days": HISTORY_DAYS, "workers": 1}
    exact = run_backtest(BacktestOptions(out=tmp_path / "e", forecast="exact", **options))
    given = run_backtest(
        BacktestOptions(out=tmp_path / "g", forecast="given", forecast_file=trace, **options)
    )
    assert given.day_statuses == ["given"]
    assert given.mape_overall == 0.0
    assert given.summary == exact.summary


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"forecast": "given"}, "--forecast-file goes with --forecast given"),
        ({"forecast_file": Path("f.csv")}, "--forecast-file goes with --forecast given"),
        (
            {"forecast": "given", "forecast_file": Path("f.csv"), "forecast_upper_factor": 0.9},
            "--forecast-upper-factor must be >= 1",
        ),
    ],
)
def test_a_given_forecast_needs_its_file_and_a_bound_above_it(tmp_path, settings, words):
    with pytest.raises(ValueError, match=words):
        BacktestOptions(trace=tmp_path / "t.csv", out=tmp_path, **settings)
