"""Tiered circuit breaking: the pure tier decision (tables, hold loops on a fake clock) and the
controller that applies it (batch setter, metrics, admission) on the same fake clock."""

from __future__ import annotations

import pytest

from serve_app.errors import Overloaded, ServiceError
from serve_app.monitoring.gpu import GpuReading, ProcessReading, ResourceReadings
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from serve_app.monitoring.metrics import MAX_BATCH_SIZE, OVERLOAD_TIER, OVERLOAD_TIER_CHANGES_TOTAL
from serve_app.overload_config import OverloadConfig
from serve_app.serving.logs import outcome_of
from serve_app.serving.overload import (
    OverloadSignals,
    Tier,
    TierState,
    batch_size_for,
    decide_tier,
    expected_queue_wait_s,
    retry_after_for,
    should_shed,
)
from serve_app.serving.overload_control import OverloadController, OverloadMetrics, RecentValues

N, R, S = Tier.NORMAL, Tier.REDUCED_BATCH, Tier.SHEDDING
# Defaults: reduce at gpu 0.80 / rss 0.85 / p99 1.0 s; shed at gpu 0.90 / rss 0.95 / wait 1.0 s /
# p99 2.0 s; recover below 0.8 x the current tier's levels for 10 s.
CFG = OverloadConfig()


def sig(**values: float) -> OverloadSignals:
    return OverloadSignals(**values)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- escalation: a table of one control period from NORMAL ------------------------------------


@pytest.mark.parametrize(
    "signals, tier",
    [
        (sig(), N),  # nothing measured (idle replica, no GPU): stays normal
        (sig(latency_p99_s=1.0), N),  # 1.0 > 1.0 is false: "above" is strict
        (sig(latency_p99_s=1.01), R),  # 1.01 > 1.0 (reduce), 1.01 <= 2.0 (shed)
        (sig(latency_p99_s=2.5), S),  # 2.5 > 2.0: straight to shedding, no stop at reduce
        (sig(gpu_memory_ratio=0.81), R),  # the users' 80%: 0.81 > 0.80
        (sig(gpu_memory_ratio=0.91), S),  # 0.91 > 0.90
        (sig(queue_wait_s=0.99), N),  # queue wait has no reduce level by default; 0.99 <= 1.0
        (sig(queue_wait_s=1.2), S),  # 1.2 > 1.0
        (sig(rss_ratio=0.86), R),  # 0.86 > 0.85
        (sig(rss_ratio=0.96, latency_p99_s=0.1), S),  # one signal is enough: 0.96 > 0.95
        (sig(gpu_memory_ratio=0.5, rss_ratio=0.5, queue_wait_s=0.5, latency_p99_s=0.5), N),
    ],
)
def test_one_period_from_normal(signals, tier):
    decision = decide_tier(signals, TierState(), now=0.0, cfg=CFG)
    assert decision.tier == tier
    assert decision.changed == (tier != N)


@pytest.mark.parametrize(
    "current, signals, tier",
    [
        (R, sig(latency_p99_s=2.1), S),  # reduced -> shedding at once: 2.1 > 2.0
        (S, sig(latency_p99_s=1.5), S),  # 1.5 < 0.8 x 2.0 = 1.6: calm starts now, 0 s < hold 10 s
        (S, sig(latency_p99_s=1.7), S),  # 1.7 > 1.6: still above the exit level, hold reset
        (R, sig(latency_p99_s=0.9), R),  # 0.9 > 0.8 x 1.0 = 0.8: not calm, stays reduced
        (R, sig(latency_p99_s=0.7), R),  # 0.7 < 0.8: calm starts now, 0 s < hold 10 s
    ],
)
def test_one_period_from_a_raised_tier(current, signals, tier):
    decision = decide_tier(signals, TierState(current), now=0.0, cfg=CFG)
    assert decision.tier == tier
    assert not decision.changed or tier > current


