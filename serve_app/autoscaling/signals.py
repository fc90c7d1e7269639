"""What `decide()` reads in one control period (`Signals`) and what it answers (`Decision`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Signals:
    """What the policy sees in one control period; None means the signal is unavailable."""

    running_replicas: int
    target_replicas: int
    min_replicas: int
    max_replicas: int
    # running + queued over the whole deployment (Ray's own figure)
    ongoing_requests: float | None = None
    qps: float | None = None  # deployment requests per second
    p99_ms: float | None = None
    gpu_utilization: float | None = None
    forecast_qps: float | None = None  # forecast upper bound at now + lead time
    forecast_yhat_qps: float | None = None  # the point forecast (yhat) at now + lead time
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
