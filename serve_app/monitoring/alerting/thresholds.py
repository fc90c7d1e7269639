"""Alert thresholds and durations: the schema of configs/alerts.yaml.

One section per alert, named like the alert it controls, so whoever reads an alert in
Alertmanager finds its knob by name. Defaults are the thresholds our users asked for
(GPU utilization > 85% for 5 min, GPU memory > 90%, GPU temperature > 85 °C, p99 > 500 ms,
accuracy more than 5 points below its baseline for 10 min, more than 2 idle instances).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from serve_app.paths import CONFIGS_DIR

DURATION_PATTERN = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
LABEL_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")
DEFAULT_ALERTS_FILE = CONFIGS_DIR / "alerts.yaml"


def check_duration(value: str) -> str:
    """`value` if it is a Prometheus duration (5m, 1h30m), else ValueError."""
    if not DURATION_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a Prometheus duration; write e.g. '30s', '5m', '1h30m'")
    return value


def _label_value(value: str) -> str:
    # Values are spliced into PromQL label matchers, so quotes or braces must never get in.
    if not LABEL_VALUE_PATTERN.match(value):
        raise ValueError(f"{value!r} may only hold letters, digits, '_', '.', ':' and '-'")
    return value


Duration = Annotated[str, AfterValidator(check_duration)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
Severity = Literal["critical", "warning", "info"]


class Section(BaseModel):
    """Base: unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AlertSection(Section):
    """Fields every alert has."""

    enabled: bool = Field(True, description="Render this alert at all.")
    for_: Duration = Field(
        alias="for", description="How long the condition must hold before the alert fires."
    )
    severity: Severity = Field(
        description="Routes the alert in Alertmanager: critical, warning or info."
    )


class GPUUtilizationHighSettings(AlertSection):
    """Average utilization of one GPU (ratio 0..1)."""

    threshold: float = Field(0.85, gt=0, description="Fires while utilization is above this ratio.")
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"


class GPUMemoryHighSettings(AlertSection):
    """GPU memory in use, the level where traffic should be degraded."""

    threshold: float = Field(
        0.80, gt=0, description="Fires while used/total memory of one GPU is above this."
    )
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"


class GPUMemoryCriticalSettings(GPUMemoryHighSettings):
    """GPU memory in use, the level where out-of-memory errors are near."""

    threshold: float = Field(
        0.90, gt=0, description="Fires while used/total memory of one GPU is above this."
    )
    for_: Duration = Field("1m", alias="for")
    severity: Severity = "critical"


class GPUTemperatureHighSettings(AlertSection):
    """GPU temperature."""

    threshold_celsius: float = Field(
        85, gt=0, description="Fires while a GPU is hotter than this many °C."
    )
    for_: Duration = Field("2m", alias="for")
    severity: Severity = "critical"


class LatencyP99HighSettings(AlertSection):
    """p99 end-to-end latency of one model over 5 minutes."""

    threshold_seconds: float = Field(
        0.5, gt=0, description="Fires while p99 latency is above this many seconds."
    )
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"


class LatencyP99CriticalSettings(LatencyP99HighSettings):
    """p99 latency at the level where batch sizes should already be shrinking."""

    threshold_seconds: float = Field(
        1.0, gt=0, description="Fires while p99 latency is above this many seconds."
    )
    severity: Severity = "critical"


class ErrorRatioHighSettings(AlertSection):
    """Share of one model's requests that failed on the service side, over 5 minutes."""

    threshold: float = Field(
        0.01, gt=0, lt=1, description="Fires while the error ratio is above this."
    )
    statuses: list[LabelValue] = Field(
        ["server_error", "rejected"],
        min_length=1,
        description="`status` values of model_request_total that count as errors "
        "(client errors are the caller's fault and are left out).",
    )
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"


class ErrorRatioCriticalSettings(ErrorRatioHighSettings):
    """Error ratio at the level where most users notice."""

    threshold: float = Field(
        0.05, gt=0, lt=1, description="Fires while the error ratio is above this."
    )
    severity: Severity = "critical"


class OverloadSheddingSettings(AlertSection):
    """A model's replica is in the shedding tier of its overload control (docs/RELIABILITY.md)."""

    for_: Duration = Field("1m", alias="for")
    severity: Severity = "critical"


class ModelAccuracyDroppedSettings(AlertSection):
    """Accuracy of a model below its baseline."""

    max_drop: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Fires while accuracy is more than this below its baseline (0.05 = 5 points).",
    )
    window: LabelValue = Field(
        "last_1000", description="`window` label of model_accuracy to watch."
    )
    baseline_range: Duration = Field(
        "1d",
        description="The historical baseline is the mean accuracy of the model over this range ...",
    )
    baseline_offset: Duration = Field(
        "1h",
        description="... ending this long ago, so a fresh drop does not drag its own baseline "
        "down.",
    )
    baselines: dict[LabelValue, Annotated[float, Field(gt=0, le=1)]] = Field(
        {},
        description="Fixed baselines per model_name (e.g. accuracy measured on a validation set); "
        "they replace the historical baseline for those models.",
    )
    for_: Duration = Field("10m", alias="for")
    severity: Severity = "critical"


class ShadowAgreementLowSettings(AlertSection):
    """A shadow candidate's top-1 agreement with its model, over a window (serving/shadow.py)."""

    threshold: float = Field(
        0.95, gt=0, le=1, description="Fires while top-1 agreement is below this ratio ..."
    )
    window: Duration = Field("30m", description="... over the images compared in this window ...")
    min_images: int = Field(
        100, ge=1, description="... once at least this many images were compared in it."
    )
    for_: Duration = Field("10m", alias="for")
    severity: Severity = "warning"


