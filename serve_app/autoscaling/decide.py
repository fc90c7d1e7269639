"""`decide(signals, state, now, rules)`: the policy's replica target, composed from the named steps.

It never reads a clock, Prometheus or Ray: everything it needs is passed in, and everything it must
remember travels in the returned state dict. `ray_policy.ForecastPolicy` feeds it inside the Serve
controller; the lab's simulator feeds it the same way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from serve_app.autoscaling.bands import state_after_bands, window_need
from serve_app.autoscaling.margin import planning_signals, record_samples
from serve_app.autoscaling.readings import instances_phrase
from serve_app.autoscaling.rules import PolicyRules
from serve_app.autoscaling.signals import Decision, Signals
from serve_app.autoscaling.steps import (
    active_window,
    apply_bounds,
    apply_cooldown,
    apply_event_budget,
    apply_forecast,
    cooldown_left,
    cost_optimize_proposal,
    effective_thresholds,
    fleet_qps_need,
    follow_forecast_down,
    forecast_need,
    next_state,
    queue_fallback,
    read_signals,
    replica_bounds,
    threshold_proposal,
)

PROMETHEUS_SIGNALS = ("qps", "p99_ms", "gpu_utilization")


def decide(signals: Signals, state: dict[str, Any], now: float, rules: PolicyRules) -> Decision:
    """The replica target for this control period, the state for the next one, and the reason."""
    state = dict(state or {})
    current = max(signals.target_replicas, 0)
    window = active_window(rules, now)
    thresholds = effective_thresholds(rules, window, current)
    low, high = replica_bounds(signals, rules, window)

    prometheus_signals_present = any(
        getattr(signals, name) is not None for name in PROMETHEUS_SIGNALS
    )
    need = None
    forecast = None
    if not signals.prometheus_available:
        proposal = queue_fallback(signals, thresholds, current, "Prometheus unavailable", rules)
    elif not prometheus_signals_present:
        proposal = queue_fallback(
            signals, thresholds, current, "QPS, p99 and GPU signals unavailable", rules
        )
    else:
        readings = read_signals(
            signals, thresholds, current, rules.target_fill, fleet_qps_need(rules, window)
        )
        needs = [r.need for r in readings if r.need is not None]
        need = max(needs) if needs else None
        remembered = None
        if rules.mode == "cost-optimize":
            proposal = cost_optimize_proposal(readings, current, state, rules)
        else:
            remembered = window_need(state.get("need_window") or [], now, rules.cooldown_down_s)
            proposal = threshold_proposal(readings, current, signals, rules, remembered)
        proposal = apply_cooldown(proposal, current, state, now, rules)
        planning, basis = planning_signals(signals, state, rules)
        forecast = forecast_need(planning, rules, now)
        if forecast is not None and basis:
            forecast = replace(forecast, why=f"{forecast.why} ({basis})")
        proposal = apply_forecast(proposal, forecast, current)
        if (
            forecast is not None
            and forecast.floor is not None
            and rules.predictive.landing == "floor"
        ):
            # A planned forecast leads the fleet down to what keeps the load at follow_down_fill
            # of `up`, not target_fill of it: the plan's steps, not a wide band, bound the events.
            fill = rules.predictive.follow_down_fill
            nearer = read_signals(
                signals, thresholds, current, fill, fleet_qps_need(rules, window, fill)
            )
            need = max([r.need for r in nearer if r.need is not None], default=need)
        if need is not None and rules.mode != "cost-optimize":
            load_need = max(need, remembered or 0)
            down_wait = cooldown_left(state, now, rules, "down")
            proposal = follow_forecast_down(
                proposal, forecast, current, load_need, down_wait, rules
            )
    if proposal.code.startswith("fallback_"):
        proposal = apply_cooldown(proposal, current, state, now, rules)
    proposal = apply_bounds(proposal, low, high)
    proposal = apply_event_budget(proposal, current, state.get("scale_events") or [], now, rules)

    reason = proposal.reason
    if proposal.replicas != current:
        verb = "scaling up" if proposal.replicas > current else "scaling down"
        reason = f"{reason}, {verb}: {current} → {instances_phrase(proposal.replicas)}"
    if window is not None:
        reason = f"[{window.name}] {reason}"
    new_state = next_state(state, proposal, current, now, proposal.code)
    new_state.update(state_after_bands(state, now, need, proposal.replicas != current, rules))
    if rules.predictive.enabled and rules.predictive.plan_on == "learned":
        new_state.update(record_samples(state, signals, now, rules, forecast is not None))
    return Decision(proposal.replicas, new_state, reason, proposal.code)
