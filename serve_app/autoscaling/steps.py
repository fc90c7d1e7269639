"""The named steps of `decide()`: small pure functions, each testable alone.

A step reads the rules, the signals and the state it is given and returns a value or a `Proposal`
(the wished replica count, why, and the decision code); none reads a clock, Prometheus or Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Literal

from serve_app.autoscaling.bands import (
    budget_allows,
    capacity_known,
    derived_qps_threshold,
    events_left,
    instances_for,
    landing_need,
)
from serve_app.autoscaling.readings import Reading, instances_phrase
from serve_app.autoscaling.rules import (
    SIGNAL_NAMES,
    PolicyRules,
    Threshold,
    Thresholds,
    TimeWindow,
)
from serve_app.autoscaling.signals import Signals

# The reason's words for a forecast floor read but not applied (`predictive.mode: forecast_only`).
FORECAST_ONLY = "forecast-only"
# Used by the queue-based fallback when the rules set no ongoing_per_replica thresholds.
FALLBACK_ONGOING = Threshold(up=4, down=1)


def active_window(rules: PolicyRules, now: float) -> TimeWindow | None:
    """The first window containing `now` in the rules' time zone, or None."""
    if not rules.windows:
        return None
    local = datetime.fromtimestamp(now, rules.zone())
    return next((w for w in rules.windows if w.contains(local)), None)


def effective_thresholds(
    rules: PolicyRules, window: TimeWindow | None, replicas: int = 1
) -> Thresholds:
    """Base thresholds (the QPS band derived from the capacity of `replicas` instances unless
    written) with the active window's overrides."""
    base = rules.thresholds
    derived = derived_qps_threshold(rules, replicas)
    if derived is not None and ("thresholds" not in rules.model_fields_set or base.qps is None):
        base = base.model_copy(update={"qps": derived})
    return base.merged(window.thresholds if window else None)


def fleet_qps_need(
    rules: PolicyRules, window: TimeWindow | None, fill: float | None = None
) -> Callable[[float], int] | None:
    """With a measured fleet table and the derived QPS band in force (neither the rules nor the
    window write `qps`), the QPS signal's need: the fewest instances whose fleet keeps the load at
    `fill` (default target_fill) of its headroom."""
    if rules.predictive.fleet_capacity_qps is None:
        return None
    if "thresholds" in rules.model_fields_set and rules.thresholds.qps is not None:
        return None
    if window is not None and window.thresholds.qps is not None:
        return None
    share = rules.predictive.headroom * (rules.target_fill if fill is None else fill)
    return lambda total: instances_for(rules, total, share)


def replica_bounds(
    signals: Signals, rules: PolicyRules, window: TimeWindow | None
) -> tuple[int, int]:
    """[min, max] from Serve's bounds, narrowed by the rules and raised by the window's minimum."""
    low = max(signals.min_replicas, rules.min_replicas or 0)
    high = min(signals.max_replicas, rules.max_replicas or signals.max_replicas)
    if window is not None and window.min_replicas is not None:
        low = max(low, window.min_replicas)
    return min(low, high), high


def classify(value: float, threshold: Threshold) -> Literal["above", "below", "within"]:
    """Where a value stands against its threshold pair."""
    if threshold.up is not None and value > threshold.up:
        return "above"
    if threshold.down is not None and value < threshold.down:
        return "below"
    return "within"


def read_signals(
    signals: Signals,
    thresholds: Thresholds,
    base: int,
    fill: float = 1.0,
    qps_need: Callable[[float], int] | None = None,
) -> list[Reading]:
    """Compare every available signal with its thresholds; `base` instances share the per-instance
    load, and each load signal says how many instances keep it at `fill` x its `up` (`qps_need`,
    when given, sizes the QPS one by whole fleets instead)."""
    base = max(base, 1)
    readings = []
    totals = {
        "qps": signals.qps,
        "p99_ms": signals.p99_ms,
        "gpu_utilization": signals.gpu_utilization,
        "ongoing_per_replica": signals.ongoing_requests,
    }
    for name in SIGNAL_NAMES:
        threshold, total = getattr(thresholds, name), totals[name]
        if threshold is None or total is None or not math.isfinite(total):
            continue
        total = max(total, 0.0)
        per_instance = name in ("qps", "ongoing_per_replica")
        value = total / base if per_instance else total
        need = None
        if threshold.up:
            if name == "qps" and qps_need is not None:
                need = qps_need(total)
            elif per_instance:
                need = landing_need(total, threshold.up, fill)
            elif name == "gpu_utilization":
                need = landing_need(base * total, threshold.up, fill)
        readings.append(Reading(name, value, total, threshold, classify(value, threshold), need))
    return readings


