"""The steps that keep the policy from flapping (serve_app/autoscaling/bands.py): landing at
target_fill, the QPS band derived from the capacity, the down window's memory and the scale-event
budget; each alone, then by looping control periods through decide()."""

from __future__ import annotations

import math

import pytest

from serve_app.autoscaling.bands import (
    budget_allows,
    derived_qps_threshold,
    events_left,
    landing_need,
    remember_need,
    window_need,
)
from serve_app.autoscaling.decide import decide
from serve_app.autoscaling.rules import Threshold
from serve_app.autoscaling.signals import Signals
from serve_app.autoscaling.steps import Proposal, apply_event_budget, effective_thresholds
from tests.unit.test_policy import MONDAY_10, rules, sig

# A slow model: 10 req/s per instance within the SLO, planned at 95%.
SLOW = {"enabled": False, "replica_capacity_qps": 10, "headroom": 0.95}


# ------------------------------------------------------------------------------------------
# each step alone


@pytest.mark.parametrize(
    "total, up, fill, expected",
    [
        (160, 100, 0.8, 2),  # 160 / (0.8 * 100) = 2.0 exactly: no float noise to 3
        (161, 100, 0.8, 3),  # 161 / 80 = 2.01 -> 3
        (950, 100, 0.8, 12),  # 950 / 80 = 11.9 -> 12
        (950, 100, 1.0, 10),  # fill 1.0 lands at `up` itself: ceil(9.5) = 10
        (57, 9.5, 0.8, 8),  # 57 / 7.6 = 7.5 -> 8
        (0, 100, 0.8, 0),  # no load needs no instance
    ],
)
def test_landing_need(total, up, fill, expected):
    assert landing_need(total, up, fill) == expected


@pytest.mark.parametrize(
    "predictive, fill, up, down",
    [
        # up = 10 * 0.95 = 9.5; down = 9.5 * 0.8² = 6.08
        (SLOW, 0.8, 9.5, 6.08),
        # a fast model: up = 92 * 0.95 = 87.4; down = 87.4 * 0.64 = 55.936
        ({**SLOW, "replica_capacity_qps": 92}, 0.8, 87.4, 55.936),
        # up = 25 * 1.0 = 25; down = 25 * 0.5² = 6.25
        ({**SLOW, "replica_capacity_qps": 25, "headroom": 1.0}, 0.5, 25.0, 6.25),
    ],
)
def test_qps_band_derived_from_the_capacity(predictive, fill, up, down):
    band = derived_qps_threshold(rules(predictive=predictive, target_fill=fill))
    assert band.up == pytest.approx(up) and band.down == pytest.approx(down)


def test_no_capacity_no_derived_band():
    assert derived_qps_threshold(rules()) is None
    # The default predictive section's capacity (40) is a placeholder, not a measurement.
    assert derived_qps_threshold(rules(predictive={"enabled": False})) is None


def test_written_qps_thresholds_win_over_the_derived_band():
    written = effective_thresholds(rules(predictive=SLOW), None)
    assert written.qps == Threshold(up=100, down=20)
    derived = effective_thresholds(
        rules(predictive=SLOW, thresholds={"p99_ms": {"up": 500, "down": 200}}), None
    )
    assert derived.qps.up == pytest.approx(9.5) and derived.p99_ms.up == 500


def test_need_window_keeps_the_maximum_of_the_window():
    # cooldown_down_s 300 -> 30 s buckets. Needs 2, 7 (t=40), then 3 every 10 s.
    window: list[list[float]] = []
    t0 = MONDAY_10
    for t, need in [(0, 2), (40, 7)] + [(50 + 10 * k, 3) for k in range(30)]:
        window = remember_need(window, t0 + t, need, 300)
        assert len(window) <= 12  # bounded: about one bucket per 30 s of the window
    # At t=340 the 7 seen at t=40 (bucket 30..60) still overlaps the last 300 s.
    assert window_need(window, t0 + 340, 300) == 7
    for t in range(350, 410, 10):
        window = remember_need(window, t0 + t, 3, 300)
    # At t=400 it has left the window (30 + 30 <= 400 - 300): the most needed since is 3.
    assert window_need(window, t0 + 400, 300) == 3
    assert window_need([], t0, 300) is None


HOUR = 3600


