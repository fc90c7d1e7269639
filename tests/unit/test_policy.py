"""The autoscaling policy without Ray: its rules, decide() step by step, and its queries."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.queries import default_queries
from serve_app.autoscaling.rules import PolicyRules, TimeWindow
from serve_app.autoscaling.signals import Signals
from serve_app.autoscaling.steps import active_window

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(text: str, zone: ZoneInfo = SHANGHAI) -> float:
    """Unix seconds of a local wall-clock time, e.g. '2024-06-03 10:00' (a Monday)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=zone).timestamp()


MONDAY_10 = at("2024-06-03 10:00")


def rules(**overrides) -> PolicyRules:
    base = {
        "deployment": "recognizer",
        "model_name": "m",
        "timezone": "Asia/Shanghai",
        "step_up": 2,
        "step_down": 1,
        "cooldown_up_s": 30,
        "cooldown_down_s": 300,
        "thresholds": {
            "qps": {"up": 100, "down": 20},
            "p99_ms": {"up": 500, "down": 200},
            "gpu_utilization": {"up": 0.7, "down": 0.3},
        },
    }
    base.update(overrides)
    return PolicyRules.from_kwargs(base)


def sig(
    replicas: int = 1, running: int | None = None, lo: int = 1, hi: int = 10, **values
) -> Signals:
    return Signals(
        running_replicas=replicas if running is None else running,
        target_replicas=replicas,
        min_replicas=lo,
        max_replicas=hi,
        **values,
    )


# ------------------------------------------------------------------------------------------
# thresholds


@pytest.mark.parametrize(
    "signals, expected, code",
    [
        # The seeds' example: 1 instance at 132 QPS > 100 -> 1 + step_up 2 = 3 (ceil(132/100) = 2 is
        # fewer).
        (sig(1, qps=132, p99_ms=300, gpu_utilization=0.5), 3, "scale_up_threshold"),
        # 3 instances at 1200 QPS: 400 each > 100; landing at target_fill 0.8 needs
        # ceil(1200 / (0.8 * 100)) = 15, more than 3 + 2 = 5 -> max_replicas 10... so use 600:
        # 200 each > 100, ceil(600 / 80) = ceil(7.5) = 8 beats 3 + 2 = 5.
        (sig(3, qps=600, p99_ms=300, gpu_utilization=0.5), 8, "scale_up_threshold"),
        # Only p99 is above (640 > 500): 4 + 2 = 6 beats the load signals' landing needs, QPS
        # ceil(200 / 80) = 3 and GPU ceil(4 * 0.5 / (0.8 * 0.7)) = ceil(3.6) = 4.
        (sig(4, qps=200, p99_ms=640, gpu_utilization=0.5), 6, "scale_up_threshold"),
        # GPU 0.98 > 0.7 on 4: max(4 + 2, ceil(4 * 0.98 / (0.8 * 0.7)) = ceil(7.0) = 7) = 7.
        (sig(4, qps=200, p99_ms=300, gpu_utilization=0.98), 7, "scale_up_threshold"),
        (
            sig(8, qps=200, p99_ms=300, gpu_utilization=0.98),
            10,
            "scale_up_threshold",
        ),  # on 8: max(8 + 2, ceil(8 * 0.98 / 0.56) = 14) -> max_replicas 10
        # All below (10 each < 20, 150 < 200 ms, 0.2 < 0.3): down to what the load needs at
        # target_fill, max(QPS ceil(50 / 80) = 1, GPU ceil(5 * 0.2 / 0.56) = ceil(1.8) = 2) = 2.
        (sig(5, qps=50, p99_ms=150, gpu_utilization=0.2), 2, "scale_down_threshold"),
        # One signal within its band (p99 300 between 200 and 500) holds.
        (sig(5, qps=50, p99_ms=300, gpu_utilization=0.2), 5, "hold_within"),
        # Any above wins over others below: 1 instance at 132 QPS with idle GPU still scales up.
        (sig(1, qps=132, p99_ms=100, gpu_utilization=0.1), 3, "scale_up_threshold"),
        # A missing signal is left out: QPS and p99 below, GPU absent (CPU host) -> down 2 -> 1.
        (sig(2, qps=10, p99_ms=100), 1, "scale_down_threshold"),
        # All below on 1, but 5 QPS still needs ceil(5 / 80) = 1 instance: hold.
        (sig(1, qps=5, p99_ms=100, gpu_utilization=0.1), 1, "hold_needed"),
        # No load at all needs 0; min_replicas 1 keeps one.
        (sig(2, qps=0, p99_ms=100), 1, "scale_down_threshold"),
    ],
)
def test_threshold_rules(signals, expected, code):
    decision = decide(signals, {}, MONDAY_10, rules())
    assert (decision.replicas, decision.code) == (expected, code)


