"""`predictive.mode: forecast_only`: the forecast floor is read and reported, never applied."""

from __future__ import annotations

import pytest

from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.rules import PolicyRules
from tests.unit.test_policy import MONDAY_10, PREDICTIVE, rules, sig

FORECAST_ONLY = {**PREDICTIVE, "mode": "forecast_only"}


@pytest.mark.parametrize(
    "qps, forecast, expected, code, said",
    [
        # 2 instances, 100 QPS (50 each, within 20..100), p99 100 ms below 200. The forecast 700
        # needs ceil(700 / (100 * 0.8)) = 9: scale mode goes to 9, forecast-only holds 2, says 9.
        (100, 700, 2, "hold_within", "forecast 700 QPS at +120s would need 9 instances"),
        # The load itself is above (250 / 2 = 125 > 100): ceil(250 / 100) = 3 < 2 + 2 = 4, the
        # threshold scales up as without a forecast, and the reason still carries the forecast.
        (250, 700, 4, "scale_up_threshold", "would need 9 instances, not applied"),
        # All below (10 / 2 = 5 < 20) with a forecast of 40 (1 instance): scale mode would jump
        # straight to max(1, ceil(10 / 100) = 1) = 1 (scale_down_forecast); forecast-only steps
        # down by step_down 1 as the thresholds alone do.
        (10, 40, 1, "scale_down_threshold", "forecast 40 QPS at +120s would need 1 instance"),
    ],
)
def test_forecast_only_reports_the_floor_and_never_applies_it(qps, forecast, expected, code, said):
    s = sig(2, qps=qps, p99_ms=100, forecast_qps=forecast, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive=FORECAST_ONLY))
    assert (decision.replicas, decision.code) == (expected, code)
    assert "(forecast-only: " in decision.reason and said in decision.reason, decision.reason


def test_the_same_signals_in_scale_mode_follow_the_forecast():
    s = sig(2, qps=100, p99_ms=300, forecast_qps=700, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive={**PREDICTIVE, "mode": "scale"}))
    # at least the floor of 9 (where a forecast scaling lands may add headroom above it)
    assert decision.code == "scale_up_forecast" and decision.replicas >= 9


def test_forecast_only_without_a_fresh_forecast_says_nothing_of_it():
    s = sig(2, qps=100, p99_ms=300, forecast_qps=700, forecast_fit_time=MONDAY_10 - 10_000)
    decision = decide(s, {}, MONDAY_10, rules(predictive=FORECAST_ONLY))
    assert decision.replicas == 2 and "forecast" not in decision.reason


def test_scale_is_the_default_and_other_modes_are_refused():
    assert PolicyRules.from_kwargs({"model_name": "m"}).predictive.mode == "scale"
    with pytest.raises(
        ValueError, match="predictive.mode: Input should be .scale. or .forecast_only."
    ):
        rules(predictive={**PREDICTIVE, "mode": "dry-run"})
