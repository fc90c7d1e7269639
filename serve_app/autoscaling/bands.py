"""The steps that keep the policy from flapping: where a scaling lands, how long a scale-down
remembers the load, and the budget of scale events.

- Landing: after any scaling each instance carries at most `target_fill` of its `up` threshold, so
  the load has to rise by 1 / target_fill (25% at 0.8) before the next scale-up; steps grow with the
  fleet instead of one instance at a time.
- Down band: with `predictive.replica_capacity_qps` known and no `thresholds.qps` written, the QPS
  band follows from the capacity: up at capacity x headroom, down at target_fill² of that, so a
  scale-down also waits for the load to fall by the same 25%.
  With `predictive.fleet_capacity_qps` measured, the band is that of the current fleet's size (a
  larger fleet sustains more per instance) and the load's need is the fewest instances whose
  fleet keeps it at target_fill.
- Memory: a scale-down goes to the most instances the load needed over the last `cooldown_down_s`
  (the maximum over the delay window, not the last reading), so a short lull is not undone by the
  next period.
- Budget: at most `max_scale_events_per_hour` / `max_scale_events_per_day` scale-downs, and a
  scale-down never spends the last event of either budget. A scale-up is never held: the budget
  is there against flapping, and a fleet held below a rising load would break the SLO until the
  spent events age out (hours); once the budget is spent the fleet can only grow, which ends any
  flapping by itself.

Pure functions of their inputs; the state they read and write travels in the policy's state dict.
"""

from __future__ import annotations

import math
from typing import Any

from serve_app.autoscaling.planner import fleet_capacity, replicas_for_fleet_rate, replicas_for_rate
from serve_app.autoscaling.rules import PolicyRules, Threshold

HOUR = 3600.0
DAY = 86400.0
# The need window keeps its maximum per bucket: 10 buckets per window bound the state's size.
BUCKETS_PER_WINDOW = 10


def landing_need(total: float, up: float, fill: float) -> int:
    """Instances that keep each at or under fill x up: ceil(total / (fill x up))."""
    if up <= 0 or total <= 0:
        return 0
    # The tiny epsilon keeps 160 / (0.8 * 100) from becoming 3 through float noise.
    return math.ceil(total / (fill * up) - 1e-9)


def capacity_known(rules: PolicyRules) -> bool:
    """Whether the rules state what an instance sustains (`predictive.replica_capacity_qps` or
    `predictive.fleet_capacity_qps`)."""
    return rules.predictive.fleet_capacity_qps is not None or (
        "replica_capacity_qps" in rules.predictive.model_fields_set
    )


def instance_capacity(rules: PolicyRules, replicas: int) -> float:
    """QPS each of `replicas` instances sustains: from the fleet table when measured, else the one
    per-replica figure."""
    table = rules.predictive.fleet_capacity_qps
    if table is None:
        return rules.predictive.replica_capacity_qps
    replicas = max(replicas, 1)
    return fleet_capacity(table, replicas) / replicas


def instances_for(rules: PolicyRules, rate_qps: float, share: float) -> int:
    """The fewest instances that serve `rate_qps` at `share` of their capacity (fleet-sized when
    the table is measured)."""
    table = rules.predictive.fleet_capacity_qps
    if table is None:
        return replicas_for_rate(rate_qps, rules.predictive.replica_capacity_qps, share)
    return replicas_for_fleet_rate(rate_qps, table, share)


def derived_qps_threshold(rules: PolicyRules, replicas: int = 1) -> Threshold | None:
    """The per-instance QPS band the capacity of a fleet of `replicas` implies: up at capacity x
    headroom, down at fill² of it; None when the capacity is unknown."""
    if not capacity_known(rules):
        return None
    planned = instance_capacity(rules, replicas) * rules.predictive.headroom
    return Threshold(up=planned, down=planned * rules.target_fill**2)


def remember_need(
    window: list[list[float]], now: float, need: int | None, window_s: float
) -> list[list[float]]:
    """The need window with this period's need added: [bucket start, max need] pairs younger than
    `window_s`."""
    bucket_s = max(window_s / BUCKETS_PER_WINDOW, 1.0)
    kept = [list(b) for b in window if b[0] + bucket_s > now - window_s]
    if need is None:
        return kept
    start = math.floor(now / bucket_s) * bucket_s
    if kept and kept[-1][0] == start:
        kept[-1][1] = max(kept[-1][1], need)
    else:
        kept.append([start, need])
    return kept


def window_need(window: list[list[float]], now: float, window_s: float) -> int | None:
    """The most instances the load needed within the last `window_s` (None when nothing was
    recorded)."""
    bucket_s = max(window_s / BUCKETS_PER_WINDOW, 1.0)
    # A bucket counts while any of its seconds is within the window.
    recent = [int(b[1]) for b in window if b[0] + bucket_s > now - window_s]
    return max(recent) if recent else None


def recent_events(events: list[float], now: float) -> list[float]:
    """Scale-event times within the last day, the oldest first."""
    return [t for t in events if now - t < DAY]


def events_left(events: list[float], now: float, rules: PolicyRules) -> tuple[int | None, str]:
    """Scale events the tighter budget still allows now, and that budget's name (None: no
    budget)."""
    recent = recent_events(events, now)
    budgets = []
    if rules.max_scale_events_per_hour is not None:
        used = sum(1 for t in recent if now - t < HOUR)
        budgets.append(
            (
                rules.max_scale_events_per_hour - used,
                f"max_scale_events_per_hour={rules.max_scale_events_per_hour}",
            )
        )
    if rules.max_scale_events_per_day is not None:
        budgets.append(
            (
                rules.max_scale_events_per_day - len(recent),
                f"max_scale_events_per_day={rules.max_scale_events_per_day}",
            )
        )
    if not budgets:
        return None, ""
    return min(budgets)


def budget_allows(direction: str, left: int | None) -> bool:
    """A scale-up always; a scale-down with two events left, so the budget keeps one for a
    scale-up within it."""
    if left is None or direction == "up":
        return True
    return left >= 2


def state_after_bands(
    state: dict[str, Any], now: float, need: int | None, changed: bool, rules: PolicyRules
) -> dict[str, Any]:
    """The need window and the scale-event times to carry to the next period."""
    return {
        "need_window": remember_need(
            state.get("need_window") or [], now, need, rules.cooldown_down_s
        ),
        "scale_events": recent_events(state.get("scale_events") or [], now)
        + ([now] if changed else []),
    }
