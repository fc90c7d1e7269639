"""The learned forecast margin (`predictive.plan_on: learned`): what it learns from, what it plans
on, and that the upper bound stays the plan until it knows enough."""

from __future__ import annotations

import pytest

from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.margin import (
    SAMPLE_S,
    learned_margin,
    planning_signals,
    record_samples,
)
from serve_app.autoscaling.queries import default_queries
from serve_app.autoscaling.rules import PolicyRules
from serve_app.autoscaling.signals import Signals

T0 = 1_717_380_000.0  # a Monday 02:00 UTC; only differences matter
LEAD = 120.0


def rules(**predictive) -> PolicyRules:
    base = {
        "enabled": True,
        "replica_capacity_qps": 100,
        "headroom": 1.0,
        "lead_time_s": LEAD,
        "startup_s": 60,
        "max_forecast_age_s": 7200,
        "plan_on": "learned",
        "margin_min_samples": 5,
    }
    base.update(predictive)
    return PolicyRules.from_kwargs(
        {"model_name": "m", "cooldown_down_s": 300, "predictive": base, "target_fill": 0.8}
    )


def sig(current: int, qps: float, yhat: float | None, upper: float | None, now: float) -> Signals:
    return Signals(
        running_replicas=current,
        target_replicas=current,
        min_replicas=1,
        max_replicas=50,
        qps=qps,
        p99_ms=100.0,
        forecast_qps=upper,
        forecast_yhat_qps=yhat,
        forecast_fit_time=now - 60,
    )


def replay(r: PolicyRules, minutes: int, yhat: float, actual: float) -> dict:
    """The margin's state after `minutes` of a forecast of `yhat` and a measured rate of
    `actual`."""
    state: dict = {}
    for i in range(minutes):
        now = T0 + i * SAMPLE_S
        state = record_samples(state, sig(4, actual, yhat, 1.1 * yhat, now), now, r, fresh=True)
    return state


def test_margin_is_the_quantile_of_actual_over_yhat_with_a_floor():
    ratios = [[T0 + i, x] for i, x in enumerate([0.9, 1.0, 1.02, 1.05, 1.3])]
    assert learned_margin(ratios, rules(margin_quantile=0.5)) == pytest.approx(1.02)
    assert learned_margin(ratios, rules(margin_quantile=1.0)) == pytest.approx(1.3)
    # The forecast ran high: the quantile (0.9) is below the floor, which wins.
    low = [[T0 + i, 0.9] for i in range(5)]
    assert learned_margin(low, rules(margin_floor=0.95)) == pytest.approx(0.95)
    assert learned_margin(low[:4], rules()) is None  # fewer than margin_min_samples


def test_a_yhat_is_compared_with_the_rate_measured_a_lead_time_later():
    r = rules()
    state = record_samples({}, sig(4, 50, 200, 220, T0), T0, r, fresh=True)
    assert state["margin_pending"] == [[T0 + LEAD, 200.0]]
    assert state["margin_ratios"] == []
    # Before its time the yhat waits; at its time the rate then (250) is compared with it.
    state = record_samples(state, sig(4, 999, None, None, T0 + 60), T0 + 60, r, fresh=False)
    assert state["margin_ratios"] == []
    state = record_samples(state, sig(4, 250, None, None, T0 + LEAD), T0 + LEAD, r, fresh=False)
    assert state["margin_ratios"] == [[T0 + LEAD, pytest.approx(1.25)]]
    assert state["margin_pending"] == []


def test_samples_are_one_a_minute_and_forgotten_after_the_window():
    r = rules(margin_window_s=600)
    state: dict = {}
    for second in range(0, 3600, 10):
        now = T0 + second
        state = record_samples(state, sig(4, 100, 100, 110, now), now, r, fresh=True)
    ratios = state["margin_ratios"]
    assert 9 <= len(ratios) <= 11  # 600 s of one-a-minute samples, not 60 of one every 10 s
    assert all(t > T0 + 3600 - 10 - 600 for t, _ in ratios)
    assert len(state["margin_pending"]) <= LEAD / SAMPLE_S + 1