def cooldown_left(state: dict[str, Any], now: float, rules: PolicyRules, direction: str) -> float:
    """Seconds until a scale in `direction` is allowed: up waits after ups, down waits after any
    scaling."""
    last_up = state.get("last_scale_up_s")
    last_down = state.get("last_scale_down_s")
    if direction == "up":
        return max(0.0, (last_up + rules.cooldown_up_s - now) if last_up is not None else 0.0)
    last = max((t for t in (last_up, last_down) if t is not None), default=None)
    return max(0.0, (last + rules.cooldown_down_s - now) if last is not None else 0.0)


@dataclass(frozen=True)
class ForecastNeed:
    """What a fresh forecast asks for: the floor (at capacity x headroom) and where a forecast
    scaling lands (at target_fill of it)."""

    floor: int | None  # None: read but not applied (forecast-only)
    landing: int | None
    why: str


def forecast_need(signals: Signals, rules: PolicyRules, now: float) -> ForecastNeed | None:
    """The fresh forecast's floor and landing count, or None when there is no fresh forecast."""
    floor, why = forecast_floor(signals, rules, now)
    if floor is None:
        return ForecastNeed(None, None, why) if why.startswith(FORECAST_ONLY) else None
    if rules.predictive.landing == "floor":
        return ForecastNeed(floor, floor, why)
    landing = instances_for(
        rules, max(signals.forecast_qps, 0.0), rules.predictive.headroom * rules.target_fill
    )
    return ForecastNeed(floor, max(floor, landing), why)


def forecast_floor(signals: Signals, rules: PolicyRules, now: float) -> tuple[int | None, str]:
    """Replicas the fresh forecast needs at now + lead time (from the planner), or None and why
    not."""
    p = rules.predictive
    if not p.enabled:
        return None, "forecast disabled"
    if signals.forecast_qps is None or not math.isfinite(signals.forecast_qps):
        return None, "no forecast"
    if signals.forecast_fit_time is None:
        return None, "forecast age unknown"
    age = now - signals.forecast_fit_time
    if age > p.max_forecast_age_s:
        return None, f"forecast is stale ({age / 60:.0f} min old)"
    floor = instances_for(rules, max(signals.forecast_qps, 0.0), p.headroom)
    if p.mode == "forecast_only":
        return None, (
            f"{FORECAST_ONLY}: forecast {signals.forecast_qps:.0f} QPS at +{p.lead_time_s:.0f}s "
            f"would need {instances_phrase(floor)}, not applied"
        )
    return (
        floor,
        f"forecast {signals.forecast_qps:.0f} QPS at +{p.lead_time_s:.0f}s needs "
        f"{instances_phrase(floor)}",
    )


@dataclass
class Proposal:
    """A step's wish before cooldowns and bounds: the target, why, and the code for metrics."""

    replicas: int
    reason: str
    code: str
    direction: Literal["up", "down", "hold"] = "hold"
    # forecast-driven scale-ups skip the up cooldown: they are a plan, not a reaction
    planned: bool = False
    extra_state: dict[str, Any] = field(default_factory=dict)


def threshold_proposal(
    readings: list[Reading],
    current: int,
    signals: Signals,
    rules: PolicyRules,
    remembered_need: int | None = None,
) -> Proposal:
    """Any signal above -> up to what keeps each load signal at target_fill (at least step_up); all
    below -> down to the most the load needed within the down window."""
    if not readings:
        return Proposal(
            current, f"no signal available, holding {instances_phrase(current)}", "hold_no_signal"
        )
    above = [r for r in readings if r.status == "above"]
    needs = [r.need for r in readings if r.need is not None]
    if above:
        pending = signals.target_replicas > signals.running_replicas
        if pending and all(r.need is None for r in above):
            # p99 lags: it stays high until the starting instances take load, so wait for them.
            waiting = signals.target_replicas - signals.running_replicas
            why = ", ".join(r.describe(current) for r in above)
            return Proposal(
                current, f"{why}, waiting for {instances_phrase(waiting)} starting", "hold_starting"
            )
        target = max([current + rules.step_up] + needs)
        why = ", ".join(r.describe(current) for r in above)
        return Proposal(target, why, "scale_up_threshold", "up")
    # Knowing the capacity, the load band decides how far down; a latency that stays high at any
    # load (a slow model) must not pin the fleet at its maximum.
    vetoes = [
        r
        for r in readings
        if r.status != "below"
        and r.threshold.down is not None
        and (r.need is not None or not capacity_known(rules))
    ]
    if not vetoes:
        why = (
            "all signals below thresholds ("
            + ", ".join(r.describe(current) for r in readings)
            + ")"
        )
        if not needs:
            return Proposal(current - rules.step_down, why, "scale_down_threshold", "down")
        target = max(needs + ([remembered_need] if remembered_need is not None else []))
        if target >= current:
            return Proposal(
                current,
                f"{why} but the load needed {instances_phrase(target)} within the last "
                f"{rules.cooldown_down_s:.0f}s, holding",
                "hold_needed",
            )
        return Proposal(target, why, "scale_down_threshold", "down")
    within = ", ".join(r.describe(current) for r in readings)
    return Proposal(current, f"{within}, holding {instances_phrase(current)}", "hold_within")