def test_scale_up_reason_uses_the_users_words():
    decision = decide(sig(1, qps=132, p99_ms=300), {}, MONDAY_10, rules())
    assert decision.reason == "QPS=132 > 100, scaling up: 1 → 3 instances"
    with_more = decide(sig(3, qps=390, p99_ms=300), {}, MONDAY_10, rules())
    assert with_more.reason == "QPS=390 (130 per instance) > 100, scaling up: 3 → 5 instances"


def test_scale_down_lands_at_target_fill_not_at_the_up_threshold():
    # qps band 60..100: 5 instances at 250 QPS is 50 each (< 60, below). Landing exactly at `up`
    # (ceil(250 / 100) = 3, 83 each) would leave 17% to the next scale-up; at target_fill 0.8 it is
    # ceil(250 / 80) = ceil(3.1) = 4 (62.5 each), step_down not used: the load says how many.
    r = rules(step_down=3, thresholds={"qps": {"up": 100, "down": 60}})
    decision = decide(sig(5, qps=250), {}, MONDAY_10, r)
    assert (decision.replicas, decision.code) == (4, "scale_down_threshold")


def test_step_down_applies_when_no_load_signal_sizes_the_fleet():
    # Only p99 is configured (it cannot say how many instances the load needs): 5 - step_down 2.
    r = rules(step_down=2, thresholds={"p99_ms": {"up": 500, "down": 200}})
    assert decide(sig(5, p99_ms=100), {}, MONDAY_10, r).replicas == 3


def test_p99_alone_waits_for_starting_instances():
    # Target 6 but 4 running: p99 is still high because 2 instances are starting, so no further
    # step.
    decision = decide(sig(6, running=4, qps=300, p99_ms=900), {}, MONDAY_10, rules())
    assert (decision.replicas, decision.code) == (6, "hold_starting")
    assert "waiting for 2 instances starting" in decision.reason


@pytest.mark.parametrize(
    "lo, hi, signals, expected, limit",
    [
        (1, 10, sig(9, lo=1, hi=10, qps=2000), 10, "max_replicas=10"),  # ceil(2000/100) = 20 -> 10
        (
            2,
            10,
            sig(2, lo=2, hi=10, qps=1, p99_ms=50),
            2,
            None,
        ),  # 2 - 1 = 1 -> min 2 (no change, no note)
    ],
)
def test_bounds(lo, hi, signals, expected, limit):
    decision = decide(signals, {}, MONDAY_10, rules())
    assert decision.replicas == expected
    if limit:
        assert f"limited by {limit}" in decision.reason


def test_rules_can_narrow_serve_bounds():
    decision = decide(sig(3, qps=2000, lo=1, hi=10), {}, MONDAY_10, rules(max_replicas=6))
    assert decision.replicas == 6


# ------------------------------------------------------------------------------------------
# cooldowns


def run_periods(r: PolicyRules, signals_at, start: float, periods: int, period_s: float = 1.0):
    """Loop control periods like the controller: feed each decision back as the next target."""
    state, target, history = {}, signals_at(0).target_replicas, []
    for i in range(periods):
        s = signals_at(i)
        s = Signals(**{**s.__dict__, "target_replicas": target, "running_replicas": target})
        decision = decide(s, state, start + i * period_s, r)
        state, target = decision.state, decision.replicas
        history.append(target)
    return history


