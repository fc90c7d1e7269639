"""The Forecaster's work without Ray: refit, save, reload, publish gauges, report status."""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np
import pytest

from lab.tracegen import diurnal
from serve_app.autoscaling.cover import held_upper, planned_forecast
from serve_app.autoscaling.forecast_accuracy import PublishedPoint
from serve_app.autoscaling.forecast_metrics import (
    FORECAST_PEAK_QPS,
    FORECAST_QPS,
    FORECASTER_LAST_FIT,
    FORECASTER_STATUS,
)
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.forecaster_service import ForecastPublisher, build_forecaster
from serve_app.autoscaling.planned_events import parse_planned_events
from serve_app.autoscaling.rate_history import RateHistory
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from tests.unit.test_planned_events import SALE, T0, iso

ROWS = diurnal(days=4, step_s=900, peak_rps=300.0, seed=2, spikes=[])
TIMES = np.array([t.timestamp() for t, _ in ROWS])
RATES = np.array([r for _, r in ROWS])
NOW = float(TIMES[-1]) + 900


class Clock:
    """A settable clock (time is a true boundary)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class TraceHistory:
    """History from a fixed trace, recording what was asked, or failing like an unreachable
    Prometheus."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.asked: list[tuple] = []

    def __call__(self, model, start, end, step):
        self.asked.append((model, start, end, step))
        if self.fail:
            raise ConnectionError("Prometheus at 127.0.0.1:9 did not answer")
        keep = (TIMES >= start) & (TIMES < end)
        return RateHistory(TIMES[keep], RATES[keep])


def config(tmp_path, **kw) -> ForecasterConfig:
    return ForecasterConfig.from_dict(
        {
            "models": ["m"],
            "model_dir": str(tmp_path),
            "timezone": "Asia/Shanghai",
            "history_step_s": 900,
            "forecast_step_s": 900,
            **kw,
        }
    )


@pytest.fixture(scope="module")
def refitted(tmp_path_factory):
    """One real fit, shared (Prophet takes about a second)."""
    directory = tmp_path_factory.mktemp("models")
    backend, clock, history = InMemoryMetricsBackend(), Clock(NOW), TraceHistory()
    publisher = ForecastPublisher(config(directory), history, backend=backend, clock=clock)
    state = publisher.refit("m")
    publisher.publish()
    return publisher, state, backend, clock, history, directory


def test_refit_reads_the_configured_history_window(refitted):
    _, _, _, _, history, _ = refitted
    model, start, end, step = history.asked[0]
    assert (model, end, step) == ("m", NOW, 900)
    assert end - start == 14 * 86400  # history_days default 14


def test_refit_fits_saves_and_schedules(refitted):
    publisher, state, _, _, _, directory = refitted
    assert state.status == "ok", state.message
    assert (directory / "m.json").is_file()
    assert state.next_refit == NOW + 3600  # refit_interval_s


def test_gauges_carry_the_forecast_at_now_plus_lead(refitted):
    publisher, state, backend, _, _, _ = refitted
    upper = backend.get(FORECAST_QPS).value(model_name="m", bound="upper")
    yhat = backend.get(FORECAST_QPS).value(model_name="m", bound="yhat")
    assert yhat == pytest.approx(state.forecast.at(NOW + 180, "yhat"), rel=1e-3)
    # plan_changes_per_day (16 by default): the upper bound's planned step, held to now + lead.
    steps = planned_forecast(state.forecast, 16)
    assert upper == pytest.approx(held_upper(steps, NOW, NOW + 180), rel=1e-3)
    assert upper >= state.forecast.at(NOW + 180, "upper") * (1 - 1e-3)
    assert upper >= yhat > 0
    assert backend.get(FORECAST_PEAK_QPS).value(model_name="m", bound="upper") >= upper
    assert backend.get(FORECASTER_LAST_FIT).value(model_name="m") == NOW
    assert backend.get(FORECASTER_STATUS).value(model_name="m", status="ok") == 1.0
    assert backend.get(FORECASTER_STATUS).value(model_name="m", status="error") == 0.0


