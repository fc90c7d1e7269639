"""Fetch a load test's time series and run totals from Prometheus' HTTP API (the only network I/O of
the report)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx
import pandas as pd

SERIES_COLUMNS = ["timestamp", "elapsed_s", "series", "label", "value"]


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer, or answered with an error."""


@dataclass(frozen=True)
class SeriesSpec:
    """One PromQL expression over the run; `label` names the label that splits it into several
    lines."""

    name: str
    query: str
    label: str = ""


def quote_label(value: str) -> str:
    """A PromQL string literal for a label value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
    m = f"model_name={quote_label(model)}"
    d = f"deployment=~{quote_label(deployments)}"
    latency = f"sum by (le) (rate(ray_model_latency_seconds_bucket{{{m}}}[{window}]))"
    return [
        SeriesSpec("request_rate", f"sum(rate(ray_model_request_total{{{m}}}[{window}]))"),
        SeriesSpec(
            "success_rate", f'sum(rate(ray_model_request_total{{{m},status="success"}}[{window}]))'
        ),
        SeriesSpec(
            "error_rate",
            f'sum(rate(ray_model_request_total{{{m},status=~"client_error|server_error"}}[{window}]))',
        ),
        # The ingress counts every 503 it sheds as `rejected`; Serve's own proxy counters do not
        # exist when HAProxy fronts the application (the default of `recserve up`).
        SeriesSpec(
            "shed_rate", f'sum(rate(ray_model_request_total{{{m},status="rejected"}}[{window}]))'
        ),
        SeriesSpec("latency_p50_s", f"histogram_quantile(0.5, {latency})"),
        SeriesSpec("latency_p99_s", f"histogram_quantile(0.99, {latency})"),
        SeriesSpec(
            "target_replicas",
            f"max by (deployment) {fresh(f'ray_autoscaler_target_replicas{{{d}}}')}",
            "deployment",
        ),
        SeriesSpec(
            "serve_target_replicas",
            f"max by (deployment) {fresh(f'ray_serve_autoscaling_target_replicas{{{d}}}')}",
            "deployment",
        ),
        # Per replica 1 (healthy) or 0 (stopping) by default; the sum is the running count either
        # way.
        SeriesSpec(
            "running_replicas",
            f"sum by (deployment) {fresh(f'ray_serve_deployment_replica_healthy{{{d}}}')}",
            "deployment",
        ),
        SeriesSpec("forecast_qps", f"max by (bound) (ray_forecast_qps{{{m}}})", "bound"),
    ]


def total_queries(model: str, run_seconds: float) -> dict[str, str]:
    """Instant queries, evaluated at the end of the run, for the summary's whole-run numbers."""
    m = f"model_name={quote_label(model)}"
    r = f"{max(1, math.ceil(run_seconds))}s"
    latency = f"sum by (le) (increase(ray_model_latency_seconds_bucket{{{m}}}[{r}]))"
    return {
        "requests_by_status": f"sum by (status) (increase(ray_model_request_total{{{m}}}[{r}]))",
        # No `rejected` series means the ingress never shed: 0, not "no data".
        "shed_http_503": f'sum(increase(ray_model_request_total{{{m},status="rejected"}}[{r}])) or vector(0)',
        "latency_p50_s": f"histogram_quantile(0.5, {latency})",
        "latency_p99_s": f"histogram_quantile(0.99, {latency})",
    }


@dataclass
class PrometheusClient:
    """Minimal client for /api/v1/query and /api/v1/query_range."""

    base_url: str
    timeout_s: float = 10.0
    # Only tests replace the transport (httpx.MockTransport); by default httpx talks to the network.
    transport: httpx.BaseTransport | None = None
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    def _get(self, path: str, params: dict) -> list[dict]:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.base_url.rstrip("/"), timeout=self.timeout_s, transport=self.transport
            )
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(f"{self.base_url} did not answer: {exc}") from exc
        try:
            payload = response.json()
        except ValueError as exc:
            raise PrometheusUnavailable(
                f"{self.base_url}{path} answered HTTP {response.status_code} without JSON"
            ) from exc
        if response.status_code != 200 or payload.get("status") != "success":
            raise PrometheusUnavailable(
                f"{self.base_url}{path} answered HTTP {response.status_code}: {payload.get('error', payload)}"
            )
        return payload.get("data", {}).get("result", [])

    def ready(self) -> bool:
        """True when Prometheus answers a trivial query."""
        try:
            self._get("/api/v1/query", {"query": "1"})
        except PrometheusUnavailable:
            return False
        return True

    def query(self, promql: str, at: float) -> list[dict]:
        """Instant vector at unix time `at`."""
        return self._get("/api/v1/query", {"query": promql, "time": f"{at:.3f}"})

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict]:
        """Range matrix between unix times `start` and `end`."""
        return self._get(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"},
        )

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None


def to_float(text) -> float:
    """Prometheus sample value ("NaN", "+Inf" included) as a float."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


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
        result = client.query(promql, at)
        if name == "requests_by_status":
            totals[name] = {
                item["metric"].get("status", ""): to_float(item["value"][1]) for item in result
            }
        else:
            totals[name] = to_float(result[0]["value"][1]) if result else math.nan
    return totals
