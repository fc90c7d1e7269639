"""The Prophet forecaster: input validation, too-little history, one real fit, JSON persistence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lab.tracegen import diurnal
from serve_app.autoscaling.forecaster import (
    Forecast,
    ForecasterSettings,
    RateForecaster,
    mape,
    validate_history,
)

DAY = 86400


@pytest.mark.parametrize(
    "timestamps, rps, message",
    [
        ([0, 60], [1.0], "timestamps (2) and rps (1) must have the same length"),
        ([], [], "the history is empty"),
        ([0, 60, 60], [1, 2, 3], "timestamps must increase strictly: index 2"),
        ([0, 60, 30], [1, 2, 3], "timestamps must increase strictly: index 2"),
        ([0, math.nan], [1, 2], "timestamp at index 1 is not a finite number"),
        ([0, 60], [1, math.inf], "rps at index 1 is not a finite number"),
        ([0, 60], [1, -2], "rps at index 1 is negative (-2)"),
    ],
)
def test_bad_history_raises_a_precise_error(timestamps, rps, message):
    with pytest.raises(ValueError) as info:
        validate_history(timestamps, rps)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timezone": "Nowhere/City"}, "unknown time zone 'Nowhere/City'"),
        ({"interval_width": 1.5}, "interval_width must be in (0, 1)"),
        ({"growth": "logistic"}, "growth must be 'flat' or 'linear'"),
        ({"min_history_s": 3600}, "min_history_s must be at least one day"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError) as info:
        ForecasterSettings(**kwargs)
    assert message in str(info.value)


def test_too_little_history_gives_a_status_not_a_forecast():
    forecaster = RateForecaster()
    hours = np.arange(0, 30 * 3600, 300.0)  # 360 five-minute points cover 30 hours < the 48 needed
    outcome = forecaster.fit(hours, np.full(len(hours), 50.0))
    assert outcome.status == "insufficient_history"
    assert "30.0 h" in outcome.message and "48 h" in outcome.message
    assert not forecaster.fitted
    with pytest.raises(ValueError, match="fit\\(\\) it on enough history"):
        forecaster.predict(0.0, 3600, 300)


def test_refuses_to_save_unfitted():
    with pytest.raises(ValueError, match="refusing to save an unfitted forecaster"):
        RateForecaster().to_json()


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "saved forecaster is not JSON"),
        (
            json.dumps({"format": "something-else"}),
            "not a saved forecaster (format 'something-else'",
        ),
        (json.dumps([1, 2]), "not a saved forecaster (format 'list'"),
    ],
)
def test_load_refuses_foreign_files(text, message):
    with pytest.raises(ValueError) as info:
        RateForecaster.from_json(text)
    assert message in str(info.value)


@pytest.fixture(scope="module")
def fitted():
    """One fit (Prophet takes about a second): four days of the bundled generator's shape at
    15-minute steps."""
    rows = diurnal(days=5, step_s=900, peak_rps=400.0, seed=11, spikes=[])
    ts = np.array([t.timestamp() for t, _ in rows])
    rps = np.array([r for _, r in rows])
    history, truth = slice(0, 4 * 96), slice(4 * 96, 5 * 96)
    forecaster = RateForecaster(ForecasterSettings(timezone="Asia/Shanghai"))
    outcome = forecaster.fit(ts[history], rps[history], now=ts[4 * 96])
    return forecaster, outcome, ts[truth], rps[truth]


def test_fit_forecasts_the_next_day(fitted):
    forecaster, outcome, ts, actual = fitted
    assert outcome.status == "ok" and outcome.points == 4 * 96
    forecast = forecaster.predict(float(ts[0]), DAY - 900, 900)
    assert len(forecast.timestamps) == 96
    assert all(
        lo <= y <= up
        for lo, y, up in zip(forecast.lower, forecast.yhat, forecast.upper, strict=True)
    )
    # The day pattern is learned: the trace's noise alone is ~6%, so the day-ahead error stays well
    # under 20%.
    assert mape(actual, forecast.yhat) < 20.0
    assert forecast.fitted_at == pytest.approx(float(ts[0]))
    # Night and day differ by several times: a flat forecast would fail this.
    assert max(forecast.yhat) > 3 * min(forecast.yhat)


def test_json_round_trip_predicts_the_same(fitted):
    forecaster, _, ts, _ = fitted
    text = forecaster.to_json()
    saved = json.loads(text)
    assert saved["prophet_version"] and saved["settings"]["timezone"] == "Asia/Shanghai"
    again = RateForecaster.from_json(text)
    start = float(ts[0])
    first, second = forecaster.predict(start, 3 * 3600, 900), again.predict(start, 3 * 3600, 900)
    assert second.yhat == pytest.approx(first.yhat)
    assert again.fitted_at == forecaster.fitted_at


def test_forecast_lookup_and_peak():
    f = Forecast(
        [0.0, 300.0, 600.0], [10.0, 20.0, 30.0], [5.0, 15.0, 25.0], [15.0, 25.0, 45.0], 0.0, 0.0
    )
    assert f.at(150.0, "yhat") == 15.0  # halfway 10 -> 20
    assert f.at(450.0) == 35.0  # upper, halfway 25 -> 45
    assert f.at(601.0) is None
    assert f.peak() == 45.0 and f.peak("yhat") == 30.0


@pytest.mark.parametrize(
    "actual, predicted, expected",
    [
        ([100, 200], [110, 180], 10.0),  # (10/100 + 20/200) / 2 = 10%
        ([0, 100], [5, 150], 50.0),  # zero actuals are left out: 50/100
    ],
)
def test_mape(actual, predicted, expected):
    assert mape(actual, predicted) == pytest.approx(expected)