def test_up_cooldown_spaces_scale_ups_by_30s():
    # p99 stuck at 900 > 500 ms (not proportional): every allowed period adds step_up 2.
    history = run_periods(rules(), lambda i: sig(1, qps=50, p99_ms=900), MONDAY_10, 65)
    assert history[0] == 3  # t=0: 1 -> 3
    assert history[29] == 3  # t=29: still cooling down (30 s)
    assert history[30] == 5  # t=30: 3 -> 5
    assert history[60] == 7  # t=60: 5 -> 7
    assert sorted(set(history)) == [3, 5, 7]


def test_down_cooldown_waits_300s_after_any_scaling():
    # Scale up at t=0 (132 QPS), then the load vanishes: the first scale-down is at t=300, the next
    # at t=600.
    history = run_periods(
        rules(),
        lambda i: sig(1, qps=132, p99_ms=300) if i == 0 else sig(1, qps=5, p99_ms=100),
        MONDAY_10,
        601,
    )
    assert history[0] == 3
    assert history[299] == 3
    assert history[300] == 2
    assert history[599] == 2
    assert history[600] == 1


def test_cooldown_reason_says_how_long():
    state = {"last_scale_up_s": MONDAY_10 - 10}
    decision = decide(sig(3, qps=500, p99_ms=300), state, MONDAY_10, rules())
    assert decision.replicas == 3 and decision.code == "cooldown_up"
    assert "scale-up cooldown (20s left)" in decision.reason


# ------------------------------------------------------------------------------------------ time
# windows


PEAK = {
    "name": "peak-hours",
    "start": "09:00",
    "end": "21:00",
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "thresholds": {"qps": {"up": 150}},
}
OFF_PEAK = {"name": "off-peak", "start": "21:00", "end": "09:00", "thresholds": {"qps": {"up": 80}}}


@pytest.mark.parametrize(
    "local, window",
    [
        (
            "2024-06-03 08:59",
            "off-peak",
        ),  # Monday before nine: the night window that started Sunday 21:00
        ("2024-06-03 09:00", "peak-hours"),  # start is inclusive
        ("2024-06-03 20:59", "peak-hours"),
        ("2024-06-03 21:00", "off-peak"),  # end is exclusive
        (
            "2024-06-08 12:00",
            "off-peak",
        ),  # Saturday noon: peak-hours is weekdays only, off-peak not active
    ],
)
def test_window_selection(local, window):
    r = rules(windows=[PEAK, OFF_PEAK])
    found = active_window(r, at(local))
    if local == "2024-06-08 12:00":
        assert found is None  # 12:00 is outside 21:00-09:00 and peak-hours does not run on Saturday
    else:
        assert found.name == window


def test_window_time_zone_is_explicit():
    # 02:00 UTC is 10:00 in Shanghai (peak-hours) but 02:00 in UTC (no window).
    ts = at("2024-06-03 02:00", ZoneInfo("UTC"))
    assert active_window(rules(windows=[PEAK]), ts).name == "peak-hours"
    assert active_window(rules(windows=[PEAK], timezone="UTC"), ts) is None


@pytest.mark.parametrize(
    "local, active",
    [
        ("2024-06-07 23:30", True),  # Friday night, window starts on Friday
        ("2024-06-08 01:30", True),  # Saturday 01:30 belongs to Friday's window
        (
            "2024-06-09 01:30",
            False,
        ),  # Sunday 01:30 belongs to Saturday's window: Saturday is not listed
        ("2024-06-07 01:30", False),  # Friday 01:30 belongs to Thursday's window
        ("2024-06-08 02:00", False),  # end is exclusive
    ],
)
def test_window_crossing_midnight_counts_to_its_start_day(local, active):
    window = TimeWindow(name="fri-night", start="22:00", end="02:00", days=["fri"])
    assert window.contains(datetime.strptime(local, "%Y-%m-%d %H:%M")) is active


