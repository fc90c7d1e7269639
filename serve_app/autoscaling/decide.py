"""`decide(signals, state, now, rules)`: the policy's replica target, composed from the named steps.

It never reads a clock, Prometheus or Ray: everything it needs is passed in, and everything it must
remember travels in the returned state dict. `ray_policy.ForecastPolicy` feeds it inside the Serve
controller; the lab's simulator feeds it the same way.
"""

from __future__ import annotations

from typing import Any

from serve_app.autoscaling.readings import instances_phrase
from serve_app.autoscaling.rules import PolicyRules
from serve_app.autoscaling.signals import Decision, Signals
from serve_app.autoscaling.steps import (
    active_window,
    apply_bounds,
    apply_cooldown,
    apply_forecast,
    cost_optimize_proposal,
    effective_thresholds,
    forecast_floor,
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
    thresholds = effective_thresholds(rules, window)
    low, high = replica_bounds(signals, rules, window)

    prometheus_signals_present = any(
        getattr(signals, name) is not None for name in PROMETHEUS_SIGNALS
    )
    if not signals.prometheus_available:
        proposal = queue_fallback(signals, thresholds, current, "Prometheus unavailable", rules)
    elif not prometheus_signals_present:
        proposal = queue_fallback(
            signals, thresholds, current, "QPS, p99 and GPU signals unavailable", rules
        )
    else:
        readings = read_signals(signals, thresholds, current)
        if rules.mode == "cost-optimize":
            proposal = cost_optimize_proposal(readings, current, state, rules)
        else:
            proposal = threshold_proposal(readings, current, signals, rules)
        floor, floor_why = forecast_floor(signals, rules, now)
        proposal = apply_cooldown(proposal, current, state, now, rules)
        proposal = apply_forecast(proposal, floor, floor_why, readings, current, rules)
        if proposal.code == "scale_down_forecast":
            proposal = apply_cooldown(proposal, current, state, now, rules)
    if proposal.code.startswith("fallback_"):
        proposal = apply_cooldown(proposal, current, state, now, rules)
    proposal = apply_bounds(proposal, low, high)

    reason = proposal.reason
    if proposal.replicas != current:
        verb = "scaling up" if proposal.replicas > current else "scaling down"
        reason = f"{reason}, {verb}: {current} → {instances_phrase(proposal.replicas)}"
    if window is not None:
        reason = f"[{window.name}] {reason}"
    return Decision(
        proposal.replicas,
        next_state(state, proposal, current, now, proposal.code),
        reason,
        proposal.code,
    )
