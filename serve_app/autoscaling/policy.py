"""Autoscaling policy: a pure `decide()` built from small named steps, and the rules it reads from
YAML.

`decide(signals, state, now, rules)` never reads a clock, Prometheus or Ray: everything it needs is passed
in, and everything it must remember travels in the returned state dict. The Ray Serve adapter,
`ForecastPolicy`, lives in `serve_app.autoscaling.ray_policy` and is importable from here as
`policy_function: serve_app.autoscaling.policy:ForecastPolicy`: Ray pickles the module named in that path by value,
and pydantic models do not survive that, so the adapter's own module is a different one and travels
by reference (the controller imports it like any installed package).

How thresholds relate to replica counts: `qps` and `ongoing_per_replica` are compared per instance
(deployment QPS / instances), so with one instance `qps.up: 100` is the familiar "QPS > 100 scales
up", and with five instances it means "more than 100 QPS each". They also say how many instances the
load needs: ceil(QPS / qps.up). `p99_ms` and `gpu_utilization` are deployment averages compared as
they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.autoscaling.planner import check_capacity, check_lead_time, replicas_for_rate
from serve_app.validation import validation_problems

STATE_KEY = "forecast_policy"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SIGNAL_NAMES = ("qps", "p99_ms", "gpu_utilization", "ongoing_per_replica")
PROMETHEUS_SIGNALS = ("qps", "p99_ms", "gpu_utilization")


# --------------------------------------------------------------------------------------------------
# Rules (parsed from policy_kwargs: plain JSON-able dicts from the YAML)
# --------------------------------------------------------------------------------------------------


class Rule(BaseModel):
    """Base: unknown keys are errors, so a misspelt YAML key never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(Rule):
    """Scale up above `up`, allow scaling down below `down`."""

    up: float | None = Field(
        None, ge=0, description="Scale up when the signal is above this value."
    )
    down: float | None = Field(
        None, ge=0, description="Scaling down needs the signal below this value."
    )

    @model_validator(mode="after")
    def _down_not_above_up(self) -> "Threshold":
        if self.up is not None and self.down is not None and self.down > self.up:
            raise ValueError(
                f"down ({self.down:g}) must not exceed up ({self.up:g}), or the policy would flap"
            )
        return self

    def merged(self, override: "Threshold | None") -> "Threshold":
        """This threshold with the fields `override` sets replaced."""
        if override is None:
            return self
        return Threshold(
            up=override.up if override.up is not None else self.up,
            down=override.down if override.down is not None else self.down,
        )


class Thresholds(Rule):
    """One threshold pair per signal; a signal without thresholds is not used."""

    qps: Threshold | None = Field(
        None,
        description="Requests per second per instance (deployment QPS / instances). Seeds: up 100, down 20.",
    )
    p99_ms: Threshold | None = Field(
        None, description="p99 end-to-end latency of the model, milliseconds."
    )
    gpu_utilization: Threshold | None = Field(
        None, description="Average GPU utilization, ratio 0..1. Seeds: up 0.7, down 0.3."
    )
    ongoing_per_replica: Threshold | None = Field(
        None,
        description="Ongoing (running + queued) requests per instance, from Ray itself: the signal that "
        "remains when Prometheus is down. Empty means up 4, down 1 in the queue-based fallback only.",
    )

    def merged(self, override: "Thresholds | None") -> "Thresholds":
        """These thresholds with a window's overrides applied signal by signal."""
        if override is None:
            return self
        values = {}
        for name in SIGNAL_NAMES:
            base, over = getattr(self, name), getattr(override, name)
            values[name] = over if base is None else base.merged(over)
        return Thresholds(**values)


def _parse_hhmm(value: str) -> int:
    try:
        hours, minutes = (int(part) for part in value.split(":"))
    except (ValueError, AttributeError):
        raise ValueError(f"time {value!r} must look like HH:MM, e.g. 09:00") from None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or hours * 60 + minutes > 24 * 60:
        raise ValueError(f"time {value!r} is not a time of day between 00:00 and 24:00")
    return hours * 60 + minutes