@pytest.mark.parametrize(
    "ago_s, per_hour, per_day, left, bound",
    [
        # 3 events in the last hour, 5 in the day: min(12 - 3, 48 - 5) = 9 (the hour's bound).
        ([10, 100, 1000, 2 * HOUR, 5 * HOUR], 12, 48, 9, "max_scale_events_per_hour=12"),
        # The day's bound is the tighter: min(12 - 3, 6 - 5) = 1.
        ([10, 100, 1000, 2 * HOUR, 5 * HOUR], 12, 6, 1, "max_scale_events_per_day=6"),
        # Events older than a day no longer count: 12 - 0 = 12, 48 - 0 = 48.
        ([25 * HOUR], 12, 48, 12, "max_scale_events_per_hour=12"),
        # No bound at all.
        ([10], None, None, None, ""),
    ],
)
def test_events_left(ago_s, per_hour, per_day, left, bound):
    r = rules(max_scale_events_per_hour=per_hour, max_scale_events_per_day=per_day)
    events = sorted(MONDAY_10 - a for a in ago_s)
    assert events_left(events, MONDAY_10, r) == (left, bound)


@pytest.mark.parametrize(
    "direction, left, allowed",
    [
        ("up", 1, True),  # the last event is for a scale-up
        ("down", 1, False),  # a scale-down never spends it
        ("down", 2, True),
        ("up", 0, True),  # a scale-up is never held, even over the budget
        ("down", 0, False),
        ("down", None, True),  # no bound
    ],
)
def test_budget_allows(direction, left, allowed):
    assert budget_allows(direction, left) is allowed


def test_spent_budget_holds_a_scale_down_names_the_bound_and_never_holds_a_scale_up():
    r = rules(max_scale_events_per_hour=2)
    events = [MONDAY_10 - 600, MONDAY_10 - 60]
    down = Proposal(1, "all signals below thresholds", "scale_down_threshold", "down")
    held = apply_event_budget(down, 3, events, MONDAY_10, r)
    assert (held.replicas, held.code) == (3, "hold_event_budget")
    assert "scale-event budget (max_scale_events_per_hour=2) is spent" in held.reason
    # Spent: a scale-up still goes ahead, and says it is over the budget.
    wish = Proposal(5, "QPS=600 > 100", "scale_up_threshold", "up")
    over = apply_event_budget(wish, 3, events, MONDAY_10, r)
    assert (over.replicas, over.code) == (5, "scale_up_threshold")
    assert "over the scale-event budget, max_scale_events_per_hour=2" in over.reason
    # One event used, one left: a scale-up may take it, a scale-down may not.
    assert apply_event_budget(wish, 3, events[1:], MONDAY_10, r) == wish
    kept = apply_event_budget(down, 3, events[1:], MONDAY_10, r)
    assert (kept.replicas, kept.code) == (3, "hold_event_budget")
    assert "(max_scale_events_per_hour=2) keeps its last event for a scale-up" in kept.reason


def test_a_spent_day_budget_never_keeps_the_fleet_below_a_rising_load():
    # The night's changes spent the day's budget; in the morning 600 QPS reach 3 instances (200
    # each > 100): the fleet goes to ceil(600 / 80) = 8 at once, not 24 hours later.
    r = rules(max_scale_events_per_day=4, max_scale_events_per_hour=None, cooldown_up_s=0)
    night = [MONDAY_10 - 3600 * h for h in (9, 8, 7, 6)]
    decision = decide(sig(3, qps=600, p99_ms=300), {"scale_events": night}, MONDAY_10, r)
    assert (decision.replicas, decision.code) == (8, "scale_up_threshold")
    assert "over the scale-event budget, max_scale_events_per_day=4" in decision.reason
    # The same fleet idle is held: with the budget spent, it only grows until events age out.
    idle = decide(sig(8, qps=10, p99_ms=100), {"scale_events": night}, MONDAY_10, r)
    assert (idle.replicas, idle.code) == (8, "hold_event_budget")


# ------------------------------------------------------------------------------------------
# control periods in a loop


def run(r, signals_at, periods: int, start: float = MONDAY_10, period_s: float = 1.0):
    """Loop control periods like the controller: each decision is the next period's target."""
    state, target, history, codes = {}, signals_at(0, None).target_replicas, [], []
    for i in range(periods):
        s = signals_at(i, target)
        s = Signals(**{**s.__dict__, "target_replicas": target, "running_replicas": target})
        decision = decide(s, state, start + i * period_s, r)
        state, target = decision.state, decision.replicas
        history.append(target)
        codes.append(decision.code)
    return history, codes, state


def changes(history: list[int], first: int) -> int:
    return sum(1 for a, b in zip([first] + history, history, strict=False) if a != b)