def test_escalation_names_the_signal_and_level():
    decision = decide_tier(sig(queue_wait_s=1.5), TierState(), 0.0, CFG)
    assert decision.reason == "queue_wait_s 1.5 > 1 (shedding level)"


def test_calm_timestamps_travel_in_the_state():
    first = decide_tier(sig(latency_p99_s=0.5), TierState(R), now=50.0, cfg=CFG)
    assert first.state == TierState(R, calm_since=50.0)
    second = decide_tier(sig(latency_p99_s=0.5), first.state, now=51.0, cfg=CFG)
    assert second.state == TierState(R, calm_since=50.0)  # kept, not restarted
    spike = decide_tier(sig(latency_p99_s=0.85), second.state, now=52.0, cfg=CFG)
    assert spike.state == TierState(R, calm_since=None)  # 0.85 > 0.8: the hold starts over


# --- hold and recovery: loop control periods on a fake clock ------------------------------------


def run_periods(signals: OverloadSignals, state: TierState, start: float, periods: int, cfg=CFG):
    """Feed the same signals for `periods` one-second control periods; the tier after each."""
    tiers = []
    for i in range(periods):
        decision = decide_tier(signals, state, start + i, cfg)
        state = decision.state
        tiers.append(decision.tier)
    return tiers, state


def test_shedding_steps_down_one_tier_per_hold():
    state = decide_tier(sig(queue_wait_s=3.0), TierState(), 0.0, CFG).state
    assert state.tier == S
    calm = sig(queue_wait_s=0.01, latency_p99_s=0.05)
    tiers, state = run_periods(calm, state, start=1.0, periods=22)
    # calm from t=1; t=11: 11 - 1 = 10 >= hold 10 -> reduced; the next hold starts at 11,
    # t=21: 21 - 11 = 10 -> normal.
    assert tiers == [S] * 10 + [R] * 10 + [N] * 2
    assert state == TierState(N)  # normal keeps no hold


def test_a_spike_during_the_hold_starts_it_over():
    state = TierState(R)
    calm, spike = sig(latency_p99_s=0.5), sig(latency_p99_s=0.9)  # 0.9 > 0.8 exit, < 1.0 entry
    tiers, state = run_periods(calm, state, start=0.0, periods=9)  # calm since 0, 8 s < 10 s
    decision = decide_tier(spike, state, 9.0, CFG)
    assert decision.tier == R and decision.state.calm_since is None
    tiers, state = run_periods(calm, decision.state, start=10.0, periods=11)
    # calm again from t=10; t=20: 20 - 10 = 10 -> normal (the last of the 11 periods)
    assert tiers == [R] * 10 + [N]


def test_between_the_levels_shedding_only_falls_to_reduced():
    # p99 1.2 s: below 0.8 x 2.0 = 1.6 (shedding exit) but above 1.0 (reduce entry)
    state = TierState(S)
    tiers, state = run_periods(sig(latency_p99_s=1.2), state, start=0.0, periods=30)
    assert tiers == [S] * 10 + [R] * 20


def test_zero_hold_recovers_on_the_first_calm_period():
    cfg = OverloadConfig(hold_s=0)
    tiers, _ = run_periods(sig(latency_p99_s=0.1), TierState(S), start=0.0, periods=3, cfg=cfg)
    assert tiers == [R, N, N]


# --- batch size, expected wait, admission ----------------------------------------------------


@pytest.mark.parametrize(
    "tier, max_batch, fraction, expected",
    [
        (N, 16, 0.5, 16),  # normal: as configured
        (R, 16, 0.5, 8),  # floor(16 x 0.5) = 8
        (S, 16, 0.5, 8),  # shedding keeps the reduced batch
        (R, 8, 0.3, 2),  # floor(8 x 0.3) = floor(2.4) = 2
        (R, 1, 0.5, 1),  # floor(0.5) = 0, but never below 1
    ],
)
def test_batch_size_for(tier, max_batch, fraction, expected):
    cfg = OverloadConfig(reduced_batch_fraction=fraction)
    assert batch_size_for(tier, max_batch, cfg) == expected


