"""The `forecaster:` section of the application args: what the Forecaster forecasts, from which
history, how often, and at which lead time it publishes."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from serve_app.autoscaling.forecaster import ForecasterSettings
from serve_app.config_base import Section
from serve_app.validation import validation_problems


class ForecasterConfig(Section):
    """The `forecaster:` section of the application args."""

    models: list[str] = Field(
        ["efficientnet_lite0"], min_length=1, description="model_name labels to forecast."
    )
    prometheus_address: str | None = Field(
        None,
        description="Prometheus base URL; empty means the RAY_PROMETHEUS_HOST environment "
        "variable.",
    )
    refit_interval_s: float = Field(
        3600.0, ge=60, description="Seconds between refits of each model."
    )
    retry_interval_s: float = Field(
        300.0, ge=10, description="Seconds before retrying after an error or too little history."
    )
    history_days: float = Field(
        14.0, gt=0, description="Days of request-rate history each fit reads."
    )
    history_step_s: float = Field(
        300.0, ge=15, description="Resolution of that history in seconds."
    )
    horizon_h: float = Field(
        24.0, gt=0, description="Hours forecast ahead (the seeds: the next 24 hours)."
    )
    forecast_step_s: float = Field(
        300.0, ge=15, description="Spacing of forecast points in seconds."
    )
    lead_time_s: float = Field(
        180.0,
        ge=0,
        description="forecast_qps is the forecast at now + this. The application gives the same "
        "lead time to the policy of every model forecast here (`predictive.lead_time_s`).",
    )
    plan_changes_per_day: int | None = Field(
        16,
        ge=1,
        description="Publish the upper bound planned into steps: its cheapest cover with at most "
        "this many changes a day, made once per fit (serve_app/autoscaling/cover.py), held from "
        "now to now + lead time. The policy then lands on the plan itself "
        "(`predictive.landing: floor`, copied by the application) instead of target_fill above "
        "it. Null publishes the bound as forecast, and the policy keeps its target_fill band.",
    )
    publish_interval_s: float = Field(
        15.0, ge=1, description="Seconds between re-publishing the moving forecast gauges."
    )
    model_dir: str = Field(
        "forecaster_models",
        description="Directory for the fitted models' JSON (one file per model).",
    )
    timezone: str = Field(
        "UTC", description="Local time zone of the traffic's daily pattern (IANA name or +08:00)."
    )
    interval_width: float = Field(
        0.8, gt=0, lt=1, description="Width of the forecast interval; `upper` is its top."
    )
    holidays_country: str | None = Field(
        None, description="Add this country's public holidays (e.g. CN)."
    )
    min_history_h: float = Field(
        48.0, ge=24, description="Less history than this gives `insufficient_history`."
    )
    num_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs the Forecaster replica asks Ray for. It refits once per "
        "refit_interval_s in a worker thread, so by default it reserves none and leaves the "
        "node's CPUs to the recognizer replicas.",
    )
    planned_events_file: str | None = Field(
        None,
        description="YAML/JSON list of planned events `{name, start, end, qps[, models]}` "
        "(ISO-8601 times with an offset), re-read at every publish; the forecast is raised to an "
        "event's qps while it covers the time.",
    )

    accuracy_window_h: float = Field(
        72.0,
        gt=0,
        description="Hours of published forecasts kept and scored against the actual rate (MAPE, "
        "interval coverage, under-forecast minutes).",
    )
    accuracy_step_s: float = Field(
        60.0,
        ge=15,
        description="One published forecast kept per this many seconds; also the resolution of "
        "the actual rate it is scored against.",
    )
    accuracy_interval_s: float = Field(
        300.0, ge=10, description="Seconds between re-scoring the kept forecasts."
    )

    @model_validator(mode="after")
    def _horizon_covers_lead(self) -> "ForecasterConfig":
        if self.horizon_h * 3600 <= self.lead_time_s:
            raise ValueError(
                f"horizon_h ({self.horizon_h:g} h) must reach beyond lead_time_s "
                f"({self.lead_time_s:g} s)"
            )
        ForecasterSettings(timezone=self.timezone, interval_width=self.interval_width)
        if self.accuracy_window_h * 3600 < self.accuracy_step_s:
            raise ValueError(
                f"accuracy_window_h ({self.accuracy_window_h:g} h) must hold at least one "
                f"accuracy_step_s ({self.accuracy_step_s:g} s)"
            )
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "ForecasterConfig":
        """Validated config; ValueError listing every bad key with its value."""
        try:
            return cls.model_validate(raw or {})
        except ValidationError as exc:
            raise ValueError(
                f"invalid forecaster config: {validation_problems(exc, 'forecaster')}"
            ) from None

    def settings(self) -> ForecasterSettings:
        """Prophet settings for every model."""
        return ForecasterSettings(
            timezone=self.timezone,
            interval_width=self.interval_width,
            holidays_country=self.holidays_country,
            min_history_s=self.min_history_h * 3600,
        )