def test_noise_around_a_level_is_not_flapping():
    # 60 QPS +-15% (a sawtooth: 51..69 every 7 periods) on a slow model (band 6.08..9.5 each).
    # t=0: 51 QPS on 1 -> ceil(51 / 7.6) = 7; t=6: 69 / 7 = 9.9 > 9.5 -> ceil(69 / 7.6) = 10.
    # Then 5.1..6.9 each: 5.1 < 6.08 is below `down`, but the window remembers 69 QPS needing 10.
    # Two changes in the first cycle, none in the rest of the hour.
    r = rules(
        predictive=SLOW, thresholds={"p99_ms": {"up": 500}}, cooldown_up_s=0, cooldown_down_s=300
    )

    def load(i, target):
        return sig(1, hi=50, qps=60 * (0.85 + 0.3 * (i % 7) / 6), p99_ms=300)

    history, _, _ = run(r, load, 3600)
    assert changes(history, 1) == 2 and history[6] == 10 and set(history[6:]) == {10}


def test_slow_model_is_not_pinned_at_max_by_a_high_idle_p99():
    # A slow model's p99 is 420 ms even nearly idle: inside a 200..500 band written in the YAML.
    # Without a capacity the users' words hold (p99 above `down` keeps the fleet); with it, the
    # QPS band decides: 20 QPS on 8 is 2.5 each < 6.08, down to ceil(20 / 7.6) = 3.
    calm = sig(8, hi=20, qps=20, p99_ms=420)
    words = {"p99_ms": {"up": 500, "down": 200}}
    assert decide(calm, {}, MONDAY_10, rules(thresholds=words)).code == "hold_within"
    knowing = decide(calm, {}, MONDAY_10, rules(predictive=SLOW, thresholds=words))
    assert (knowing.replicas, knowing.code) == (3, "scale_down_threshold")


def test_scale_down_goes_to_the_most_needed_within_the_window():
    # 8 instances at 400 QPS (50 each, within 20..100; needs ceil(400 / 80) = 5), then from t=60
    # 40 QPS (5 each, below; needs ceil(40 / 80) = 1). Nothing scaled before, so no cooldown: at
    # t=60 the scale-down goes to the window's maximum 5, not to 1. The next waits for the down
    # cooldown (300 s from t=60) and for the 400 QPS to leave the window (bucket 30..60 leaves
    # after t=360), then goes to 1. Two changes instead of a dip to 1 that the next burst undoes.
    r = rules(cooldown_down_s=300, thresholds={"qps": {"up": 100, "down": 20}})

    def load(i, target):
        return sig(8, hi=20, qps=400 if i < 60 else 40)

    history, _, _ = run(r, load, 800)
    first_down = next(i for i, n in enumerate(history) if n < 8)
    assert (first_down, history[first_down]) == (60, 5)
    second = next(i for i, n in enumerate(history) if n < 5)
    assert (second, history[second]) == (360, 1)
    assert changes(history, 8) == 2


def test_scale_event_budget_holds_over_an_hour_of_oscillating_load():
    # No cooldowns and a load swinging 10 <-> 400 QPS every 30 periods would change the target
    # every swing (120 times an hour); max_scale_events_per_hour 6 allows 6, and the scale-downs
    # leave the last one for a scale-up.
    r = rules(
        cooldown_up_s=0,
        cooldown_down_s=0,
        max_scale_events_per_hour=6,
        thresholds={"qps": {"up": 100, "down": 20}},
    )

    def load(i, target):
        return sig(1, hi=20, qps=400 if (i // 30) % 2 == 0 else 10)

    # t=0 up 1 -> max(1 + 2, ceil(400 / 80)) = 5, t=30 down to 1, t=60 up, t=90 down, t=120 up:
    # 5 events. At t=150 a scale-down would spend the sixth and last: held, and at 5 instances the
    # swings back to 400 QPS need no scale-up, so the hour ends with 5 changes and 5 instances.
    history, codes, state = run(r, load, 3600)
    assert changes(history, 1) == 5 and history[-1] == 5
    assert codes[150] == "hold_event_budget"
    assert len(state["scale_events"]) == 5


def test_fleet_from_small_to_large_moves_in_proportional_steps():
    # A ramp from 20 to 2000 QPS over 6 hours at capacity 10 (planned 9.5 per instance): tracking it
    # one instance at a time would take ~210 scale-ups; landing at 80% makes each step at least a
    # quarter of the fleet, so ln(2000 / 20) / ln(1.25) = 20.6 -> about 21 steps, never more.
    r = rules(predictive=SLOW, thresholds={}, cooldown_up_s=30, max_scale_events_per_day=None)
    seconds = 6 * 3600

    def load(i, target):
        return sig(1, hi=400, qps=20 * math.exp(math.log(100) * i / seconds))

    history, _, _ = run(r, load, seconds, period_s=1.0)
    ups = changes(history, 1)
    assert ups <= 23
    assert history[-1] >= math.ceil(2000 / 9.5)