@pytest.mark.parametrize(
    "queued, new, batch, running, batch_s, expected",
    [
        (0, 1, 8, False, 0.1, 0.0),  # idle: the next batch is ours
        (0, 1, 8, True, 0.1, 0.1),  # one batch running: 1 x 0.1
        (7, 1, 8, False, 0.1, 0.0),  # 8th in line of a batch of 8: floor(7 / 8) = 0
        (8, 1, 8, False, 0.1, 0.1),  # 9th: floor(8 / 8) = 1 batch ahead
        (20, 4, 4, True, 0.05, 0.3),  # last new item at 23: floor(23 / 4) = 5, + 1 running = 6
    ],
)
def test_expected_queue_wait(queued, new, batch, running, batch_s, expected):
    assert expected_queue_wait_s(queued, new, batch, running, batch_s) == pytest.approx(expected)


@pytest.mark.parametrize(
    "tier, wait, shed",
    [
        (S, 1.01, True),  # 1.01 > budget 1.0
        (S, 1.0, False),  # at the budget: still served
        (R, 5.0, False),  # only the shedding tier refuses
        (N, 5.0, False),
    ],
)
def test_should_shed(tier, wait, shed):
    assert should_shed(tier, wait, CFG) is shed


@pytest.mark.parametrize(
    "wait, retry_after",
    [(0.0, 1), (0.6, 1), (1.0, 1), (1.01, 2), (3.7, 4)],
)
def test_retry_after_is_the_expected_wait_rounded_up_never_below_the_least(wait, retry_after):
    assert retry_after_for(wait, CFG) == retry_after
    assert retry_after_for(wait, OverloadConfig(retry_after_s=5)) == 5


# --- the controller: measure, decide, apply -----------------------------------------------------


@pytest.fixture
def controller():
    clock = FakeClock()
    sizes: list[int] = []
    cfg = OverloadConfig(shed_at={"queue_wait_s": 0.2}, shed_queue_wait_s=0.2, hold_s=3)
    metrics = OverloadMetrics(InMemoryMetricsBackend())
    ctl = OverloadController("m", 8, cfg, sizes.append, metrics, clock)
    return ctl, clock, sizes, metrics


def test_controller_sheds_restores_and_counts(controller):
    ctl, clock, sizes, metrics = controller
    tags = {"model_name": "m"}
    assert metrics[OVERLOAD_TIER].value(**tags) == 0 and metrics[MAX_BATCH_SIZE].value(**tags) == 8
    # A batch of 8 that waited 0.3 s each and ran 0.1 s, with 24 more crops queued behind it.
    ctl.enqueued(32)
    ctl.batch_started([0.3] * 8)
    ctl.batch_finished(0.1)
    assert ctl.step().tier == S  # p99 wait 0.3 > 0.2
    assert sizes == [4]  # floor(8 x 0.5)
    assert metrics[OVERLOAD_TIER].value(**tags) == 2 and metrics[MAX_BATCH_SIZE].value(**tags) == 4
    assert metrics[OVERLOAD_TIER_CHANGES_TOTAL].value(model_name="m", tier="shedding") == 1
    # 24 queued, batches of 4, 0.1 s each: floor(24 / 4) = 6 batches ahead -> 0.6 s > 0.2 s
    with pytest.raises(Overloaded) as refused:
        ctl.admit(1)
    assert refused.value.headers == {"Retry-After": "1"}
    assert "0.60 s is over 0.2 s; retry after 1 s" in refused.value.message
    # Twice that queue: 1.2 s ahead, so it is told to come back in 2 s, not 1.
    ctl.enqueued(24)
    with pytest.raises(Overloaded) as refused:
        ctl.admit(1)
    assert refused.value.headers == {"Retry-After": "2"}
    # The queue drains and the window forgets the old waits (window 10 s): calm from t + 11.
    ctl.batch_started([0.01] * 48)
    ctl.batch_finished(0.05)
    ctl.admit(1)  # nothing queued, nothing running: expected wait 0
    clock.now += 11
    for _ in range(7):  # hold 3 s per step: shedding -> reduced at +3, -> normal at +6
        ctl.step()
        clock.now += 1
    assert ctl.tier == N and sizes == [4, 4, 8]
    assert metrics[OVERLOAD_TIER].value(**tags) == 0 and metrics[MAX_BATCH_SIZE].value(**tags) == 8
    assert metrics[OVERLOAD_TIER_CHANGES_TOTAL].value(model_name="m", tier="normal") == 1