def test_a_stale_or_missing_forecast_records_nothing_to_learn_from():
    r = rules()
    assert record_samples({}, sig(4, 50, 200, 220, T0), T0, r, fresh=False)["margin_pending"] == []
    none = record_samples({}, sig(4, 50, None, 220, T0), T0, r, fresh=True)
    assert none["margin_pending"] == []


@pytest.mark.parametrize(
    "actual, planned, expected",
    [
        # Forecast right (actual = yhat): margin 1.0, the plan is yhat 400, whose floor
        # ceil(400 / 100) = 4 holds the 4 instances, where the upper bound (440) would scale to
        # ceil(440 / 80) = 6.
        (400.0, 400.0, 4),
        # Forecast 20% low: margin 1.2, the plan is 480 -> floor 5 > 4, landing ceil(480 / 80) = 6.
        (480.0, 480.0, 6),
    ],
)
def test_the_floor_plans_on_yhat_times_the_learned_margin(actual, planned, expected):
    r = rules()
    state = replay(r, 10, yhat=400.0, actual=actual)
    now = T0 + 10 * SAMPLE_S
    signals = sig(4, 300, 400.0, 440.0, now)
    planning, why = planning_signals(signals, state, r)
    assert planning.forecast_qps == pytest.approx(planned)
    assert why == f"yhat 400 QPS x learned margin {planned / 400:.2f}"
    # 4 instances at 300 QPS are within the band (64..100 each); the forecast floor decides.
    decision = decide(signals, state, now, r)
    assert decision.replicas == expected
    assert decision.state["margin_ratios"][-1][1] == pytest.approx(300 / 400)


def test_until_enough_samples_the_upper_bound_is_the_plan():
    r = rules(margin_min_samples=1000)
    state = replay(r, 10, yhat=400.0, actual=400.0)
    now = T0 + 10 * SAMPLE_S
    decision = decide(sig(4, 300, 400.0, 440.0, now), state, now, r)
    assert decision.replicas == 6  # floor ceil(440 / 100) = 5 > 4, landing ceil(440 / 80)
    assert "learned margin" not in decision.reason


def test_the_default_plans_on_the_upper_bound_and_keeps_no_samples():
    r = rules(plan_on="upper")
    state = replay(rules(), 10, yhat=400.0, actual=400.0)
    now = T0 + 10 * SAMPLE_S
    decision = decide(sig(4, 300, 400.0, 440.0, now), state, now, r)
    assert decision.replicas == 6
    assert "learned margin" not in decision.reason
    fresh = decide(sig(4, 300, 400.0, 440.0, now), {}, now, r)
    assert "margin_ratios" not in fresh.state and "margin_pending" not in fresh.state


def test_the_policy_reads_yhat_from_the_forecasters_yhat_series_only_when_it_plans_on_it():
    queries = default_queries(rules())
    assert queries["forecast_yhat_qps"] == 'max(ray_forecast_qps{model_name="m",bound="yhat"})'
    assert "forecast_yhat_qps" not in default_queries(rules(plan_on="upper"))


def test_margin_settings_are_checked():
    with pytest.raises(ValueError, match="margin_quantile"):
        rules(margin_quantile=0.3)
    with pytest.raises(ValueError, match="plan_on"):
        rules(plan_on="lower")


def test_a_yhat_that_came_due_unseen_is_dropped_not_compared_with_a_later_rate():
    r = rules()
    state = record_samples({}, sig(4, 50, 200, 220, T0), T0, r, fresh=True)
    # Five minutes past its time (no call in between): the rate now says nothing about then.
    later = T0 + LEAD + 300
    state = record_samples(state, sig(4, 400, None, None, later), later, r, fresh=False)
    assert state["margin_ratios"] == [] and state["margin_pending"] == []
    # Due while the rate was unknown (Prometheus away): dropped as well.
    state = record_samples({}, sig(4, 50, 200, 220, T0), T0, r, fresh=True)
    blind = Signals(running_replicas=4, target_replicas=4, min_replicas=1, max_replicas=50)
    state = record_samples(state, blind, T0 + LEAD, r, fresh=False)
    assert state["margin_ratios"] == [] and state["margin_pending"] == []