def cost_optimize_proposal(
    readings: list[Reading], current: int, state: dict[str, Any], rules: PolicyRules
) -> Proposal:
    """Fewest instances keeping p99 under max_latency_ms, remembering the per-instance QPS where p99
    broke."""
    p99 = next((r.total for r in readings if r.name == "p99_ms"), None)
    qps = next((r.total for r in readings if r.name == "qps"), None)
    limit = rules.max_latency_ms
    if p99 is None:
        return Proposal(
            current,
            f"p99 unavailable in cost-optimize mode, holding {instances_phrase(current)}",
            "hold_no_signal",
        )
    if p99 > limit:
        target = current + rules.step_up
        extra = {"cost_violation_qps_per_replica": qps / max(current, 1)} if qps is not None else {}
        return Proposal(
            target,
            f"p99={p99:.0f}ms > max latency {limit:.0f}ms",
            "scale_up_latency",
            "up",
            extra_state=extra,
        )
    if p99 >= rules.cost_down_ratio * limit:
        return Proposal(
            current,
            f"p99={p99:.0f}ms close to max latency {limit:.0f}ms, holding "
            f"{instances_phrase(current)}",
            "hold_within",
        )
    target = current - rules.step_down
    broke_at = state.get("cost_violation_qps_per_replica")
    if broke_at is not None and qps is not None and target > 0 and qps / target >= broke_at:
        return Proposal(
            current,
            f"p99={p99:.0f}ms but {instances_phrase(target)} would each take {qps / target:.0f} "
            f"QPS, where p99 exceeded {limit:.0f}ms before; holding {instances_phrase(current)}",
            "hold_learned_capacity",
        )
    return Proposal(
        target,
        f"p99={p99:.0f}ms < {rules.cost_down_ratio * limit:.0f}ms (cost-optimize)",
        "scale_down_latency",
        "down",
    )


def apply_forecast(proposal: Proposal, forecast: ForecastNeed | None, current: int) -> Proposal:
    """A floor above the target raises it to the forecast's landing count (a plan); a scale-down
    stops at that landing count."""
    if forecast is None:
        return proposal
    if forecast.floor is None or forecast.landing is None:
        return replace(proposal, reason=f"{proposal.reason} ({forecast.why})")
    wish = max(proposal.replicas, current)
    if forecast.floor > wish:
        why = forecast.why
        if forecast.landing > forecast.floor:
            why += f", {forecast.landing} at target_fill"
        return Proposal(
            forecast.landing,
            why,
            "scale_up_forecast",
            "up",
            planned=True,
            extra_state=proposal.extra_state,
        )
    if proposal.replicas < current and forecast.landing > proposal.replicas:
        if forecast.landing >= current:
            return Proposal(
                current,
                f"{proposal.reason} but {forecast.why}, holding",
                "hold_forecast",
                extra_state=proposal.extra_state,
            )
        return Proposal(
            forecast.landing,
            f"{proposal.reason}; {forecast.why}",
            proposal.code,
            proposal.direction,
            extra_state=proposal.extra_state,
        )
    return proposal


