"""The autoscaling policy's forecast floor without Ray: planned scale-ups, scale-downs the forecast
stops or leads, and a stale forecast."""

from __future__ import annotations

import pytest

from serve_app.autoscaling.decide import decide
from tests.unit.test_policy import MONDAY_10, PREDICTIVE, rules, sig


@pytest.mark.parametrize(
    "forecast, fit_age_s, expected, code",
    [
        # Floor ceil(700 / (100 * 0.8)) = 9 > 2 while the load is calm; the scale-up lands at
        # target_fill: ceil(700 / (100 * 0.8 * 0.8)) = ceil(10.9) = 11, so the next rise of the
        # forecast does not add one instance at a time.
        (700, 600, 11, "scale_up_forecast"),
        (150, 600, 2, "hold_within"),  # ceil(150 / 80) = 2 = current
        (700, 8000, 2, "hold_within"),  # fitted 8000 s ago > 7200: stale, ignored
        (None, None, 2, "hold_within"),  # no forecast: reactive only
    ],
)
def test_forecast_floor(forecast, fit_age_s, expected, code):
    # 2 instances at 100 QPS: 50 each, within 20..100; p99 within.
    s = sig(
        2,
        hi=20,
        qps=100,
        p99_ms=300,
        forecast_qps=forecast,
        forecast_fit_time=None if fit_age_s is None else MONDAY_10 - fit_age_s,
    )
    decision = decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE))
    assert (decision.replicas, decision.code) == (expected, code)


def test_forecast_scale_up_is_planned_and_skips_the_up_cooldown():
    s = sig(2, hi=20, qps=100, p99_ms=300, forecast_qps=700, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(
        s, {"last_scale_up_s": MONDAY_10 - 5}, MONDAY_10, rules(predictive=PREDICTIVE)
    )
    assert decision.replicas == 11
    assert decision.reason == (
        "forecast 700 QPS at +120s needs 9 instances, 11 at target_fill, scaling up: 2 → 11 "
        "instances"
    )


def test_stale_forecast_says_so_nowhere_it_scales():
    # A stale forecast must never raise the target.
    s = sig(2, qps=100, p99_ms=300, forecast_qps=5000, forecast_fit_time=MONDAY_10 - 10_000)
    assert decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE)).replicas == 2


@pytest.mark.parametrize(
    "qps, forecast, expected, code",
    [
        # 6 instances, 300 QPS (50 each, within 20..100): the load band holds, but the forecast
        # lands at ceil(160 / 64) = 3 and the load needs ceil(300 / 80) = 4 <= 0.8 * 6: down to 4
        # (follow_down), never below what the load needs.
        (300, 160, 4, "scale_down_forecast"),
        # 60 QPS (10 each < 20, below): the load needs ceil(60 / 80) = 1, the forecast lands at
        # ceil(160 / (100 * 0.8 * 0.8)) = ceil(2.5) = 3: down to 3, not to 1.
        (60, 160, 3, "scale_down_threshold"),
        # Forecast 330: floor ceil(330 / 80) = 5 <= 6, landing ceil(330 / 64) = 6: hold at 6.
        (60, 330, 6, "hold_forecast"),
        # Forecast rising (floor ceil(700 / 80) = 9 > 6) beats the calm present: lands at
        # ceil(700 / 64) = 11 -> max_replicas 10.
        (300, 700, 10, "scale_up_forecast"),
    ],
)
def test_forecast_stops_a_scale_down_at_its_landing(qps, forecast, expected, code):
    s = sig(6, qps=qps, p99_ms=100, forecast_qps=forecast, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE))
    assert (decision.replicas, decision.code) == (expected, code)


@pytest.mark.parametrize(
    "current, qps, forecast, remembered, expected, code",
    [
        # The load needs ceil(300 / 80) = 4, the forecast lands at ceil(160 / 64) = 3: 6 -> 4.
        (6, 300, 160, None, 4, "scale_down_forecast"),
        # The forecast lands higher, ceil(250 / 64) = 4, than the load's 3 (200 QPS): 6 -> 4.
        (6, 200, 250, None, 4, "scale_down_forecast"),
        # 5 instances: 4 would be 0.8 x 5, a fleet at most 1 / target_fill too big, so it goes.
        (5, 300, 160, None, 4, "scale_down_forecast"),
        # 5 instances needing 5 (390 QPS, ceil(390 / 80) = 5): nothing to shed.
        (5, 390, 160, None, 5, "hold_within"),
        # The load needed 5 within the down window (a burst a minute ago): 6 -> 5 would be
        # 0.83 x 6, less than 1 / target_fill too big, so it holds.
        (6, 300, 160, 5, 6, "hold_within"),
        # A forecast that lands at 5 holds 6 the same way (ceil(300 / 64) = 5).
        (6, 200, 300, None, 6, "hold_within"),
    ],
)
def test_forecast_leads_a_scale_down_with_hysteresis(
    current, qps, forecast, remembered, expected, code
):
    s = sig(current, qps=qps, p99_ms=300, forecast_qps=forecast, forecast_fit_time=MONDAY_10 - 60)
    state = {}
    if remembered is not None:
        state["need_window"] = [[MONDAY_10 - 60, remembered]]
    decision = decide(s, state, MONDAY_10, rules(predictive=PREDICTIVE))
    assert (decision.replicas, decision.code) == (expected, code)


def test_forecast_led_scale_down_is_off_with_follow_down_false():
    s = sig(6, qps=300, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive={**PREDICTIVE, "follow_down": False}))
    assert (decision.replicas, decision.code) == (6, "hold_within")


def test_forecast_led_scale_down_waits_for_the_down_cooldown_and_a_fresh_forecast():
    s = sig(6, qps=300, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
    r = rules(predictive=PREDICTIVE)
    cooling = decide(s, {"last_scale_up_s": MONDAY_10 - 100}, MONDAY_10, r)
    assert cooling.replicas == 6
    stale = sig(6, qps=300, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 9000)
    assert decide(stale, {}, MONDAY_10, r).replicas == 6


def test_forecast_led_scale_down_is_not_undone_by_the_next_periods():
    # Down to 4 on a falling forecast; the same load and forecast for the next ten minutes keep 4.
    r = rules(predictive=PREDICTIVE)
    state, replicas = {}, 6
    targets = []
    for k in range(600):
        s = sig(replicas, qps=300, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
        decision = decide(s, state, MONDAY_10 + k, r)
        state, replicas = decision.state, decision.replicas
        targets.append(replicas)
    assert targets[0] == 4 and set(targets) == {4}


def test_forecast_scale_down_respects_the_down_cooldown():
    s = sig(6, qps=60, p99_ms=100, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(
        s, {"last_scale_down_s": MONDAY_10 - 100}, MONDAY_10, rules(predictive=PREDICTIVE)
    )
    assert (decision.replicas, decision.code) == (6, "cooldown_down")


def test_forecast_floor_holds_a_threshold_scale_down():
    # All below (10 QPS each), but the forecast needs ceil(300/80) = 4 = current: hold.
    s = sig(4, qps=40, p99_ms=100, forecast_qps=300, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE))
    assert (decision.replicas, decision.code) == (4, "hold_forecast")
