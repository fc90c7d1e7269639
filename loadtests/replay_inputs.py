"""What a replay of a recorded load test takes: the requests locust sent per second, the run's
start, the real replicas Prometheus recorded, the deployment's settings from the serve config and
the simulated cluster's timing.

Pure functions of frames and dicts; `recserve loadtest-sim` (loadtests/replay_sim.py) reads the
files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loadtests.checks import INFER_NAME, PREDICT_NAME, SHED_NAME
from serve_app.autoscaling.deployment_policy import (
    app_forecaster,
    policy_kwargs_for,
    uses_forecast_policy,
)
from serve_app.config import AppConfig, recognizer_deployment_name

# Every request that reached (or was shed by) the model.
OFFERED_NAMES = (PREDICT_NAME, INFER_NAME, SHED_NAME)


def offered_load(history: pd.DataFrame, run_start: float, duration_s: float) -> np.ndarray:
    """Recognition requests sent in each second of the run, from locust's full history (cumulative
    counts).

    Locust writes one row per request name and second with `Total Request Count` so far; the
    per-second difference of their sum is what arrived in that second. Seconds locust skipped get
    the average of the gap.
    """
    n = int(math.ceil(duration_s))
    rows = history[history["Name"].isin(OFFERED_NAMES)].copy()
    if rows.empty:
        raise ValueError(
            "locust's history has no recognition requests "
            "(was the run made with --csv-full-history?)"
        )
    rows["Timestamp"] = pd.to_numeric(rows["Timestamp"], errors="coerce")
    rows["Total Request Count"] = pd.to_numeric(rows["Total Request Count"], errors="coerce")
    rows = rows.dropna(subset=["Timestamp", "Total Request Count"])
    # Each name's count carried forward, so a name missing at some second does not look like a drop.
    wide = rows.pivot_table(
        index="Timestamp", columns="Name", values="Total Request Count", aggfunc="max"
    )
    wide = wide.sort_index().ffill().fillna(0.0)
    total = wide.sum(axis=1)
    seconds = np.arange(n + 1, dtype=float)
    cumulative = np.interp(
        run_start + seconds, total.index.to_numpy(float), total.to_numpy(float), left=0.0
    )
    return np.clip(np.diff(cumulative), 0.0, None)


def run_start_from(series: pd.DataFrame, history: pd.DataFrame) -> float:
    """The run's start (unix s): series.csv carries it as timestamp - elapsed_s; else locust's first
    second."""
    if len(series):
        return float((series["timestamp"] - series["elapsed_s"]).median())
    stamps = pd.to_numeric(history["Timestamp"], errors="coerce").dropna()
    if stamps.empty:
        raise ValueError("neither series.csv nor locust's history say when the run started")
    return float(stamps.min())


@dataclass(frozen=True)
class DeploymentSettings:
    """What the simulator needs from one deployment of the serve config."""

    deployment: str
    policy_kwargs: dict[str, Any]
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    max_batch_size: int
    batch_wait_ms: float


def deployment_settings(
    config: dict[str, Any], deployment: str | None = None
) -> DeploymentSettings:
    """The autoscaled model deployment named `deployment` (default: the first with a custom policy).

    The config goes through the service's own validation, so defaults the YAML leaves out are the
    service's.
    """
    candidates = []
    for app in config.get("applications") or []:
        app_config = AppConfig.model_validate(app.get("args") or {})
        for model in app_config.models:
            scaling = model.autoscaling_config
            if not uses_forecast_policy(scaling):
                continue
            name = recognizer_deployment_name(model.name)
            candidates.append(name)
            if deployment in (None, name, model.name):
                return DeploymentSettings(
                    deployment=name,
                    policy_kwargs=policy_kwargs_for(model, app_forecaster(app_config)),
                    min_replicas=scaling.min_replicas,
                    max_replicas=scaling.max_replicas,
                    initial_replicas=scaling.start_replicas(),
                    max_batch_size=model.max_batch_size,
                    batch_wait_ms=1000.0 * model.batch_wait_timeout_s,
                )
    known = ", ".join(candidates) or "none"
    raise ValueError(
        f"no autoscaled deployment {deployment or ''} with policy_kwargs in the config "
        f"(found: {known})"
    )


def real_replicas(series: pd.DataFrame, deployment: str, duration_s: float) -> pd.DataFrame:
    """Real running and target replicas of `deployment` per second of the run (each sample held
    until the next)."""
    seconds = np.arange(int(math.ceil(duration_s)))
    out = pd.DataFrame({"elapsed_s": seconds})
    for name, column in (("running_replicas", "real_running"), ("target_replicas", "real_target")):
        frame = series[(series["series"] == name) & (series["label"] == deployment)].sort_values(
            "elapsed_s"
        )
        if frame.empty:
            raise ValueError(f"series.csv has no {name} for {deployment}")
        index = np.searchsorted(frame["elapsed_s"].to_numpy(float), seconds, side="right") - 1
        values = frame["value"].to_numpy(float)
        out[column] = np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)
    return out


@dataclass(frozen=True)
class ReplayOptions:
    """How the simulated cluster is timed and sized."""

    startup_s: int = 15
    # Sustainable per-replica req/s at the SLO; None: the profile's own.
    replica_rps: float | None = None
    profile: str = "cpu"
    slo_ms: float = 500.0
    scrape_interval_s: int = 15
    seed: int = 0