def test_peak_window_raises_the_qps_threshold():
    # 132 QPS: above 100 (base) at night, within 150 during peak-hours.
    r = rules(windows=[PEAK])
    day = decide(sig(1, qps=132, p99_ms=300), {}, MONDAY_10, r)
    night = decide(sig(1, qps=132, p99_ms=300), {}, at("2024-06-03 22:00"), r)
    assert (day.replicas, night.replicas) == (1, 3)
    assert day.reason.startswith("[peak-hours] ")


def test_window_minimum_is_scheduled_capacity():
    r = rules(windows=[{**PEAK, "min_replicas": 4}])
    assert decide(sig(1, qps=10, p99_ms=100), {}, MONDAY_10, r).replicas == 4


# ------------------------------------------------------------------------------------------
# cost-optimize


COST = {"mode": "cost-optimize", "max_latency_ms": 800}


@pytest.mark.parametrize(
    "signals, state, expected, code",
    [
        (sig(3, qps=600, p99_ms=950), {}, 5, "scale_up_latency"),  # 950 > 800 -> 3 + 2
        (sig(3, qps=600, p99_ms=600), {}, 3, "hold_within"),  # 600 >= 0.6 * 800 = 480: close, hold
        (sig(3, qps=200, p99_ms=200), {}, 2, "scale_down_latency"),  # 200 < 480 -> 3 - 1
        # p99 broke at 150 QPS per instance before; 2 instances would take 400/2 = 200 >= 150 each:
        # hold.
        (
            sig(3, qps=400, p99_ms=200),
            {"cost_violation_qps_per_replica": 150.0},
            3,
            "hold_learned_capacity",
        ),
        # At 250 QPS, 2 instances take 125 each < 150: allowed.
        (
            sig(3, qps=250, p99_ms=200),
            {"cost_violation_qps_per_replica": 150.0},
            2,
            "scale_down_latency",
        ),
    ],
)
def test_cost_optimize(signals, state, expected, code):
    decision = decide(signals, state, MONDAY_10, rules(**COST))
    assert (decision.replicas, decision.code) == (expected, code)


def test_cost_optimize_remembers_where_p99_broke():
    # 3 instances at 600 QPS broke 800 ms: 600 / 3 = 200 QPS per instance is remembered.
    decision = decide(sig(3, qps=600, p99_ms=950), {}, MONDAY_10, rules(**COST))
    assert decision.state["cost_violation_qps_per_replica"] == pytest.approx(200.0)


def test_cost_optimize_ignores_qps_thresholds():
    # 132 QPS on one instance would scale up in balanced mode; cost-optimize only looks at p99.
    decision = decide(sig(1, qps=132, p99_ms=300), {}, MONDAY_10, rules(**COST))
    assert decision.replicas == 1


# ------------------------------------------------------------------------------------------
# forecast floor: the rules its tests share (test_policy_forecast.py and others)


PREDICTIVE = {
    "enabled": True,
    "replica_capacity_qps": 100,
    "headroom": 0.8,
    "lead_time_s": 120,
    "startup_s": 60,
    "max_forecast_age_s": 7200,
}


# ------------------------------------------------------------------------------------------
# fallback


@pytest.mark.parametrize(
    "signals, expected, why",
    [
        # Prometheus down, 3 instances with 18 ongoing: 6 each > 4 -> max(3 + 2,
        # ceil(18 / (0.8 * 4)) = ceil(5.6) = 6) = 6.
        (
            sig(3, ongoing_requests=18, prometheus_available=False),
            6,
            "Prometheus unavailable: queue-based fallback",
        ),
        # Prometheus up but none of its signals present (e.g. metric names wrong): same fallback.
        (
            sig(3, ongoing_requests=18),
            6,
            "QPS, p99 and GPU signals unavailable: queue-based fallback",
        ),
        # 3 instances with 2 ongoing: 0.67 each < 1 -> ceil(2 / (0.8 * 4)) = 1.
        (sig(3, ongoing_requests=2, prometheus_available=False), 1, "queue-based fallback"),
    ],
)
def test_queue_fallback(signals, expected, why):
    decision = decide(signals, {}, MONDAY_10, rules())
    assert decision.replicas == expected
    assert decision.code.startswith("fallback_")
    assert why in decision.reason