class TimeWindow(Rule):
    """A named local-time window with its own thresholds (e.g. `peak-hours` 09:00-21:00 on
    weekdays)."""

    name: str = Field(..., description="Shown in reasons and logs, e.g. `peak-hours`.")
    start: str = Field(..., description="Local start time HH:MM (inclusive).")
    end: str = Field(
        ...,
        description="Local end time HH:MM (exclusive); earlier than start means it crosses midnight.",
    )
    days: list[str] = Field(
        list(DAYS),
        description="Days the window starts on (mon..sun); a window crossing midnight ends the next day.",
    )
    thresholds: Thresholds = Field(
        Thresholds(), description="Overrides of the base thresholds while active."
    )
    min_replicas: int | None = Field(
        None, ge=0, description="A higher minimum while active (scheduled capacity)."
    )

    @field_validator("start", "end")
    @classmethod
    def _valid_time(cls, value: str) -> str:
        _parse_hhmm(value)
        return value

    @field_validator("days")
    @classmethod
    def _valid_days(cls, value: list[str]) -> list[str]:
        days = [d.strip().lower()[:3] for d in value]
        unknown = [d for d, raw in zip(days, value) if d not in DAYS]
        if unknown or not days:
            raise ValueError(
                f"days {value!r} must be a non-empty list of mon, tue, wed, thu, fri, sat, sun"
            )
        return days

    @model_validator(mode="after")
    def _not_empty(self) -> "TimeWindow":
        if _parse_hhmm(self.start) == _parse_hhmm(self.end):
            raise ValueError(
                f"window {self.name!r} starts and ends at {self.start}: it would never be active"
            )
        return self

    def contains(self, local: datetime) -> bool:
        """True when the local time falls inside this window, counting a midnight-crossing window to
        its start day."""
        start, end = _parse_hhmm(self.start), _parse_hhmm(self.end)
        minute = local.hour * 60 + local.minute
        if start < end:
            return start <= minute < end and DAYS[local.weekday()] in self.days
        if minute >= start:
            return DAYS[local.weekday()] in self.days
        if minute < end:
            return DAYS[(local - timedelta(days=1)).weekday()] in self.days
        return False