class OffPeak(Section):
    """Off-peak hours (the users' `peak-hours` 09:00-21:00 is the complement)."""

    start_hour: int = Field(21, ge=0, le=23, description="Off-peak starts at this local hour ...")
    end_hour: int = Field(9, ge=0, le=23, description="... and ends at this local hour.")
    utc_offset_hours: float = Field(
        0, ge=-12, le=14, description="Local time = UTC + this (8 for China)."
    )


class ReplicasIdleOffPeakSettings(AlertSection):
    """Replicas that serve (almost) nothing during off-peak hours: money spent for nothing."""

    max_idle: int = Field(
        2, ge=0, description="Fires while a deployment has more idle replicas than this."
    )
    idle_below_rps: float = Field(
        0.01,
        gt=0,
        description="A replica is idle while it serves fewer requests per second than this ...",
    )
    idle_window: Duration = Field("15m", description="... averaged over this window.")
    off_peak: OffPeak = Field(default_factory=OffPeak)
    for_: Duration = Field("30m", alias="for")
    severity: Severity = "warning"


class DeploymentUnhealthySettings(AlertSection):
    """A Serve deployment reports UNHEALTHY or DEPLOY_FAILED."""

    for_: Duration = Field("1m", alias="for")
    severity: Severity = "critical"


class DeploymentNoReadyReplicasSettings(AlertSection):
    """A Serve deployment exists but no replica of it is healthy."""

    for_: Duration = Field("3m", alias="for")
    severity: Severity = "critical"


class NoTrafficWhenExpectedSettings(AlertSection):
    """No requests at a time traffic is expected."""

    expected_min_rps: float = Field(
        0.1,
        gt=0,
        description="Traffic is expected when the forecast, or the rate at the same time one "
        "`lookback` ago, is above this many requests per second.",
    )
    lookback: Duration = Field("1d", description="How far back 'the same time' is.")
    for_: Duration = Field("15m", alias="for")
    severity: Severity = "warning"


class ForecasterStaleSettings(AlertSection):
    """The forecaster has not refitted for too long, so pre-scaling runs on an old forecast."""

    max_age_seconds: float = Field(
        7200, gt=0, description="Fires while the last successful fit is older than this."
    )
    for_: Duration = Field("5m", alias="for")
    severity: Severity = "warning"


class ForecasterFailingSettings(AlertSection):
    """The forecaster reports status `error`."""

    for_: Duration = Field("15m", alias="for")
    severity: Severity = "warning"


class PredictionStoreUnwritableSettings(AlertSection):
    """The quality store's writes fail: predictions are served but not kept, feedback gets 503."""

    for_: Duration = Field("2m", alias="for")
    severity: Severity = "critical"


class AlertThresholds(Section):
    """Everything in configs/alerts.yaml: one section per alert, a missing section keeps its
    defaults."""

    GPUUtilizationHigh: GPUUtilizationHighSettings = Field(
        default_factory=GPUUtilizationHighSettings
    )
    GPUMemoryHigh: GPUMemoryHighSettings = Field(default_factory=GPUMemoryHighSettings)
    GPUMemoryCritical: GPUMemoryCriticalSettings = Field(default_factory=GPUMemoryCriticalSettings)
    GPUTemperatureHigh: GPUTemperatureHighSettings = Field(
        default_factory=GPUTemperatureHighSettings
    )
    LatencyP99High: LatencyP99HighSettings = Field(default_factory=LatencyP99HighSettings)
    LatencyP99Critical: LatencyP99CriticalSettings = Field(
        default_factory=LatencyP99CriticalSettings
    )
    ErrorRatioHigh: ErrorRatioHighSettings = Field(default_factory=ErrorRatioHighSettings)
    ErrorRatioCritical: ErrorRatioCriticalSettings = Field(
        default_factory=ErrorRatioCriticalSettings
    )
    OverloadShedding: OverloadSheddingSettings = Field(default_factory=OverloadSheddingSettings)
    ModelAccuracyDropped: ModelAccuracyDroppedSettings = Field(
        default_factory=ModelAccuracyDroppedSettings
    )
    ShadowAgreementLow: ShadowAgreementLowSettings = Field(
        default_factory=ShadowAgreementLowSettings
    )
    ReplicasIdleOffPeak: ReplicasIdleOffPeakSettings = Field(
        default_factory=ReplicasIdleOffPeakSettings
    )
    DeploymentUnhealthy: DeploymentUnhealthySettings = Field(
        default_factory=DeploymentUnhealthySettings
    )
    DeploymentNoReadyReplicas: DeploymentNoReadyReplicasSettings = Field(
        default_factory=DeploymentNoReadyReplicasSettings
    )
    NoTrafficWhenExpected: NoTrafficWhenExpectedSettings = Field(
        default_factory=NoTrafficWhenExpectedSettings
    )
    ForecasterStale: ForecasterStaleSettings = Field(default_factory=ForecasterStaleSettings)
    ForecasterFailing: ForecasterFailingSettings = Field(default_factory=ForecasterFailingSettings)
    PredictionStoreUnwritable: PredictionStoreUnwritableSettings = Field(
        default_factory=PredictionStoreUnwritableSettings
    )


def load_thresholds(path: str | Path | None = None) -> AlertThresholds:
    """Read configs/alerts.yaml (or `path`) into validated thresholds."""
    path = Path(path) if path is not None else DEFAULT_ALERTS_FILE
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"alert thresholds file {path} not found; "
            "pass --alerts PATH or restore configs/alerts.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    doc = doc if doc is not None else {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must map alert names to settings, got a {type(doc).__name__}")
    try:
        return AlertThresholds.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None
