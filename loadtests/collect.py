"""Fetch a load test's time series and run totals from Prometheus (the only network I/O of the
report), through the project's Prometheus client and PromQL builders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from serve_app.monitoring.prometheus_api import PrometheusClient, to_float
from serve_app.monitoring.promql import (
    REQUESTS,
    latency_quantile,
    matchers,
    request_rate,
)

SERIES_COLUMNS = ["timestamp", "elapsed_s", "series", "label", "value"]


@dataclass(frozen=True)
class SeriesSpec:
    """One PromQL expression over the run; `label` names the label that splits it into several
    lines."""

    name: str
    query: str
    label: str = ""


# A replica series not scraped for this long belongs to a replica (or a whole Serve instance) that
# is gone. Prometheus keeps returning such a series for its 5 min look-back when no stale marker was
# written, e.g. after Prometheus itself restarted between two runs; three 15 s scrapes tell the two
# apart.
FRESH_S = 45


def fresh(selector: str) -> str:
    """`selector` restricted to series with a sample in the last FRESH_S seconds."""
    return f"({selector} and (time() - timestamp({selector}) < {FRESH_S}))"


def series_specs(model: str, window: str, deployments: str = ".*") -> list[SeriesSpec]:
    """The series the report plots: load, latency, errors, shed, replicas and forecast."""
    # Serve's and the autoscaler's replica series, selected by deployment regex.
    of_deployments = matchers(deployment="~" + deployments)
    return [
        SeriesSpec("request_rate", request_rate(window, model_name=model)),
        SeriesSpec("success_rate", request_rate(window, model_name=model, status="success")),
        SeriesSpec(
            "error_rate",
            request_rate(window, model_name=model, status="~client_error|server_error"),
        ),
        # The ingress counts every 503 it sheds as `rejected`; Serve's own proxy counters do not
        # exist when HAProxy fronts the application (the default of `recserve up`).
        SeriesSpec("shed_rate", request_rate(window, model_name=model, status="rejected")),
        SeriesSpec("latency_p50_s", latency_quantile(0.5, window, model_name=model)),
        SeriesSpec("latency_p99_s", latency_quantile(0.99, window, model_name=model)),
        SeriesSpec(
            "target_replicas",
            f"max by (deployment) {fresh('ray_autoscaler_target_replicas' + of_deployments)}",
            "deployment",
        ),
        SeriesSpec(
            "serve_target_replicas",
            "max by (deployment) "
            + fresh("ray_serve_autoscaling_target_replicas" + of_deployments),
            "deployment",
        ),
        # Per replica 1 (healthy) or 0 (stopping) by default; the sum is the running count either
        # way.
        SeriesSpec(
            "running_replicas",
            "sum by (deployment) " + fresh("ray_serve_deployment_replica_healthy" + of_deployments),
            "deployment",
        ),
        SeriesSpec(
            "forecast_qps",
            f"max by (bound) (ray_forecast_qps{matchers(model_name=model)})",
            "bound",
        ),
    ]


def total_queries(model: str, run_seconds: float) -> dict[str, str]:
    """Instant queries, evaluated at the end of the run, for the summary's whole-run numbers."""
    run = f"{max(1, math.ceil(run_seconds))}s"
    return {
        "requests_by_status": (
            f"sum by (status) (increase({REQUESTS}{matchers(model_name=model)}[{run}]))"
        ),
        # No `rejected` series means the ingress never shed: 0, not "no data".
        "shed_http_503": (
            f"sum(increase({REQUESTS}{matchers(model_name=model, status='rejected')}[{run}]))"
            " or vector(0)"
        ),
        # A quantile of the rates over the whole run is the quantile of its increases: the range
        # divides every bucket alike.
        "latency_p50_s": latency_quantile(0.5, run, model_name=model),
        "latency_p99_s": latency_quantile(0.99, run, model_name=model),
    }


def matrix_to_rows(spec: SeriesSpec, result: list[dict], run_start: float) -> list[dict]:
    """Long-format rows from one query_range result."""
    rows = []
    for item in result:
        label = item.get("metric", {}).get(spec.label, "") if spec.label else ""
        for timestamp, value in item.get("values", []):
            rows.append(
                {
                    "timestamp": float(timestamp),
                    "elapsed_s": float(timestamp) - run_start,
                    "series": spec.name,
                    "label": label,
                    "value": to_float(value),
                }
            )
    return rows


def collect_series(
    client: PrometheusClient,
    specs: list[SeriesSpec],
    start: float,
    end: float,
    step_s: float,
    run_start: float,
) -> pd.DataFrame:
    """All specs over [start, end] in long format (timestamp, elapsed_s, series, label, value)."""
    rows: list[dict] = []
    for spec in specs:
        rows.extend(
            matrix_to_rows(spec, client.query_range(spec.query, start, end, step_s), run_start)
        )
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def collect_totals(
    client: PrometheusClient, queries: dict[str, str], at: float
) -> dict[str, object]:
    """Whole-run numbers: scalars as floats, `requests_by_status` as {status: count}."""
    totals: dict[str, object] = {}
    for name, promql in queries.items():
        if name == "requests_by_status":
            totals[name] = {
                item["metric"].get("status", ""): to_float(item["value"][1])
                for item in client.query(promql, at)
            }
        else:
            value = client.value(promql, at)
            totals[name] = math.nan if value is None else value
    return totals