class PredictiveRules(Rule):
    """The forecast floor: replicas the forecast upper bound needs at now + lead time."""

    enabled: bool = Field(True, description="Use the forecast as a floor when it is fresh.")
    replica_capacity_qps: float = Field(
        40.0,
        gt=0,
        description="QPS one instance sustains within the SLO (measure with `recserve capacity`).",
    )
    headroom: float = Field(
        0.8, gt=0, le=1, description="Plan each instance at this share of its capacity."
    )
    lead_time_s: float = Field(
        120.0,
        ge=0,
        description="How far ahead the forecast is read (the Forecaster publishes it at this lead).",
    )
    startup_s: float = Field(
        60.0, ge=0, description="Measured start-up time of one instance; lead_time_s must be >= it."
    )
    max_forecast_age_s: float = Field(
        7200.0,
        gt=0,
        description="A forecast fitted longer ago than this is ignored (the policy runs reactive).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "PredictiveRules":
        check_capacity(self.replica_capacity_qps, self.headroom)
        check_lead_time(self.lead_time_s, self.startup_s)
        return self


class PolicyRules(Rule):
    """Everything `policy_kwargs` may hold; see docs/AUTOSCALING.md for the YAML."""

    deployment: str = Field(
        "", description="Deployment name, used in metric labels and Prometheus queries."
    )
    model_name: str = Field(
        "efficientnet_lite0", description="model_name label of the model's metrics."
    )
    prometheus_address: str | None = Field(
        None,
        description="Prometheus base URL; empty means the RAY_PROMETHEUS_HOST environment variable.",
    )
    fetch_interval_s: float = Field(
        5.0, gt=0, description="Seconds between background Prometheus fetches."
    )
    cache_ttl_s: float = Field(
        30.0, gt=0, description="Prometheus results older than this count as unavailable."
    )
    timezone: str = Field(
        "UTC", description="IANA time zone the windows are written in, e.g. Asia/Shanghai."
    )
    min_replicas: int | None = Field(
        None,
        ge=0,
        description="Narrows Serve's min_replicas; empty means the deployment's autoscaling_config.",
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Narrows Serve's max_replicas; empty means the deployment's autoscaling_config.",
    )
    step_up: int = Field(
        2, ge=1, description="Instances added per scale-up (more when QPS says more are needed)."
    )
    step_down: int = Field(1, ge=1, description="Instances removed per scale-down.")
    cooldown_up_s: float = Field(
        30.0, ge=0, description="Seconds after a scale-up before the next scale-up."
    )
    cooldown_down_s: float = Field(
        300.0, ge=0, description="Seconds after any scaling before a scale-down (seeds: 300)."
    )
    thresholds: Thresholds = Field(
        Thresholds(qps=Threshold(up=100, down=20), gpu_utilization=Threshold(up=0.7, down=0.3)),
        description="Base thresholds: any signal above `up` scales up, all below `down` scale down.",
    )
    windows: list[TimeWindow] = Field(
        [], description="Time windows; the first active one overrides thresholds."
    )
    mode: Literal["balanced", "cost-optimize"] = Field(
        "balanced",
        description="`cost-optimize` holds the fewest instances that keep p99 under max_latency_ms.",
    )
    max_latency_ms: float = Field(
        800.0, gt=0, description="The p99 bound of cost-optimize mode (seeds: --max-latency=800)."
    )
    cost_down_ratio: float = Field(
        0.6,
        gt=0,
        lt=1,
        description="cost-optimize scales down only while p99 < this share of max_latency_ms.",
    )
    predictive: PredictiveRules = Field(
        PredictiveRules(enabled=False), description="The forecast floor."
    )
    queries: dict[str, str] = Field(
        {},
        description="PromQL overrides by signal name (qps, p99_ms, gpu_utilization, forecast_qps, forecast_fit_time).",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as Asia/Shanghai or UTC"
            ) from None
        return value

    @field_validator("queries")
    @classmethod
    def _known_queries(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(QUERY_NAMES))
        if unknown:
            raise ValueError(f"unknown query names {unknown}: use {list(QUERY_NAMES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> "PolicyRules":
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and self.min_replicas > self.max_replicas
        ):
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        return self

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "PolicyRules":
        """Rules from `policy_kwargs`; raises ValueError with every problem and where it is."""
        try:
            return cls.model_validate(kwargs or {})
        except ValidationError as exc:
            raise ValueError(
                f"invalid autoscaling policy_kwargs: {validation_problems(exc, 'policy_kwargs')}"
            ) from None

    def zone(self) -> ZoneInfo:
        """The ZoneInfo the windows are read in."""
        return ZoneInfo(self.timezone)


QUERY_NAMES = ("qps", "p99_ms", "gpu_utilization", "forecast_qps", "forecast_fit_time")
FALLBACK_ONGOING = Threshold(up=4, down=1)


def default_queries(rules: PolicyRules) -> dict[str, str]:
    """PromQL per signal for the rules' model, with the overrides from `rules.queries` applied."""
    model = rules.model_name.replace("\\", "\\\\").replace('"', '\\"')
    queries = {
        "qps": f'sum(rate(ray_model_request_total{{model_name="{model}"}}[1m]))',
        "p99_ms": (
            "1000 * histogram_quantile(0.99, sum by (le) "
            f'(rate(ray_model_latency_seconds_bucket{{model_name="{model}"}}[1m])))'
        ),
        "gpu_utilization": "avg(ray_gpu_utilization)",
        "forecast_qps": f'max(ray_forecast_qps{{model_name="{model}",bound="upper"}})',
        "forecast_fit_time": f'max(ray_forecaster_last_fit_timestamp_seconds{{model_name="{model}"}})',
    }
    queries.update(rules.queries)
    return queries


# --------------------------------------------------------------------------------------------------
# Inputs and outputs of decide()
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signals:
    """What the policy sees in one control period; None means the signal is unavailable."""

    running_replicas: int
    target_replicas: int
    min_replicas: int
    max_replicas: int
    ongoing_requests: float | None = (
        None  # running + queued over the whole deployment (Ray's own figure)
    )
    qps: float | None = None  # deployment requests per second
    p99_ms: float | None = None
    gpu_utilization: float | None = None
    forecast_qps: float | None = None  # forecast upper bound at now + lead time
    forecast_fit_time: float | None = None  # unix seconds of the fit that produced forecast_qps
    prometheus_available: bool = True


@dataclass(frozen=True)
class Decision:
    """The replica target, the state to carry to the next call, a sentence for people and a code for
    metrics."""

    replicas: int
    state: dict[str, Any]
    reason: str
    code: str


@dataclass(frozen=True)
class Reading:
    """One signal compared with its thresholds."""

    name: str
    value: float  # the compared value (per instance for qps and ongoing_per_replica)
    total: float  # the deployment-wide value
    threshold: Threshold
    status: Literal["above", "below", "within"]
    need: int | None  # instances this signal says the load needs, when it can say

    def describe(self, instances: int) -> str:
        """'QPS=132 > 100' in the users' words; the comparison follows the status."""
        sign = {"above": ">", "below": "<", "within": "within"}[self.status]
        bound = {"above": self.threshold.up, "below": self.threshold.down}.get(self.status)
        label, shown, unit = _SIGNAL_LABELS[self.name](self.total, self.value, instances)
        if bound is None:
            low = _fmt(self.threshold.down, unit) if self.threshold.down is not None else "-"
            high = _fmt(self.threshold.up, unit) if self.threshold.up is not None else "-"
            return f"{label}={shown} within {low}..{high}"
        return f"{label}={shown} {sign} {_fmt(bound, unit)}"


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:.0f}{unit}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}{unit}"