def test_controller_reads_gpu_and_rss_from_the_resource_readings():
    cfg = OverloadConfig(max_rss_bytes=1000)
    ctl = OverloadController("m", 8, cfg, lambda n: None, OverloadMetrics(InMemoryMetricsBackend()))
    gpus = [
        GpuReading(0, "a", 0.5, 70, 100, 40.0),
        GpuReading(1, "b", 0.5, 85, 100, 40.0),
        GpuReading(2, "c", None, None, None, None),  # NVML could not read it: left out
    ]
    readings = ResourceReadings(gpus, ProcessReading(900, None, None))
    signals = ctl.signals(readings)
    assert signals.gpu_memory_ratio == pytest.approx(0.85)  # the fullest GPU: 85 / 100
    assert signals.rss_ratio == pytest.approx(0.9)  # 900 / 1000
    # rss 0.9 > 0.85 and gpu 0.85 > 0.80 enter reduce; 0.9 <= 0.95 and 0.85 <= 0.90 stay short
    # of shedding
    assert ctl.step(readings).tier == R
    assert ctl.signals(None) == OverloadSignals()  # no readings yet: nothing measured


def test_rss_is_no_signal_without_a_bound():
    ctl = OverloadController(
        "m", 8, OverloadConfig(), lambda n: None, OverloadMetrics(InMemoryMetricsBackend())
    )
    readings = ResourceReadings([], ProcessReading(10**12, None, None))
    assert ctl.signals(readings).rss_ratio is None


def test_a_shed_reply_crosses_to_the_ingress_as_a_rejected_503():
    wire = Overloaded("shedding", retry_after_s=3).to_wire()
    err = ServiceError.from_wire(wire)
    assert isinstance(err, Overloaded) and err.status == 503
    assert err.to_response().headers["retry-after"] == "3"
    assert outcome_of(err.status) == "rejected"


def test_recent_values_forget_old_samples_and_stay_bounded():
    clock = FakeClock()
    window = RecentValues(5.0, clock)
    window.add(1.0)
    clock.now += 6
    window.add(3.0)
    assert window.values() == [3.0]  # 6 s old > window 5 s
    for i in range(10_000):
        window.add(float(i))
    assert len(window.values()) == 4096
    assert window.quantile(0.5) == pytest.approx((10_000 - 4096 + 9_999) / 2)


def test_a_failed_apply_keeps_the_old_tier_and_the_loop_alive():
    clock = FakeClock()
    calls: list[int] = []

    def flaky_setter(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("setter failed")

    cfg = OverloadConfig(shed_at={"queue_wait_s": 0.2})
    metrics = OverloadMetrics(InMemoryMetricsBackend())
    ctl = OverloadController("m", 8, cfg, flaky_setter, metrics, clock)
    ctl.batch_started([0.5])
    ctl.step_safely()  # raises inside, logged, not propagated
    assert ctl.tier == N
    ctl.step_safely()  # the next period applies it
    assert ctl.tier == S and calls == [4, 4]


def test_shedding_levels_below_reduce_levels_are_refused():
    with pytest.raises(ValueError, match="shed_at.latency_p99_s .0.5. must not be below"):
        OverloadConfig(shed_at={"latency_p99_s": 0.5})  # reduce default 1.0 > 0.5
    with pytest.raises(ValueError):
        OverloadConfig(reduce_batch_at={"unknown_signal": 1.0})  # a typo is an error