def test_status_reports_the_same_figures(refitted):
    publisher, _, backend, _, _, _ = refitted
    status = publisher.status()["models"]["m"]
    assert status["status"] == "ok"
    assert status["forecast_qps"]["upper"] == pytest.approx(
        backend.get(FORECAST_QPS).value(model_name="m", bound="upper"), rel=1e-6
    )
    assert status["last_fit_age_s"] == 0.0


def test_forecast_moves_with_time(refitted):
    publisher, _, _, clock, _, _ = refitted
    before = publisher.published("m")["forecast_qps"]["upper"]
    clock.now = NOW + 6 * 3600  # from midnight to the morning: a diurnal forecast must change
    try:
        after = publisher.published("m")["forecast_qps"]["upper"]
        assert publisher.published("m")["last_fit_age_s"] == 6 * 3600
    finally:
        clock.now = NOW
    assert after != pytest.approx(before, rel=0.05)


def test_a_restarted_forecaster_loads_the_saved_model(refitted, tmp_path):
    _, state, _, _, _, directory = refitted
    backend = InMemoryMetricsBackend()
    again = ForecastPublisher(
        config(directory), TraceHistory(fail=True), backend=backend, clock=Clock(NOW + 60)
    )
    again.load_saved()
    assert again.models["m"].status == "ok"
    assert again.due() == []  # fitted at NOW, refit due at NOW + 3600
    again.publish()
    # yhat is deterministic; the interval comes from Prophet's sampling, so the reloaded upper bound
    # wobbles a little.
    assert backend.get(FORECAST_QPS).value(model_name="m", bound="yhat") == pytest.approx(
        state.forecast.at(NOW + 60 + 180, "yhat"), rel=1e-3
    )
    assert backend.get(FORECAST_QPS).value(model_name="m", bound="upper") == pytest.approx(
        state.forecast.at(NOW + 60 + 180, "upper"), rel=0.05
    )


def test_too_little_history_publishes_a_status_and_no_forecast(tmp_path):
    backend = InMemoryMetricsBackend()

    def one_day(model, start, end, step):
        return RateHistory(TIMES[:96], RATES[:96])

    publisher = ForecastPublisher(config(tmp_path), one_day, backend=backend, clock=Clock(NOW))
    state = publisher.refit("m")
    publisher.publish()
    assert state.status == "insufficient_history"
    assert state.next_refit == NOW + 300  # retry_interval_s
    assert (
        backend.get(FORECASTER_STATUS).value(model_name="m", status="insufficient_history") == 1.0
    )
    assert backend.get(FORECAST_QPS).value(model_name="m", bound="upper") is None
    assert backend.get(FORECASTER_LAST_FIT).value(model_name="m") is None


def test_prometheus_down_is_an_error_status_not_a_crash(tmp_path):
    publisher = ForecastPublisher(
        config(tmp_path),
        TraceHistory(fail=True),
        backend=InMemoryMetricsBackend(),
        clock=Clock(NOW),
    )
    with logged() as lines:
        state = publisher.refit("m")
    assert state.status == "error" and "refit failed: ConnectionError" in state.message
    assert any("did not answer" in line for line in lines)  # the operator's log has the reason
    assert publisher.due() == []  # retries after retry_interval_s, not in a tight loop