_SIGNAL_LABELS = {
    "qps": lambda total, each, n: (
        "QPS",
        f"{total:.0f}" if n <= 1 else f"{total:.0f} ({each:.0f} per instance)",
        "",
    ),
    "ongoing_per_replica": lambda total, each, n: (
        "ongoing requests per instance",
        f"{each:.1f}",
        "",
    ),
    "p99_ms": lambda total, each, n: ("p99", f"{total:.0f}ms", "ms"),
    "gpu_utilization": lambda total, each, n: ("GPU utilization", f"{total * 100:.0f}%", "%"),
}


def _instances(n: int) -> str:
    return f"{n} instance" if n == 1 else f"{n} instances"


# --------------------------------------------------------------------------------------------------
# The named steps
# --------------------------------------------------------------------------------------------------


def active_window(rules: PolicyRules, now: float) -> TimeWindow | None:
    """The first window containing `now` in the rules' time zone, or None."""
    if not rules.windows:
        return None
    local = datetime.fromtimestamp(now, rules.zone())
    return next((w for w in rules.windows if w.contains(local)), None)


def effective_thresholds(rules: PolicyRules, window: TimeWindow | None) -> Thresholds:
    """Base thresholds with the active window's overrides."""
    return rules.thresholds.merged(window.thresholds if window else None)


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


def read_signals(signals: Signals, thresholds: Thresholds, base: int) -> list[Reading]:
    """Compare every available signal with its thresholds; `base` instances share the per-instance
    load."""
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
            if per_instance:
                need = math.ceil(
                    total / threshold.up - 1e-9
                )  # instances keeping each at or under `up`
            elif name == "gpu_utilization":
                need = math.ceil(base * total / threshold.up - 1e-9)
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


def forecast_floor(signals: Signals, rules: PolicyRules, now: float) -> tuple[int | None, str]:
    """Replicas the fresh forecast needs at now + lead time (from the planner), or None and why not."""
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
    floor = replicas_for_rate(max(signals.forecast_qps, 0.0), p.replica_capacity_qps, p.headroom)
    return (
        floor,
        f"forecast {signals.forecast_qps:.0f} QPS at +{p.lead_time_s:.0f}s needs {_instances(floor)}",
    )


@dataclass
class Proposal:
    """A step's wish before cooldowns and bounds: the target, why, and the code for metrics."""

    replicas: int
    reason: str
    code: str
    direction: Literal["up", "down", "hold"] = "hold"
    planned: bool = (
        False  # forecast-driven scale-ups skip the up cooldown: they are a plan, not a reaction
    )
    extra_state: dict[str, Any] = field(default_factory=dict)


