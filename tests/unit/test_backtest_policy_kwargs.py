"""The policies the backtest replays: reactive and predictive get the same calibrated capacity and
thresholds (one change at a time between them), and tuning overrides reach both."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.backtest import BacktestOptions, policy_kwargs
from lab.simulator import SimConfig
from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.rules import PolicyRules
from serve_app.autoscaling.signals import Signals

TRACE = Path(__file__).resolve().parents[2] / "lab" / "traces" / "diurnal_2w.csv"
NOW = 1_717_380_000.0


def kwargs_of(predictive: bool, **options) -> dict:
    opts = BacktestOptions(trace=TRACE, out=Path("/tmp/unused"), **options)
    return policy_kwargs(10.0, opts, SimConfig(), predictive, 180.0)


def test_reactive_and_predictive_plan_with_the_same_capacity():
    reactive, predictive = kwargs_of(False), kwargs_of(True)
    assert reactive["predictive"]["replica_capacity_qps"] == 10.0
    assert predictive["predictive"]["replica_capacity_qps"] == 10.0
    assert reactive["predictive"]["headroom"] == predictive["predictive"]["headroom"]
    assert reactive["thresholds"] == predictive["thresholds"]
    assert reactive["predictive"]["enabled"] is False
    assert predictive["predictive"]["enabled"] is True


def test_a_slow_models_latency_does_not_pin_reactive_at_its_maximum():
    # 20 instances of a 10 req/s model carrying 40 req/s (2 each, below the band's 5) while p99 sits
    # at 300 ms, above p99's `down` (200 ms) as a slow model's does at any load: knowing the
    # capacity, reactive scales down to what the load needs.
    rules = PolicyRules.from_kwargs(kwargs_of(False))
    slow = Signals(
        running_replicas=20,
        target_replicas=20,
        min_replicas=1,
        max_replicas=30,
        qps=40.0,
        p99_ms=300.0,
    )
    decision = decide(slow, {}, NOW, rules)
    assert decision.code == "scale_down_threshold"
    assert decision.replicas == 6  # ceil(40 / (0.8 x 0.95 x 10)) = ceil(5.26)
    # Without the capacity (the replay before this fix) the same reading holds the fleet at 20.
    unknown = kwargs_of(False)
    unknown["predictive"] = {"enabled": False}
    assert decide(slow, {}, NOW, PolicyRules.from_kwargs(unknown)).replicas == 20


def test_policy_overrides_reach_both_replayed_policies():
    overrides = (("target_fill", 0.9), ("predictive.follow_down", False))
    for predictive in (False, True):
        kwargs = kwargs_of(predictive, policy=overrides)
        assert kwargs["target_fill"] == 0.9
        assert kwargs["predictive"]["follow_down"] is False
        assert kwargs["predictive"]["replica_capacity_qps"] == 10.0


def test_suite_policy_settings_read_as_yaml(tmp_path, capsys):
    from lab.cli_common import policy_setting
    from lab.suite_cli import main_backtest_suite

    assert policy_setting("predictive.follow_down=false") == ("predictive.follow_down", False)
    assert policy_setting("target_fill=0.9") == ("target_fill", 0.9)
    code = main_backtest_suite(["--out", str(tmp_path), "--policy", "target_fill"])
    assert code == 2
    assert "--policy takes KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


def test_predictive_lands_as_the_forecaster_plans_by_default():
    from serve_app.autoscaling.forecaster_config import ForecasterConfig

    shipped = ForecasterConfig().plan_changes_per_day
    assert BacktestOptions(trace=TRACE, out=Path("/tmp/unused")).plan_changes_per_day == shipped
    assert kwargs_of(True)["predictive"]["landing"] == "floor"
    assert kwargs_of(True, plan_changes_per_day=None)["predictive"]["landing"] == "target_fill"


def test_plan_changes_reads_a_count_or_off():
    from lab.cli_common import plan_changes

    assert plan_changes("12") == 12
    assert plan_changes("off") is None
    with pytest.raises(ValueError, match="--plan-changes"):
        plan_changes("0")
    with pytest.raises(ValueError, match="--plan-changes"):
        BacktestOptions(trace=TRACE, out=Path("/tmp/unused"), plan_changes_per_day=0)