@contextlib.contextmanager
def logged():
    """The forecaster's log lines while the block runs."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def test_the_status_reply_names_files_and_errors_never_folders_or_addresses(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    cfg = config(tmp_path, planned_events_file=str(tmp_path / "plans" / "events.json"))
    publisher = ForecastPublisher(
        cfg, TraceHistory(fail=True), backend=InMemoryMetricsBackend(), clock=Clock(NOW)
    )
    publisher.load_saved()
    publisher.publish()
    # a forecast kept an hour ago, due to be scored against the (unreachable) actual rate
    publisher.models["m"].published_log.record(PublishedPoint(NOW - 3600, 1.0, 0.5, 2.0))
    with logged() as lines:
        loaded = json.dumps(publisher.status())
        publisher.refit("m")
        publisher.score_accuracy("m")
        status = publisher.status()
    text = json.dumps(status)
    for reply in (loaded, text):
        assert str(tmp_path) not in reply and "127.0.0.1" not in reply
    assert "saved model m.json unusable: ValueError" in loaded
    assert status["planned_events_file"] == "events.json"
    assert "events.json does not exist" in status["planned_events_error"]
    assert status["models"]["m"]["message"].startswith("refit failed: ConnectionError")
    assert status["models"]["m"]["accuracy"]["message"].startswith(
        "actual rate unavailable: ConnectionError"
    )
    # the log keeps what the reply leaves out
    assert sum("127.0.0.1:9" in line for line in lines) == 2


def test_corrupt_saved_model_is_reported(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    publisher = ForecastPublisher(
        config(tmp_path), TraceHistory(), backend=InMemoryMetricsBackend(), clock=Clock(NOW)
    )
    publisher.load_saved()
    assert publisher.models["m"].status == "error"
    assert "unusable" in publisher.models["m"].message
    assert publisher.due() == ["m"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"modles": ["m"]}, "modles: Extra inputs are not permitted"),
        ({"horizon_h": 0.01, "lead_time_s": 600}, "must reach beyond lead_time_s"),
        ({"timezone": "Atlantis/Capital"}, "unknown time zone"),
        ({"refit_interval_s": 5}, "refit_interval_s"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ValueError) as info:
        ForecasterConfig.from_dict(raw)
    assert message in str(info.value)


def test_build_forecaster_binds_one_deployment_without_starting_ray(tmp_path):
    import ray

    app = build_forecaster({"models": ["m"], "model_dir": str(tmp_path)})
    assert type(app).__name__ == "Application"
    # No logical CPU by default: it must not keep a recognizer replica from being placed.
    assert app._bound_deployment.ray_actor_options["num_cpus"] == 0
    busy = build_forecaster({"models": ["m"], "model_dir": str(tmp_path), "num_cpus": 0.25})
    assert busy._bound_deployment.ray_actor_options["num_cpus"] == 0.25
    assert not ray.is_initialized()
    with pytest.raises(ValueError, match="invalid forecaster config"):
        build_forecaster({"refit_interval_s": -1})


# Planned events through the publisher


def test_planned_event_publishes_without_prophet_and_clears_after_it(tmp_path):
    events = tmp_path / "events.json"
    events.write_text(json.dumps([SALE]))
    backend, clock = InMemoryMetricsBackend(), Clock(T0)
    publisher = ForecastPublisher(
        config(tmp_path, planned_events_file=str(events)),
        TraceHistory(fail=True),
        backend=backend,
        clock=clock,
    )

    def gauges():
        return (
            backend.get(FORECAST_QPS).value(model_name="m", bound="upper"),
            backend.get(FORECASTER_LAST_FIT).value(model_name="m"),
        )

    publisher.publish()
    assert gauges() == (
        None,
        None,
    )  # T0 + 180 (lead) is before the sale: nothing known, nothing published
    status = publisher.status()["models"]["m"]
    assert (
        status["forecast_source"] == "planned_only" and "planned events only" in status["message"]
    )
    assert (
        status["planned_events"][0]["name"] == "sale" and not status["planned_events"][0]["active"]
    )
    assert status["forecast_peak_qps"] == {
        "yhat": 500,
        "upper": 500,
    }  # the sale is within the horizon

    clock.now = T0 + 600 - 180  # the lead time reaches the sale's start
    publisher.publish()
    assert gauges() == (500, T0 + 420)  # the plan is as fresh as this read
    clock.now = T0 + 1800 - 180 + 1  # now + lead is past the sale's end
    publisher.publish()
    assert gauges() == (0.0, 0.0)  # cleared: fit time 0 is older than any max_forecast_age_s
    publisher.publish()
    assert gauges() == (0.0, 0.0)


def test_without_a_plan_the_gauge_carries_the_upper_bound_as_forecast(refitted):
    _, _, _, _, _, directory = refitted
    publisher = ForecastPublisher(
        config(directory, plan_changes_per_day=None),
        TraceHistory(fail=True),
        backend=InMemoryMetricsBackend(),
        clock=Clock(NOW),
    )
    publisher.load_saved()
    upper = publisher.published("m")["forecast_qps"]["upper"]
    forecast = publisher.models["m"].forecast
    assert upper == pytest.approx(forecast.at(NOW + 180, "upper"), rel=1e-3)


def test_planned_steps_change_at_most_the_budget_and_stay_fixed_between_publishes(refitted):
    publisher, state, _, clock, _, _ = refitted
    steps = publisher._planned(publisher.models["m"], state.forecast)
    assert publisher._planned(publisher.models["m"], state.forecast) is steps  # made once
    changes = int(np.count_nonzero(np.diff(steps.upper)))
    span_days = (steps.timestamps[-1] - steps.timestamps[0]) / 86400
    assert 0 < changes <= 16 * span_days
    original = state.forecast
    assert all(
        steps.at(t) >= u - 1e-9 for t, u in zip(original.timestamps, original.upper, strict=True)
    )
    # Between two points the steps hold a level, never a ramp: one scale event per step.
    levels = {round(steps.at(t + 1.0), 6) for t in original.timestamps[:-1]}
    assert len(levels) <= changes + 1


def test_planned_event_raises_a_prophet_forecast(refitted, tmp_path):
    publisher, state, _, _, _, _ = refitted
    prophet_upper = publisher.published("m", [])["forecast_qps"]["upper"]
    high = {"name": "launch", "start": iso(NOW), "end": iso(NOW + 3600), "qps": prophet_upper * 3}
    low = {**high, "qps": prophet_upper / 3}
    with_high = publisher.published("m", parse_planned_events(json.dumps([high])))
    assert with_high["forecast_qps"]["upper"] == pytest.approx(prophet_upper * 3, rel=1e-3)
    assert with_high["last_fit_age_s"] == 0.0  # the published figure is the plan
    with_low = publisher.published("m", parse_planned_events(json.dumps([low])))
    assert with_low["forecast_qps"]["upper"] == pytest.approx(prophet_upper, rel=1e-3)
    assert with_low["last_fit_timestamp"] == state.forecast.fitted_at


def test_publish_interval_may_be_one_second():
    assert ForecasterConfig.from_dict({"publish_interval_s": 1}).publish_interval_s == 1
    with pytest.raises(ValueError, match="publish_interval_s"):
        ForecasterConfig.from_dict({"publish_interval_s": 0.5})


def test_a_status_read_while_the_fit_predicts_never_says_ok_without_a_forecast(
    tmp_path, monkeypatch
):
    # status() runs on the replica's event loop while refit() predicts in a worker thread (seconds
    # with Prophet): what it reads in between must be the state before the fit or after it.
    from serve_app.autoscaling import forecaster_service

    publisher = ForecastPublisher(config(tmp_path), TraceHistory(), clock=Clock(NOW))
    seen = []
    predict = forecaster_service.RateForecaster.predict

    def predict_and_look(self, *args, **kwargs):
        state = publisher.models["m"]
        seen.append((state.status, state.forecast is None))
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(forecaster_service.RateForecaster, "predict", predict_and_look)
    state = publisher.refit("m")
    assert state.status == "ok" and state.forecast is not None
    assert len(seen) == 1
    assert seen[0] != ("ok", True), seen
