"""Forecast accuracy: the pure maths (tables with the arithmetic), the bounded log of published
forecasts, and the Forecaster scoring what it published against the actual rate."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.autoscaling.forecast_accuracy import (
    NO_POINTS,
    PublishedLog,
    PublishedPoint,
    ScoredPoint,
    accuracy,
    actual_at,
    score,
)
from serve_app.autoscaling.forecast_metrics import (
    FORECAST_INTERVAL_COVERAGE,
    FORECAST_MAPE,
    FORECAST_SCORED_POINTS,
    FORECAST_UNDER_MINUTES,
)
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.forecaster_service import ForecastPublisher
from serve_app.autoscaling.rate_history import RateHistory
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend


def scored(yhat: float, lower: float, upper: float, actual: float, t: float = 0.0) -> ScoredPoint:
    return ScoredPoint(PublishedPoint(t, yhat, lower, upper), actual)


@pytest.mark.parametrize(
    "points, step_s, mape_pct, coverage, under_minutes",
    [
        # One exact forecast inside its interval: 0 % error, 1/1 covered, never under.
        ([scored(10, 8, 12, 10)], 60, 0.0, 1.0, 0.0),
        # |12-10|/10 = 20 %, |9-10|/10 = 10 % -> mean 15 %; both inside [8, 12] -> 1.0.
        ([scored(12, 8, 13, 10), scored(9, 8, 12, 10)], 60, 15.0, 1.0, 0.0),
        # actual 20 above upper 12: |10-20|/20 = 50 %; actual 10 inside: 0 % -> 25 %;
        # coverage 1/2; one point under, standing for 60 s -> 1 minute.
        ([scored(10, 8, 12, 20), scored(10, 8, 12, 10)], 60, 25.0, 0.5, 1.0),
        # Three points under at a 30 s step: 3 * 30 / 60 = 1.5 minutes; none covered.
        ([scored(1, 0.5, 2, 4)] * 3, 30, 75.0, 0.0, 1.5),
        # actual below lower is not covered but not under either: |10-5|/5 = 100 %.
        ([scored(10, 8, 12, 5)], 60, 100.0, 0.0, 0.0),
        # A zero actual has no percentage error: MAPE over the positive one only (|5-4|/4 = 25 %);
        # 0 is inside [0, 1] -> coverage 1/2 (actual 4 above upper 3 -> 1 minute).
        ([scored(0.5, 0, 1, 0), scored(5, 1, 3, 4)], 60, 25.0, 0.5, 1.0),
    ],
)
def test_accuracy(points, step_s, mape_pct, coverage, under_minutes):
    figures = accuracy(points, step_s)
    assert figures.points == len(points)
    assert figures.mape_pct == pytest.approx(mape_pct)
    assert figures.coverage == pytest.approx(coverage)
    assert figures.under_forecast_minutes == pytest.approx(under_minutes)


def test_nothing_scored_has_no_figures():
    assert accuracy([], 60) == NO_POINTS
    only_zero = accuracy([scored(1, 0, 2, 0)], 60)
    assert only_zero.mape_pct is None and only_zero.coverage == 1.0


@pytest.mark.parametrize(
    "when, tolerance, expected",
    [
        (120, 30, 2.0),  # exactly on the point at 120
        (150, 30, 2.0),  # 30 s from 120 and 30 s from 180: the earlier wins the tie
        (170, 30, 3.0),  # 10 s from 180
        (400, 30, None),  # 400 is in a gap (no point between 240 and 600): unknown, not zero
        (-100, 30, None),  # before the history
    ],
)
def test_actual_at(when, tolerance, expected):
    ts = np.array([60.0, 120, 180, 240, 600])
    rps = np.array([1.0, 2, 3, 4, 5])
    assert actual_at(ts, rps, when, tolerance) == expected


def test_score_leaves_out_points_without_an_actual():
    published = [PublishedPoint(t, 1, 0, 2) for t in (60.0, 400.0, 600.0)]
    pairs = score(published, [60, 120, 600], [1.5, 2, 3], tolerance_s=30)
    assert [(p.point.target_s, p.actual) for p in pairs] == [(60.0, 1.5), (600.0, 3.0)]


def test_published_log_keeps_one_point_per_step_and_a_bounded_window():
    log = PublishedLog(step_s=60, window_s=300)
    kept = [log.record(PublishedPoint(t, 1, 0, 2)) for t in range(0, 1200, 15)]
    assert sum(kept) == 20  # 1200 s at one point per 60 s
    # 300 s / 60 s + 1 = 6 points kept at most: the oldest went
    assert [p.target_s for p in log.points] == [840, 900, 960, 1020, 1080, 1140]
    # at 1200 the points up to 1200 - 60 = 1140 are due, those before 1200 - 300 = 900 are not
    assert [p.target_s for p in log.due(1200)] == [900, 960, 1020, 1080, 1140]
    with pytest.raises(ValueError, match="window_s >= step_s"):
        PublishedLog(step_s=60, window_s=30)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ActualRate:
    """The actual rate a Prometheus would answer: 10 QPS, except 30 QPS from t=600 to t=720."""

    def __init__(self):
        self.asked: list[tuple] = []

    def __call__(self, model, start, end, step):
        self.asked.append((model, start, end, step))
        ts = np.arange(np.ceil(start / step) * step, end + 1e-9, step)
        rps = np.where((ts >= 600) & (ts <= 720), 30.0, 10.0)
        return RateHistory(ts, rps)


def test_the_forecaster_scores_what_it_published(tmp_path):
    """A planned event of 12 QPS is the only forecast (no Prophet model): published every 15 s for
    15 minutes, kept one per minute, scored against the actual rate."""
    events = tmp_path / "events.json"
    events.write_text(
        '[{"name": "flat", "start": "1970-01-01T00:00:00+00:00", '
        '"end": "1970-01-02T00:00:00+00:00", "qps": 12}]'
    )
    cfg = ForecasterConfig.from_dict(
        {
            "models": ["m"],
            "model_dir": str(tmp_path / "models"),
            "lead_time_s": 60,
            "planned_events_file": str(events),
            "accuracy_step_s": 60,
            "accuracy_interval_s": 300,
        }
    )
    backend, clock, actual = InMemoryMetricsBackend(), Clock(0.0), ActualRate()
    publisher = ForecastPublisher(cfg, actual, backend=backend, clock=clock)
    assert publisher.accuracy_due() == []  # nothing published yet
    for t in range(0, 901, 15):
        clock.now = float(t)
        publisher.publish()
    # published at t for t + 60: targets 60, 120, ..., 960; due are those <= 900 - 60 = 840
    assert publisher.accuracy_due() == ["m"]
    figures = publisher.score_accuracy("m")
    # 14 targets 60..840; actual 30 at 600, 660, 720 (3 points above upper 12), else 10.
    # MAPE: 11 * |12-10|/10 = 20 % and 3 * |12-30|/30 = 60 % -> (11*20 + 3*60) / 14 = 28.57 %
    assert figures.points == 14
    assert figures.mape_pct == pytest.approx((11 * 20 + 3 * 60) / 14)
    # the planned figure is the whole interval [12, 12]: 10 and 30 both lie outside it
    assert figures.coverage == 0.0
    assert figures.under_forecast_minutes == pytest.approx(3.0)
    assert publisher.accuracy_due() == []  # re-scored every accuracy_interval_s (300 s)
    publisher.publish()
    tags = {"model_name": "m"}
    assert backend.get(FORECAST_SCORED_POINTS).value(**tags) == 14
    assert backend.get(FORECAST_MAPE).value(**tags) == pytest.approx(figures.mape_pct)
    assert backend.get(FORECAST_INTERVAL_COVERAGE).value(**tags) == 0.0
    assert backend.get(FORECAST_UNDER_MINUTES).value(**tags) == pytest.approx(3.0)
    status = publisher.status()["models"]["m"]["accuracy"]
    assert status["points"] == 14 and status["under_forecast_minutes"] == 3.0
    assert status["mape_pct"] == pytest.approx(28.57, abs=0.01)
    assert status["window_h"] == 72.0 and "14 of 14" in status["message"]


def test_accuracy_survives_an_unreachable_prometheus(tmp_path):
    events = tmp_path / "events.json"
    events.write_text(
        '[{"name": "flat", "start": "1970-01-01T00:00:00+00:00", '
        '"end": "1970-01-02T00:00:00+00:00", "qps": 12}]'
    )
    cfg = ForecasterConfig.from_dict(
        {"models": ["m"], "model_dir": str(tmp_path), "planned_events_file": str(events)}
    )

    def down(*_):
        raise ConnectionError("Prometheus at 127.0.0.1:9 did not answer")

    clock = Clock(0.0)
    publisher = ForecastPublisher(cfg, down, backend=InMemoryMetricsBackend(), clock=clock)
    for t in range(0, 600, 60):
        clock.now = float(t)
        publisher.publish()
    assert publisher.score_accuracy("m") == NO_POINTS
    message = publisher.status()["models"]["m"]["accuracy"]["message"]
    assert message.startswith("actual rate unavailable: ConnectionError")


def test_accuracy_settings_are_validated():
    with pytest.raises(ValueError, match="accuracy_window_h"):
        ForecasterConfig.from_dict({"accuracy_window_h": 0.001, "accuracy_step_s": 60})


def test_the_dashboard_draws_each_forecast_at_the_time_it_was_for():
    from serve_app.monitoring.dashboard_panels import FORECAST_LEAD, all_panels

    minutes = int(FORECAST_LEAD.removesuffix("m"))
    assert minutes * 60 == ForecasterConfig().lead_time_s
    panel = next(p for p in all_panels() if p.id == "forecast")
    forecasts = [q.expr for q in panel.queries if "ray_forecast_qps" in q.expr]
    assert len(forecasts) == 2 and all(f"offset {FORECAST_LEAD}" in e for e in forecasts)