def threshold_proposal(
    readings: list[Reading], current: int, signals: Signals, rules: PolicyRules
) -> Proposal:
    """Any signal above -> up by step_up (or to what QPS needs); all below -> down by step_down."""
    if not readings:
        return Proposal(
            current, f"no signal available, holding {_instances(current)}", "hold_no_signal"
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
                current, f"{why}, waiting for {_instances(waiting)} starting", "hold_starting"
            )
        target = max([current + rules.step_up] + [r.need for r in above if r.need is not None])
        why = ", ".join(r.describe(current) for r in above)
        return Proposal(target, why, "scale_up_threshold", "up")
    if all(r.status == "below" for r in readings):
        target = max([current - rules.step_down] + needs)
        why = (
            "all signals below thresholds ("
            + ", ".join(r.describe(current) for r in readings)
            + ")"
        )
        return Proposal(target, why, "scale_down_threshold", "down")
    within = ", ".join(r.describe(current) for r in readings)
    return Proposal(current, f"{within}, holding {_instances(current)}", "hold_within")


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
            f"p99 unavailable in cost-optimize mode, holding {_instances(current)}",
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
            f"p99={p99:.0f}ms close to max latency {limit:.0f}ms, holding {_instances(current)}",
            "hold_within",
        )
    target = current - rules.step_down
    broke_at = state.get("cost_violation_qps_per_replica")
    if broke_at is not None and qps is not None and target > 0 and qps / target >= broke_at:
        return Proposal(
            current,
            f"p99={p99:.0f}ms but {_instances(target)} would each take {qps / target:.0f} QPS, where p99 exceeded "
            f"{limit:.0f}ms before; holding {_instances(current)}",
            "hold_learned_capacity",
        )
    return Proposal(
        target,
        f"p99={p99:.0f}ms < {rules.cost_down_ratio * limit:.0f}ms (cost-optimize)",
        "scale_down_latency",
        "down",
    )


def apply_forecast(
    proposal: Proposal,
    floor: int | None,
    floor_why: str,
    readings: list[Reading],
    current: int,
    rules: PolicyRules,
) -> Proposal:
    """Raise the target to the forecast floor; when the forecast and the load say fewer suffice, go
    there."""
    if floor is None:
        return proposal
    if floor > proposal.replicas:
        if floor > current:
            return Proposal(
                floor,
                floor_why,
                "scale_up_forecast",
                "up",
                planned=True,
                extra_state=proposal.extra_state,
            )
        if floor == current:
            return Proposal(
                current,
                f"{proposal.reason} but {floor_why}, holding",
                "hold_forecast",
                extra_state=proposal.extra_state,
            )
        return Proposal(
            floor,
            f"{proposal.reason}; {floor_why}",
            proposal.code,
            proposal.direction,
            extra_state=proposal.extra_state,
        )
    if (
        proposal.direction != "up"
        and proposal.code in ("hold_within", "scale_down_threshold")
        and floor < current
    ):
        # The down thresholds and step_down guard against flapping when the future is unknown. A
        # fresh forecast that expects less load within the lead time is that knowledge: go straight
        # to what both the forecast and the measured load (at the up thresholds, so the next period
        # does not scale back up) need.
        needs = [r.need for r in readings if r.need is not None]
        if needs and not any(r.status == "above" for r in readings):
            target = max([floor] + needs)
            if target < proposal.replicas:
                return Proposal(
                    target,
                    f"{floor_why} and current load needs {_instances(max(needs))}",
                    "scale_down_forecast",
                    "down",
                )
    return proposal


def queue_fallback(
    signals: Signals, thresholds: Thresholds, current: int, why: str, rules: PolicyRules
) -> Proposal:
    """Scale on Ray's own ongoing-request count when Prometheus signals are missing, saying so."""
    only_queue = Thresholds(ongoing_per_replica=thresholds.ongoing_per_replica or FALLBACK_ONGOING)
    readings = read_signals(signals, only_queue, current)
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
        f"{proposal.reason} but scale-{direction} cooldown ({left:.0f}s left), holding {_instances(current)}",
        f"cooldown_{direction}",
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


# --------------------------------------------------------------------------------------------------
# decide()
# --------------------------------------------------------------------------------------------------


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
        reason = f"{reason}, {verb}: {current} → {_instances(proposal.replicas)}"
    if window is not None:
        reason = f"[{window.name}] {reason}"
    return Decision(
        proposal.replicas,
        next_state(state, proposal, current, now, proposal.code),
        reason,
        proposal.code,
    )


def __getattr__(name: str):
    # `serve_app.autoscaling.policy:ForecastPolicy` resolves here lazily, so importing the pure core
    # never imports Ray.
    if name == "ForecastPolicy":
        from serve_app.autoscaling.ray_policy import ForecastPolicy

        return ForecastPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
