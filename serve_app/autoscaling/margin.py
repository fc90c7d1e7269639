"""The learned forecast margin (`predictive.plan_on: learned`): plan on the point forecast (yhat)
times a margin learned from how far the actual rate recently came above it.

Prophet's upper bound is a fixed interval, about 10% above yhat on a steady daily shape whatever the
forecast has actually missed by lately; planning on it over-provisions a well-forecast service and
under-provisions a badly forecast one. Each sample pairs the yhat read for now + lead time with the
rate measured when that time comes; the margin is a high quantile of actual / yhat over the last
`margin_window_s`, never below `margin_floor`. Until `margin_min_samples` samples are known the
policy plans on the upper bound as before.

Pure: the samples travel in the policy state, like every other memory of `decide()`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from serve_app.autoscaling.rules import PolicyRules
from serve_app.autoscaling.signals import Signals

# One sample a minute: finer samples of a per-minute rate add no information, only state.
SAMPLE_S = 60.0
# Below this the ratio is noise over nothing (an idle night), not a forecast error.
MIN_YHAT_QPS = 1e-3


def learned_margin(ratios: list[list[float]], rules: PolicyRules) -> float | None:
    """The margin over yhat: the `margin_quantile` of the recorded actual / yhat ratios, at least
    `margin_floor`; None while fewer than `margin_min_samples` are known."""
    p = rules.predictive
    if len(ratios) < p.margin_min_samples:
        return None
    quantile = float(np.quantile([r[1] for r in ratios], p.margin_quantile))
    return max(p.margin_floor, quantile)


def record_samples(
    state: dict[str, Any], signals: Signals, now: float, rules: PolicyRules, fresh: bool
) -> dict[str, Any]:
    """The margin's state after this period: a pending yhat per minute (due at now + lead time),
    and the actual / yhat ratio of every pending yhat that came due while the rate was known."""
    p = rules.predictive
    pending = [list(x) for x in state.get("margin_pending") or []]
    ratios = [list(x) for x in state.get("margin_ratios") or [] if x[0] > now - p.margin_window_s]
    due = [x for x in pending if x[0] <= now]
    pending = [x for x in pending if x[0] > now]
    if signals.qps is not None and math.isfinite(signals.qps):
        # A due yhat is compared with the rate only within one sample of its time; one seen later
        # (no rate while Prometheus was away) is dropped rather than compared with another hour.
        for due_at, yhat in due:
            if now - due_at <= SAMPLE_S:
                ratios.append([now, max(signals.qps, 0.0) / yhat])
    yhat = signals.forecast_yhat_qps
    if fresh and yhat is not None and math.isfinite(yhat) and yhat >= MIN_YHAT_QPS:
        due_at = now + p.lead_time_s
        if not pending or due_at - pending[-1][0] >= SAMPLE_S:
            pending.append([due_at, float(yhat)])
    return {"margin_pending": pending, "margin_ratios": ratios}


def planning_signals(
    signals: Signals, state: dict[str, Any], rules: PolicyRules
) -> tuple[Signals, str | None]:
    """The signals the forecast floor reads: with a learned margin known, forecast_qps becomes
    yhat x margin, and the words saying so; otherwise the signals as they are (the upper bound)."""
    p = rules.predictive
    yhat = signals.forecast_yhat_qps
    if p.plan_on != "learned" or yhat is None or not math.isfinite(yhat):
        return signals, None
    margin = learned_margin(state.get("margin_ratios") or [], rules)
    if margin is None:
        return signals, None
    planned = max(yhat, 0.0) * margin
    why = f"yhat {yhat:.0f} QPS x learned margin {margin:.2f}"
    return replace(signals, forecast_qps=planned), why