def test_fallback_uses_configured_ongoing_thresholds_and_cooldown():
    r = rules(
        thresholds={"qps": {"up": 100, "down": 20}, "ongoing_per_replica": {"up": 16, "down": 4}}
    )
    s = sig(
        2, ongoing_requests=40, prometheus_available=False
    )  # 20 each > 16 -> max(2 + 2, ceil(40 / (0.8 * 16)) = ceil(3.1) = 4) = 4
    assert decide(s, {}, MONDAY_10, r).replicas == 4
    assert decide(s, {"last_scale_up_s": MONDAY_10 - 1}, MONDAY_10, r).replicas == 2


def test_no_ongoing_figure_either_holds():
    decision = decide(sig(3, prometheus_available=False), {}, MONDAY_10, rules())
    assert (decision.replicas, decision.code) == (3, "fallback_hold_no_signal")


# ------------------------------------------------------------------------------------------ rules
# validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thresholds": {"qps": {"up": 20, "down": 100}}}, "down (100) must not exceed up (20)"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        (
            {"windows": [{"name": "x", "start": "25:00", "end": "09:00"}]},
            "'25:00' is not a time of day",
        ),
        ({"windows": [{"name": "x", "start": "9am", "end": "09:00"}]}, "must look like HH:MM"),
        (
            {
                "windows": [
                    {"name": "x", "start": "09:00", "end": "18:00", "days": ["monday", "fun"]}
                ]
            },
            "days",
        ),
        (
            {"predictive": {"lead_time_s": 30, "startup_s": 90}},
            "lead time 30s is shorter than the replica start-up",
        ),
        ({"step_up": 0}, "step_up"),
        ({"cooldwn_up_s": 30}, "cooldwn_up_s"),  # a typo is an error, not silently ignored
        ({"mode": "cheap"}, "mode"),
        (
            {"min_replicas": 5, "max_replicas": 2},
            "min_replicas (5) must not exceed max_replicas (2)",
        ),
        ({"queries": {"qsp": "up"}}, "unknown query names ['qsp']"),
        # Without a model the policy would read another model's traffic.
        ({"model_name": ""}, "model_name is empty"),
    ],
)
def test_bad_rules_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError) as info:
        PolicyRules.from_kwargs({"model_name": "m", **kwargs})
    assert message in str(info.value)


def test_rules_round_trip_through_json():
    r = rules(windows=[PEAK], predictive=PREDICTIVE)
    again = PolicyRules.from_kwargs(json.loads(r.model_dump_json()))
    assert again == r


def test_queries_name_the_model_and_can_be_overridden():
    queries = default_queries(
        rules(model_name="resnet50", queries={"gpu_utilization": "avg(DCGM_FI_DEV_GPU_UTIL)/100"})
    )
    assert queries["qps"] == 'sum (rate(ray_model_request_total{model_name="resnet50"}[1m]))'
    assert queries["p99_ms"] == (
        "1000 * histogram_quantile(0.99, sum by (le) "
        '(rate(ray_model_latency_seconds_bucket{model_name="resnet50"}[1m])))'
    )
    assert queries["forecast_fit_time"] == (
        'max(ray_forecaster_last_fit_timestamp_seconds{model_name="resnet50"})'
    )
    assert 'ray_model_latency_seconds_bucket{model_name="resnet50"}' in queries["p99_ms"]
    assert queries["forecast_qps"] == 'max(ray_forecast_qps{model_name="resnet50",bound="upper"})'
    assert queries["gpu_utilization"] == "avg(DCGM_FI_DEV_GPU_UTIL)/100"
