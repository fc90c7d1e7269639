"""The Forecaster's gauges: the Forecaster publishes them, the policy's queries read them.

Declared here, apart from the deployment, so the policy inside the Serve controller names them
without importing the Forecaster and its model code.
"""

from __future__ import annotations

from serve_app.monitoring.metrics import GAUGE, MetricSpec

FORECAST_QPS = MetricSpec(
    "forecast_qps",
    GAUGE,
    "Forecast requests per second at now + lead time (bound: yhat or upper).",
    ("model_name", "bound"),
)
FORECAST_PEAK_QPS = MetricSpec(
    "forecast_peak_qps",
    GAUGE,
    "Largest forecast requests per second over the rest of the horizon.",
    ("model_name", "bound"),
)
FORECASTER_LAST_FIT = MetricSpec(
    "forecaster_last_fit_timestamp_seconds",
    GAUGE,
    "Unix time of the fit behind the published forecast.",
    ("model_name",),
)
FORECASTER_STATUS = MetricSpec(
    "forecaster_status",
    GAUGE,
    "1 for the forecaster's current status per model (ok, insufficient_history, error).",
    ("model_name", "status"),
)
# How good the published forecasts were over forecaster.accuracy_window_h (forecast_accuracy.py).
FORECAST_MAPE = MetricSpec(
    "forecast_mape_percent",
    GAUGE,
    "Mean absolute percentage error of the published forecast (yhat) against the actual rate.",
    ("model_name",),
)
FORECAST_INTERVAL_COVERAGE = MetricSpec(
    "forecast_interval_coverage_ratio",
    GAUGE,
    "Share of published forecasts whose interval [lower, upper] held the actual rate.",
    ("model_name",),
)
FORECAST_UNDER_MINUTES = MetricSpec(
    "forecast_under_forecast_minutes",
    GAUGE,
    "Minutes the actual rate was above the published forecast's upper bound.",
    ("model_name",),
)
FORECAST_SCORED_POINTS = MetricSpec(
    "forecast_accuracy_points",
    GAUGE,
    "Published forecasts scored against the actual rate (the basis of the accuracy gauges).",
    ("model_name",),
)
ACCURACY_METRICS = (
    FORECAST_MAPE,
    FORECAST_INTERVAL_COVERAGE,
    FORECAST_UNDER_MINUTES,
    FORECAST_SCORED_POINTS,
)
FORECASTER_METRICS = (
    FORECAST_QPS,
    FORECAST_PEAK_QPS,
    FORECASTER_LAST_FIT,
    FORECASTER_STATUS,
    *ACCURACY_METRICS,
)
