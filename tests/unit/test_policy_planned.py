"""The policy on a planned forecast (`predictive.landing: floor`): it lands on the plan's steps
instead of target_fill above them, and follows the plan down to what keeps the load at
follow_down_fill of `up`."""

from __future__ import annotations

import pytest

from serve_app.autoscaling.decide import decide
from tests.unit.test_policy import MONDAY_10, PREDICTIVE, rules, sig

PLANNED = {**PREDICTIVE, "landing": "floor"}


def test_a_planned_scale_up_lands_on_the_floor():
    # Floor ceil(700 / (100 * 0.8)) = 9; target_fill would land at 11.
    s = sig(2, hi=20, qps=100, p99_ms=300, forecast_qps=700, forecast_fit_time=MONDAY_10 - 60)
    planned = decide(s, {}, MONDAY_10, rules(predictive=PLANNED))
    assert (planned.replicas, planned.code) == (9, "scale_up_forecast")
    assert "target_fill" not in planned.reason
    assert decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE)).replicas == 11


@pytest.mark.parametrize(
    "predictive, expected, code",
    [
        # 6 instances at 390 QPS (65 each, within 20..100), the plan at ceil(160 / 80) = 2. The
        # load at follow_down_fill (0.85) of up needs ceil(390 / 85) = 5: 6 -> 5.
        (PLANNED, 5, "scale_down_forecast"),
        # At target_fill the load needs ceil(390 / 80) = 5 > 0.8 x 6: the band holds 6.
        (PREDICTIVE, 6, "hold_within"),
        # follow_down_fill 1.0: what keeps the load under up, ceil(390 / 100) = 4.
        ({**PLANNED, "follow_down_fill": 1.0}, 4, "scale_down_forecast"),
    ],
)
def test_a_planned_forecast_leads_down_to_follow_down_fill(predictive, expected, code):
    s = sig(6, qps=390, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, rules(predictive=predictive))
    assert (decision.replicas, decision.code) == (expected, code)


def test_the_plan_holds_a_fleet_the_load_needed_within_the_down_window():
    s = sig(6, qps=390, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 60)
    state = {"need_window": [[MONDAY_10 - 60, 6]]}
    decision = decide(s, state, MONDAY_10, rules(predictive=PLANNED))
    assert (decision.replicas, decision.code) == (6, "hold_within")


@pytest.mark.parametrize("qps", [60, 390, 700])
def test_without_a_fresh_forecast_floor_landing_decides_like_the_default(qps):
    # Stale: fitted 9000 s ago, past max_forecast_age_s (7200).
    s = sig(6, qps=qps, p99_ms=300, forecast_qps=160, forecast_fit_time=MONDAY_10 - 9000)
    planned = decide(s, {}, MONDAY_10, rules(predictive=PLANNED))
    default = decide(s, {}, MONDAY_10, rules(predictive=PREDICTIVE))
    assert (planned.replicas, planned.code, planned.state) == (
        default.replicas,
        default.code,
        default.state,
    )
