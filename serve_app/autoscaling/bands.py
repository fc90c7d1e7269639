"""The steps that keep the policy from flapping: where a scaling lands, how long a scale-down
remembers the load, and the budget of scale events.

- Landing: after any scaling each instance carries at most `target_fill` of its `up` threshold, so
  the load has to rise by 1 / target_fill (25% at 0.8) before the next scale-up; steps grow with the
  fleet instead of one instance at a time.
- Down band: with `predictive.replica_capacity_qps` known and no `thresholds.qps` written, the QPS
  band follows from the capacity: up at capacity x headroom, down at target_fill² of that, so a
  scale-down also waits for the load to fall by the same 25%.
- Memory: a scale-down goes to the most instances the load needed over the last `cooldown_down_s`
  (the maximum over the delay window, not the last reading), so a short lull is not undone by the
  next period.
- Budget: at most `max_scale_events_per_hour` / `max_scale_events_per_day` changes; a scale-down
  never spends the last event of either budget, which stays for a scale-up.

Pure functions of their inputs; the state they read and write travels in the policy's state dict.
"""

from __future__ import annotations

import math
from typing import Any

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
    """Whether the rules state what one instance sustains (`predictive.replica_capacity_qps`)."""
    return "replica_capacity_qps" in rules.predictive.model_fields_set


def derived_qps_threshold(rules: PolicyRules) -> Threshold | None:
    """The per-instance QPS band the capacity implies: up at capacity x headroom, down at fill² of
    it; None when the capacity is unknown."""
    if not capacity_known(rules):
        return None
    planned = rules.predictive.replica_capacity_qps * rules.predictive.headroom
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
    """A scale-up needs one event left; a scale-down two, so the last one stays for a scale-up."""
    if left is None:
        return True
    return left >= (1 if direction == "up" else 2)


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