def follow_forecast_down(
    proposal: Proposal,
    forecast: ForecastNeed | None,
    current: int,
    load_need: int | None,
    down_wait_s: float,
    rules: PolicyRules,
) -> Proposal:
    """A hold whose forecast landing and recent load both need at most target_fill of the current
    instances goes down to the larger of the two (`predictive.follow_down`)."""
    if (
        forecast is None
        or forecast.landing is None
        or load_need is None
        or not rules.predictive.follow_down
        or proposal.code != "hold_within"
        or down_wait_s > 0
    ):
        return proposal
    target = max(forecast.landing, load_need)
    # The same hysteresis as the load band: the fleet shrinks only when it is at least
    # 1 / target_fill too big, so the next rise of the forecast does not undo it. A planned
    # forecast's steps are the hysteresis already.
    fill = 1.0 if rules.predictive.landing == "floor" else rules.target_fill
    if target > math.floor(current * fill + 1e-9) or target >= current:
        return proposal
    at_fill = f" ({forecast.landing} at target_fill)" if forecast.landing != forecast.floor else ""
    return Proposal(
        target,
        f"{forecast.why}{at_fill} and the load needed "
        f"{instances_phrase(load_need)} within the last {rules.cooldown_down_s:.0f}s",
        "scale_down_forecast",
        "down",
        extra_state=proposal.extra_state,
    )


def queue_fallback(
    signals: Signals, thresholds: Thresholds, current: int, why: str, rules: PolicyRules
) -> Proposal:
    """Scale on Ray's own ongoing-request count when Prometheus signals are missing, saying so."""
    only_queue = Thresholds(ongoing_per_replica=thresholds.ongoing_per_replica or FALLBACK_ONGOING)
    readings = read_signals(signals, only_queue, current, rules.target_fill)
    proposal = threshold_proposal(readings, current, signals, rules)
    return Proposal(
        proposal.replicas,
        f"{why}: queue-based fallback, {proposal.reason}",
        "fallback_" + proposal.code,
        proposal.direction,
    )


def apply_cooldown(
    proposal: Proposal, current: int, state: dict[str, Any], now: float, rules: PolicyRules
) -> Proposal:
    """Hold instead of scaling while the direction's cooldown runs (planned forecast scale-ups
    excepted)."""
    if proposal.replicas == current or proposal.planned:
        return proposal
    direction = "up" if proposal.replicas > current else "down"
    left = cooldown_left(state, now, rules, direction)
    if left <= 0:
        return proposal
    return Proposal(
        current,
        f"{proposal.reason} but scale-{direction} cooldown ({left:.0f}s left), holding "
        f"{instances_phrase(current)}",
        f"cooldown_{direction}",
        extra_state=proposal.extra_state,
    )


def apply_event_budget(
    proposal: Proposal, current: int, events: list[float], now: float, rules: PolicyRules
) -> Proposal:
    """Hold a scale-down unless two events of the budget are left (the last stays for a
    scale-up); a scale-up goes ahead even over the budget, and its reason says so."""
    if proposal.replicas == current:
        return proposal
    direction = "up" if proposal.replicas > current else "down"
    left, bound = events_left(events, now, rules)
    if direction == "up" and left is not None and left < 1:
        return replace(
            proposal,
            reason=f"{proposal.reason} (over the scale-event budget, {bound}: a scale-up is "
            "never held)",
        )
    if budget_allows(direction, left):
        return proposal
    spent = "is spent" if not left else "keeps its last event for a scale-up"
    return Proposal(
        current,
        f"{proposal.reason} but the scale-event budget ({bound}) {spent}, holding "
        f"{instances_phrase(current)}",
        "hold_event_budget",
        extra_state=proposal.extra_state,
    )


def apply_bounds(proposal: Proposal, low: int, high: int) -> Proposal:
    """Clamp to [min, max] and say so when the clamp changed the wish."""
    bounded = min(max(proposal.replicas, low), high)
    if bounded == proposal.replicas:
        return proposal
    limit = (
        f"max_replicas={high}"
        if bounded == high and proposal.replicas > high
        else f"min_replicas={low}"
    )
    return Proposal(
        bounded,
        f"{proposal.reason} (limited by {limit})",
        proposal.code,
        proposal.direction,
        proposal.planned,
        proposal.extra_state,
    )


def next_state(
    state: dict[str, Any], proposal: Proposal, current: int, now: float, code: str
) -> dict[str, Any]:
    """The state to carry forward: when each direction last scaled, learned limits, the last
    decision code."""
    new = dict(state)
    new.update(proposal.extra_state)
    if proposal.replicas > current:
        new["last_scale_up_s"] = now
    elif proposal.replicas < current:
        new["last_scale_down_s"] = now
    new["last_code"] = code
    return new
