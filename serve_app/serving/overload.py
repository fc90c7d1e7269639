"""Tiered circuit breaking, decided: measured signals -> normal, reduced batch or shedding.

Pure functions of what they are given, in the style of the autoscaling policy: no clock, no probe,
no Ray. `decide_tier(signals, state, now, cfg)` escalates at once to the highest tier whose entry
level a signal is above, and steps down one tier only after every signal has stayed below
`recover_fraction` of the current tier's entry levels for `hold_s` (hysteresis); what must survive
between control periods travels in the returned `TierState`. serving/overload_control.py measures
the signals and applies the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from serve_app.monitoring.metrics import OVERLOAD_TIERS
from serve_app.overload_config import OverloadConfig, TierLevels

SIGNAL_NAMES = tuple(TierLevels.model_fields)


class Tier(IntEnum):
    """The overload tiers, in order of severity (the value is what the tier gauge shows)."""

    NORMAL = 0
    REDUCED_BATCH = 1
    SHEDDING = 2

    @property
    def label(self) -> str:
        """The tier's name as logs and metric labels spell it."""
        return OVERLOAD_TIERS[self.value]


@dataclass(frozen=True)
class OverloadSignals:
    """One replica's measurements of one control period; None: not measured (no GPU, no RSS
    bound, no request in the window)."""

    gpu_memory_ratio: float | None = None
    rss_ratio: float | None = None
    queue_wait_s: float | None = None
    latency_p99_s: float | None = None


@dataclass(frozen=True)
class TierState:
    """What decide_tier carries from one control period to the next."""

    tier: Tier = Tier.NORMAL
    # When every signal last went below the exit levels of `tier`; None while one is above.
    calm_since: float | None = None


@dataclass(frozen=True)
class TierDecision:
    """The tier to apply, the state for the next period, and why (empty while nothing changes)."""

    tier: Tier
    state: TierState
    changed: bool
    reason: str


def entry_levels(tier: Tier, cfg: OverloadConfig) -> TierLevels | None:
    """The levels that enter `tier`; None for NORMAL, which is never entered by a signal."""
    return {Tier.REDUCED_BATCH: cfg.reduce_batch_at, Tier.SHEDDING: cfg.shed_at}.get(tier)


def breaches(signals: OverloadSignals, levels: TierLevels, scale: float = 1.0) -> list[str]:
    """Each measured signal above `scale` times its level, worded for the log."""
    found = []
    for name in SIGNAL_NAMES:
        value, level = getattr(signals, name), getattr(levels, name)
        if value is not None and level is not None and value > level * scale:
            found.append(f"{name} {value:.3g} > {level * scale:.3g}")
    return found


def target_tier(signals: OverloadSignals, cfg: OverloadConfig) -> tuple[Tier, list[str]]:
    """The highest tier whose entry level some signal is above, with those signals."""
    for tier in (Tier.SHEDDING, Tier.REDUCED_BATCH):
        found = breaches(signals, entry_levels(tier, cfg))
        if found:
            return tier, found
    return Tier.NORMAL, []


def decide_tier(
    signals: OverloadSignals, state: TierState, now: float, cfg: OverloadConfig
) -> TierDecision:
    """The tier for this control period: escalate at once, recover one tier per calm hold."""
    target, found = target_tier(signals, cfg)
    if target > state.tier:
        reason = f"{', '.join(found)} ({target.label} level)"
        return TierDecision(target, TierState(target, None), True, reason)
    if state.tier == Tier.NORMAL:
        return TierDecision(Tier.NORMAL, TierState(), False, "")
    still_high = breaches(signals, entry_levels(state.tier, cfg), cfg.recover_fraction)
    if still_high:
        return TierDecision(state.tier, TierState(state.tier, None), False, "")
    calm_since = now if state.calm_since is None else state.calm_since
    if now - calm_since < cfg.hold_s:
        return TierDecision(state.tier, TierState(state.tier, calm_since), False, "")
    lower = Tier(state.tier - 1)
    reason = (
        f"every signal below {cfg.recover_fraction:g} x the {state.tier.label} levels for "
        f"{now - calm_since:.3g} s (hold {cfg.hold_s:g} s)"
    )
    # The hold of the next step starts now; a signal above its exit level resets it.
    return TierDecision(lower, TierState(lower, now), True, reason)


def batch_size_for(tier: Tier, max_batch_size: int, cfg: OverloadConfig) -> int:
    """The batch limit of a tier: the configured one when normal, a fraction of it otherwise."""
    if tier == Tier.NORMAL:
        return max_batch_size
    return max(1, math.floor(max_batch_size * cfg.reduced_batch_fraction))


def expected_queue_wait_s(
    queued_items: int, new_items: int, batch_size: int, batch_running: bool, batch_s: float
) -> float:
    """How long the last of `new_items` arriving now would wait before its forward pass starts.

    The items ahead form floor((queued + new - 1) / batch_size) full batches before it, plus the
    batch running now (counted whole: its remaining time is unknown), each taking `batch_s`.
    """
    batches_ahead = (queued_items + max(new_items, 1) - 1) // max(batch_size, 1)
    return (batches_ahead + int(batch_running)) * batch_s


def should_shed(tier: Tier, expected_wait_s: float, cfg: OverloadConfig) -> bool:
    """True when a request must be refused: shedding, and its expected wait breaks the budget."""
    return tier == Tier.SHEDDING and expected_wait_s > cfg.shed_queue_wait_s


def retry_after_for(expected_wait_s: float, cfg: OverloadConfig) -> int:
    """Retry-After of a shed request: the queue ahead of it drains in about its expected wait, so
    a retry sooner would only be shed again (and add to the load); never below `retry_after_s`."""
    return max(cfg.retry_after_s, math.ceil(expected_wait_s))
