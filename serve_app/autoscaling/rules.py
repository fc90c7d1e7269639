"""The autoscaling policy's rules: the schema of `policy_kwargs`, parsed from the YAML's plain
dicts.

How thresholds relate to replica counts: `qps` and `ongoing_per_replica` are compared per instance
(deployment QPS / instances), so with one instance `qps.up: 100` is the familiar "QPS > 100 scales
up", and with five instances it means "more than 100 QPS each". They also say how many instances the
load needs: ceil(QPS / qps.up). `p99_ms` and `gpu_utilization` are deployment averages compared as
they are.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.autoscaling.planner import check_capacity, check_fleet_table, check_lead_time
from serve_app.validation import validation_problems

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SIGNAL_NAMES = ("qps", "p99_ms", "gpu_utilization", "ongoing_per_replica")
QUERY_NAMES = (
    "qps",
    "p99_ms",
    "gpu_utilization",
    "forecast_qps",
    "forecast_yhat_qps",
    "forecast_fit_time",
)


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
        description="Requests per second per instance (deployment QPS / instances). Seeds: up "
        "100, down 20.",
    )
    p99_ms: Threshold | None = Field(
        None, description="p99 end-to-end latency of the model, milliseconds."
    )
    gpu_utilization: Threshold | None = Field(
        None, description="Average GPU utilization, ratio 0..1. Seeds: up 0.7, down 0.3."
    )
    ongoing_per_replica: Threshold | None = Field(
        None,
        description="Ongoing (running + queued) requests per instance, from Ray itself: the "
        "signal that remains when Prometheus is down. Empty means up 4, down 1 in the queue-based "
        "fallback only.",
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
        description="Local end time HH:MM (exclusive); earlier than start means it crosses "
        "midnight.",
    )
    days: list[str] = Field(
        list(DAYS),
        description="Days the window starts on (mon..sun); a window crossing midnight ends the "
        "next day.",
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
        unknown = [d for d, raw in zip(days, value, strict=True) if d not in DAYS]
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
        description="QPS one instance sustains within the SLO (measure with `recserve capacity`). "
        "Setting it, even with enabled: false, also derives the QPS band when thresholds.qps is "
        "not written (see target_fill).",
    )
    fleet_capacity_qps: dict[int, float] | None = Field(
        None,
        description="Measured total QPS of whole fleets within the SLO, {replicas: qps} (N x "
        "what `recserve capacity --replicas N` prints per replica; 1, 2, 4, 8, ...: below the "
        "smallest size its per-instance figure is used). A larger fleet absorbs "
        "bursts better and sustains more per instance; set, it replaces replica_capacity_qps in "
        "the forecast floor, the landing count and the derived QPS band, with the per-instance "
        "figure interpolated between measured sizes and never above the largest size's. Unset: "
        "one figure for every fleet size.",
    )
    headroom: float = Field(
        0.8, gt=0, le=1, description="Plan each instance at this share of its capacity."
    )
    lead_time_s: float = Field(
        120.0,
        ge=0,
        description="How far ahead the forecast is read. For a model the Forecaster forecasts, "
        "the application fills it from `forecaster.lead_time_s` (the lead it publishes at); a "
        "different value is refused.",
    )
    startup_s: float = Field(
        60.0, ge=0, description="Measured start-up time of one instance; lead_time_s must be >= it."
    )
    max_forecast_age_s: float = Field(
        7200.0,
        gt=0,
        description="A forecast fitted longer ago than this is ignored (the policy runs reactive).",
    )
    follow_down: bool = Field(
        True,
        description="Let the forecast lead scale-downs: when no signal is above its `up` and "
        "both the forecast's landing count and the most instances the load needed within the last "
        "cooldown_down_s are at most target_fill of the current instances, go down to the larger "
        "of the two (after the down cooldown). Off: only the load band takes the fleet down.",
    )
    landing: Literal["target_fill", "floor"] = Field(
        "target_fill",
        description="Where a forecast-led scaling lands. `target_fill`: a scale-up goes to what "
        "keeps each instance at target_fill of the floor's load, and a scale-down waits until the "
        "fleet is 1 / target_fill too big. `floor`: both go to the floor itself; for a forecast "
        "already planned into steps (the forecaster's `plan_changes_per_day`), whose steps bound "
        "the scale events.",
    )
    follow_down_fill: float = Field(
        0.85,
        gt=0,
        le=1,
        description="`landing: floor`: a forecast-led scale-down goes to the plan or to what keeps "
        "the load at this share of its `up` threshold, whichever is larger (with `target_fill` it "
        "goes to what keeps it at target_fill). Chosen on the backtest's training traces.",
    )
    plan_on: Literal["upper", "learned"] = Field(
        "upper",
        description="What the forecast floor plans on: `upper`, the forecast's upper bound; "
        "`learned`, the point forecast (yhat) times a margin learned from the recent forecast "
        "error (the margin_quantile of actual / yhat over margin_window_s, at least margin_floor; "
        "the upper bound until margin_min_samples one-minute samples are known).",
    )
    margin_quantile: float = Field(
        0.95, ge=0.5, le=1, description="`plan_on: learned`: the quantile of actual / yhat."
    )
    margin_window_s: float = Field(
        21600.0,
        ge=600,
        description="`plan_on: learned`: how far back the forecast error is remembered.",
    )
    margin_floor: float = Field(
        1.0,
        gt=0,
        description="`plan_on: learned`: the margin is never below this (1: never plan under "
        "yhat).",
    )
    margin_min_samples: int = Field(
        30,
        ge=1,
        description="`plan_on: learned`: one-minute samples needed before the margin is used.",
    )
    mode: Literal["scale", "forecast_only"] = Field(
        "scale",
        description="`forecast_only` reads and reports the forecast floor in each decision's "
        "reason but never applies it: watch the forecast's accuracy before letting it scale.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "PredictiveRules":
        check_capacity(self.replica_capacity_qps, self.headroom)
        if self.fleet_capacity_qps is not None:
            check_fleet_table(self.fleet_capacity_qps)
        check_lead_time(self.lead_time_s, self.startup_s)
        return self


class PolicyRules(Rule):
    """Everything `policy_kwargs` may hold; see docs/AUTOSCALING.md for the YAML."""

    deployment: str = Field(
        "",
        description="Deployment label of the autoscaler metrics; the application fills it from the "
        "model entry (empty: the name Serve gives the policy).",
    )
    model_name: str = Field(
        "",
        validate_default=True,
        description="model_name label of the model's metrics; the application fills it from the "
        "model entry. Empty is an error: the policy would read another model's traffic.",
    )
    prometheus_address: str | None = Field(
        None,
        description="Prometheus base URL; empty means the RAY_PROMETHEUS_HOST environment "
        "variable.",
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
        description="Narrows Serve's min_replicas; empty means the deployment's "
        "autoscaling_config.",
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="Narrows Serve's max_replicas; empty means the deployment's "
        "autoscaling_config.",
    )
    step_up: int = Field(
        2,
        ge=1,
        description="Instances added per scale-up at least; more when a load signal (QPS, ongoing "
        "requests, GPU) says so: what keeps each instance at target_fill of its `up` threshold.",
    )
    step_down: int = Field(
        1,
        ge=1,
        description="Instances removed per scale-down when no load signal says how many the load "
        "needs (p99 only); otherwise a scale-down goes to what the load needed at target_fill.",
    )
    cooldown_up_s: float = Field(
        30.0, ge=0, description="Seconds after a scale-up before the next scale-up."
    )
    cooldown_down_s: float = Field(
        300.0,
        ge=0,
        description="Seconds after any scaling before a scale-down (seeds: 300); also the window "
        "a scale-down remembers: it goes to the most instances the load needed within it.",
    )
    target_fill: float = Field(
        0.8,
        gt=0,
        le=1,
        description="After any scaling each instance carries at most this share of its `up` "
        "threshold, so the load must rise by 1 / target_fill before the next scale-up. With "
        "predictive.replica_capacity_qps set and no thresholds.qps, the QPS band is derived: up "
        "at capacity x headroom, down at target_fill² of that.",
    )
    max_scale_events_per_hour: int | None = Field(
        12,
        ge=1,
        description="At most this many replica-count changes in any hour; empty means no bound. "
        "A scale-down never spends the last one (it stays for a scale-up); the reason names the "
        "bound when it holds. A scale-up is never held: over the budget it goes ahead and its "
        "reason says so.",
    )
    max_scale_events_per_day: int | None = Field(
        48,
        ge=1,
        description="At most this many replica-count changes in any 24 hours; empty means no "
        "bound. Same rules as max_scale_events_per_hour.",
    )
    thresholds: Thresholds = Field(
        Thresholds(qps=Threshold(up=100, down=20), gpu_utilization=Threshold(up=0.7, down=0.3)),
        description="Base thresholds: any signal above `up` scales up, all below `down` scale "
        "down. With predictive.replica_capacity_qps set, the capacity decides how far down: p99's "
        "`down` no longer holds a scale-down (p99 above `up` still scales up).",
    )
    windows: list[TimeWindow] = Field(
        [], description="Time windows; the first active one overrides thresholds."
    )
    mode: Literal["balanced", "cost-optimize"] = Field(
        "balanced",
        description="`cost-optimize` holds the fewest instances that keep p99 under "
        "max_latency_ms.",
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
        description="PromQL overrides by signal name (qps, p99_ms, gpu_utilization, forecast_qps, "
        "forecast_yhat_qps, forecast_fit_time).",
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

    @field_validator("model_name")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "model_name is empty: name the model whose metrics the policy reads (the "
                "application fills it from the model entry)"
            )
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
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.max_replicas})"
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
