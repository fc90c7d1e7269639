"""Planning with a measured fleet table (`predictive.fleet_capacity_qps`): a larger fleet sustains
more per instance, so the forecast floor, the landing count and the derived QPS band size whole
fleets; without the table the policy plans with one per-replica figure as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.backtest import BacktestOptions, operator_fleet_table, policy_kwargs
from lab.simulator import SimConfig
from serve_app.autoscaling.bands import derived_qps_threshold, instance_capacity
from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.planner import (
    check_fleet_table,
    fleet_capacity,
    replicas_for_fleet_rate,
)
from serve_app.autoscaling.steps import effective_thresholds
from tests.unit.test_policy import MONDAY_10, rules, sig

# Per instance: 5 alone, 6 in a pair, 7 in four, 8 in eight.
TABLE = {1: 5.0, 2: 12.0, 4: 28.0, 8: 64.0}
PREDICTIVE = {
    "enabled": True,
    "replica_capacity_qps": 5,
    "headroom": 1.0,
    "lead_time_s": 120,
    "startup_s": 60,
    "max_forecast_age_s": 7200,
}
# No qps written: the band is derived from the capacity.
LATENCY_ONLY = {"p99_ms": {"up": 500, "down": 200}}


def fleet_rules(table: dict | None = TABLE, **overrides):
    predictive = {**PREDICTIVE, **({"fleet_capacity_qps": table} if table else {})}
    return rules(predictive=predictive, thresholds=LATENCY_ONLY, **overrides)


# ------------------------------------------------------------------------------------------
# the table's arithmetic


@pytest.mark.parametrize(
    "replicas, total",
    [
        (0, 0.0),
        (1, 5.0),
        (4, 28.0),  # a measured size is its measurement
        (3, 19.5),  # per instance halfway between 6 (2) and 7 (4): 3 x 6.5
        (6, 45.0),  # between 7 (4) and 8 (8): 6 x 7.5
        (16, 128.0),  # above the largest size: its 8 per instance, never more
    ],
)
def test_fleet_capacity_interpolates_per_instance_and_never_extrapolates_upward(replicas, total):
    assert fleet_capacity(TABLE, replicas) == pytest.approx(total)


def test_below_the_smallest_measured_size_its_per_instance_figure_holds():
    assert fleet_capacity({2: 12.0, 4: 28.0}, 1) == pytest.approx(6.0)


@pytest.mark.parametrize(
    "rate, headroom, expected",
    [
        (0, 1.0, 0),
        (5, 1.0, 1),
        (5.1, 1.0, 2),
        (19.5, 1.0, 3),  # exactly three's capacity: no float noise to 4
        (19.6, 1.0, 4),
        (64, 1.0, 8),
        (65, 1.0, 9),  # 9 x 8 = 72
        (64, 0.8, 10),  # 80 QPS of capacity: 10 x 8
        (300, 1.0, 38),  # ceil(300 / 8)
    ],
)
def test_replicas_for_fleet_rate(rate, headroom, expected):
    assert replicas_for_fleet_rate(rate, TABLE, headroom) == expected


def test_replicas_for_fleet_rate_is_the_fewest_fleet_that_carries_the_rate():
    table = {1: 4.6, 2: 10.3, 4: 22.0, 8: 47.5, 16: 99.0, 32: 205.0}
    for rate in np.linspace(0.1, 400, 997):
        n = replicas_for_fleet_rate(float(rate), table, 0.9)
        assert fleet_capacity(table, n) * 0.9 >= rate - 1e-6
        assert n == 1 or fleet_capacity(table, n - 1) * 0.9 < rate


@pytest.mark.parametrize(
    "table, words",
    [
        ({}, "at least one"),
        ({0: 5.0}, ">= 1"),
        ({1: -5.0}, "positive"),
        ({1: 5.0, 2: 4.0}, "must sustain more"),
        ({1: float("nan")}, "positive"),
    ],
)
def test_a_table_that_cannot_be_a_measurement_is_refused(table, words):
    with pytest.raises(ValueError, match=words):
        check_fleet_table(table)
    with pytest.raises(ValueError, match=words):
        fleet_rules_with(table)  # {} is refused too, not taken as absent


def fleet_rules_with(table: dict):
    return rules(predictive={**PREDICTIVE, "fleet_capacity_qps": table}, thresholds=LATENCY_ONLY)


def test_yaml_keys_are_read_as_fleet_sizes():
    table = fleet_rules_with({"1": 5, "8": 64}).predictive.fleet_capacity_qps
    assert table == {1: 5.0, 8: 64.0}


# ------------------------------------------------------------------------------------------
# the policy with the table


def test_absent_table_plans_with_one_figure_at_every_size():
    plain = fleet_rules(table=None)
    assert plain.predictive.fleet_capacity_qps is None
    assert instance_capacity(plain, 1) == instance_capacity(plain, 64) == 5
    assert derived_qps_threshold(plain, 64).up == 5


def test_the_derived_band_is_that_of_the_current_fleet():
    table_rules = fleet_rules()
    assert effective_thresholds(table_rules, None, 1).qps.up == pytest.approx(5.0)
    assert effective_thresholds(table_rules, None, 8).qps.up == pytest.approx(8.0)
    assert effective_thresholds(table_rules, None, 8).qps.down == pytest.approx(8.0 * 0.8**2)


def test_a_written_qps_band_is_not_replaced_by_the_table():
    written = rules(predictive={**PREDICTIVE, "fleet_capacity_qps": TABLE})
    assert effective_thresholds(written, None, 8).qps.up == 100


@pytest.mark.parametrize(
    "table, expected",
    [
        # one figure: ceil(300 / (5 x 0.8)) = 75
        (None, 75),
        # the table: 8 per instance past 8 instances, ceil(300 / (8 x 0.8)) = 47
        (TABLE, 47),
    ],
)
def test_the_forecast_lands_on_the_fleet_the_table_sizes(table, expected):
    s = sig(8, hi=200, qps=40, p99_ms=300, forecast_qps=300, forecast_fit_time=MONDAY_10 - 60)
    decision = decide(s, {}, MONDAY_10, fleet_rules(table=table))
    assert (decision.replicas, decision.code) == (expected, "scale_up_forecast")


@pytest.mark.parametrize(
    "table, expected",
    [
        # one figure, per instance up 5: ceil(150 / (5 x 0.8)) = 38
        (None, 38),
        # the table: 8 instances carry 64 at most, so 150 is above; the fleet that keeps it at
        # 0.8 of its capacity: ceil(150 / 6.4) = 24
        (TABLE, 24),
    ],
)
def test_the_load_need_sizes_the_fleet_by_the_table(table, expected):
    s = sig(8, hi=200, qps=150, p99_ms=300)
    decision = decide(s, {}, MONDAY_10, fleet_rules(table=table))
    assert (decision.replicas, decision.code) == (expected, "scale_up_threshold")


def test_a_fleet_within_its_own_band_holds_where_one_figure_would_scale_up():
    # 8 instances at 60 QPS: 7.5 each, above one replica's 5 but within the 8-fleet's band.
    s = sig(8, hi=200, qps=60, p99_ms=300)
    assert decide(s, {}, MONDAY_10, fleet_rules()).code == "hold_within"
    assert decide(s, {}, MONDAY_10, fleet_rules(table=None)).code == "scale_up_threshold"


# ------------------------------------------------------------------------------------------
# the backtest gives the predictive policy what an operator measures


def test_operator_table_is_the_power_of_two_sizes_of_the_measured_capacities():
    capacities = np.array([0.0] + [n * (5 + 0.1 * n) for n in range(1, 13)])
    table = operator_fleet_table(capacities)
    assert sorted(table) == [1, 2, 4, 8]
    assert table[8] == pytest.approx(8 * 5.8)


def test_the_replay_plans_with_one_figure_unless_the_measured_table_is_asked_for():
    trace = Path(__file__).resolve().parents[2] / "lab" / "traces" / "diurnal_2w.csv"

    def kwargs(predictive: bool, *policy) -> dict:
        options = BacktestOptions(trace=trace, out=Path("/tmp/unused"), policy=policy)
        return policy_kwargs(5.0, options, SimConfig(), predictive, 180.0, TABLE)["predictive"]

    assert "fleet_capacity_qps" not in kwargs(True)
    measured = ("predictive.fleet_capacity_qps", "measured")
    assert kwargs(True, measured)["fleet_capacity_qps"] == TABLE
    # Only the predictive replay gets it: reactive stays the baseline it is compared with.
    assert "fleet_capacity_qps" not in kwargs(False, measured)
