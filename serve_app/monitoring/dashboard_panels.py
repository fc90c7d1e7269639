"""The dashboard panels, declared once: the /dashboard page draws them and the Grafana JSON is built
from them.

Queries read the recording rules of configs/prometheus/recording_rules.yml where one exists, so
the page, Grafana, alerts and the autoscaler see the same numbers; our raw series are named by
promql.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from serve_app.monitoring import metrics as m
from serve_app.monitoring.promql import exported
from serve_app.paths import CONFIGS_DIR

GRAFANA_DASHBOARD_FILE = CONFIGS_DIR / "grafana" / "dashboards" / "recognition-serve.json"
GRAFANA_DATASOURCE_UID = "recserve-prometheus"
# The forecast published at t is for t + lead time: drawn this much later it meets the actual rate
# it forecast. The default forecaster.lead_time_s (180 s); tests/unit keep the two equal.
FORECAST_LEAD = "3m"


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel; `legend` uses Grafana's {{label}} syntax."""

    expr: str
    legend: str
    axis: str = "left"  # "right": drawn against the panel's second unit


@dataclass(frozen=True)
class Panel:
    """One chart."""

    id: str
    title: str
    unit: str  # percentunit | s | reqps | bytes | celsius | short
    queries: tuple[Query, ...]
    description: str = ""
    right_unit: str | None = None


@dataclass(frozen=True)
class Row:
    """A titled group of panels (the four dashboards our users asked for)."""

    id: str
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _per_window(spec: m.MetricSpec) -> Query:
    """One quality gauge per model version and window."""
    return Query(
        f"max by (model_name, model_version, window) ({exported(spec)})",
        "{{model_name}} v{{model_version}} {{window}}",
    )


def _quality(panel_id: str, spec: m.MetricSpec, title: str) -> Panel:
    return Panel(
        id=panel_id,
        title=title,
        unit="percentunit",
        queries=(_per_window(spec),),
        description=f"{title} of labelled predictions (feedback joined to predictions) per window.",
    )


ROWS: tuple[Row, ...] = (
    Row(
        "quality",
        "Classification quality",
        (
            Panel(
                id="accuracy",
                title="Accuracy",
                unit="percentunit",
                queries=(
                    _per_window(m.MODEL_ACCURACY),
                    Query("model_name:model_accuracy:baseline", "{{model_name}} baseline"),
                ),
                description="Accuracy per window and its alerting baseline; the alert fires "
                "5 points below it.",
            ),
            _quality("precision", m.MODEL_PRECISION, "Precision (macro)"),
            _quality("recall", m.MODEL_RECALL, "Recall (macro)"),
            _quality("f1", m.MODEL_F1, "F1 (macro)"),
            Panel(
                id="drift",
                title="Prediction drift (PSI)",
                unit="short",
                queries=(
                    Query(
                        f"max by (model_name, model_version) ({exported(m.PREDICTION_DRIFT_PSI)})",
                        "{{model_name}} v{{model_version}}",
                    ),
                ),
                description="Population stability index of predicted classes against the "
                "reference; above 0.2 is a shift.",
            ),
            Panel(
                id="shadow_agreement",
                title="Shadow agreement (30 min)",
                unit="percentunit",
                queries=tuple(
                    Query(
                        f"sum by (model_name, shadow_model) (increase({exported(num)}[30m]))\n"
                        f"/ sum by (model_name, shadow_model) "
                        f"(increase({exported(m.SHADOW_IMAGES_TOTAL)}[30m]))",
                        "{{model_name}} vs {{shadow_model}} " + what,
                    )
                    for num, what in (
                        (m.SHADOW_TOP1_AGREEMENTS_TOTAL, "top-1"),
                        (m.SHADOW_TOP5_OVERLAP_TOTAL, "top-5 overlap"),
                    )
                ),
                description="How often a shadow candidate gives its model's top-1 class, and the "
                "share of the top-5 it shares, over images compared in the last 30 minutes. "
                "The ShadowAgreementLow alert fires below 95% top-1.",
            ),
        ),
    ),
    Row(
        "load",
        "System load",
        (
            Panel(
                id="gpu_utilization",
                title="GPU utilization",
                unit="percentunit",
                queries=(
                    Query("NodeAddress_gpu:gpu_utilization:avg1m", "{{NodeAddress}} GPU {{gpu}}"),
                ),
                description="Per GPU, 1-minute mean. Alert above 85% for 5 minutes. Empty on "
                "machines without a GPU.",
            ),
            Panel(
                id="gpu_memory",
                title="GPU memory used",
                unit="percentunit",
                queries=(
                    Query(
                        "NodeAddress_gpu:gpu_memory_used_ratio:avg1m", "{{NodeAddress}} GPU {{gpu}}"
                    ),
                ),
                description="Used / total per GPU. Warning above 80% (degrade traffic), critical "
                "above 90%.",
            ),
            Panel(
                id="gpu_temperature",
                title="GPU temperature",
                unit="celsius",
                queries=(
                    Query(
                        "NodeAddress_gpu:gpu_temperature_celsius:max1m",
                        "{{NodeAddress}} GPU {{gpu}}",
                    ),
                ),
                description="Alert above 85 °C.",
            ),
            Panel(
                id="process_memory",
                title="Replica memory (RSS)",
                unit="bytes",
                queries=(
                    Query(
                        f"sum by (deployment) ({exported(m.PROCESS_RESIDENT_MEMORY_BYTES)})",
                        "{{deployment}}",
                    ),
                ),
                description="Resident memory of all replicas of a deployment: a steady climb is "
                "a leak.",
            ),
        ),
    ),
    Row(
        "service",
        "Service quality",
        (
            Panel(
                id="latency",
                title="Latency p50 / p95 / p99",
                unit="s",
                queries=(
                    Query("model_name:model_latency_seconds:p50_1m", "{{model_name}} p50"),
                    Query("model_name:model_latency_seconds:p95_1m", "{{model_name}} p95"),
                    Query("model_name:model_latency_seconds:p99_1m", "{{model_name}} p99"),
                ),
                description="End-to-end latency inside the service over 1 minute. Alert: p99 "
                "above 500 ms for 5 minutes.",
            ),
            Panel(
                id="qps_latency",
                title="QPS against p99 latency",
                unit="reqps",
                right_unit="s",
                queries=(
                    Query("model_name:model_requests:rate1m", "{{model_name}} QPS"),
                    Query(
                        "model_name:model_latency_seconds:p99_1m",
                        "{{model_name}} p99",
                        axis="right",
                    ),
                ),
                description="Requests per second (left) and p99 latency (right): latency rising "
                "with QPS means too few replicas.",
            ),
            Panel(
                id="node_latency",
                title="p99 latency per node",
                unit="s",
                queries=(
                    Query(
                        "NodeAddress_model_name:model_latency_seconds:p99_1m",
                        "{{NodeAddress}} {{model_name}} end to end",
                    ),
                    Query(
                        "NodeAddress_model_name:model_inference_seconds:p99_1m",
                        "{{NodeAddress}} {{model_name}} inference",
                    ),
                ),
                description="Latency distribution per hardware node: one slow node points at its "
                "GPU or storage.",
            ),
            Panel(
                id="requests_by_status",
                title="Requests by status",
                unit="reqps",
                queries=(
                    Query("model_name_status:model_requests:rate1m", "{{model_name}} {{status}}"),
                ),
            ),
            Panel(
                id="error_ratio",
                title="Error ratio",
                unit="percentunit",
                queries=(Query("model_name:model_errors:ratio_rate5m", "{{model_name}}"),),
                description="Server errors and rejected (shed) requests over all requests, "
                "5 minutes.",
            ),
            Panel(
                id="batch_size",
                title="Mean batch size",
                unit="short",
                queries=(Query("model_name:model_batch_size:mean1m", "{{model_name}}"),),
                description="Images per forward pass: dynamic batching at work.",
            ),
        ),
    ),
    Row(
        "cost",
        "Resource cost",
        (
            Panel(
                id="replicas",
                title="Replicas",
                unit="short",
                queries=(
                    Query(
                        "application_deployment:serve_replicas_healthy:sum",
                        "{{deployment}} healthy",
                    ),
                    Query(
                        "application_deployment:serve_replicas_target:max",
                        "{{deployment}} Serve target",
                    ),
                    Query(
                        "max by (deployment) (ray_autoscaler_target_replicas)",
                        "{{deployment}} policy target",
                    ),
                ),
                description="Healthy replicas against what the autoscaler asks for.",
            ),
            Panel(
                id="replica_hours",
                title="Replica-hours",
                unit="short",
                queries=(
                    Query(
                        "application_deployment:serve_replica_hours:1h", "{{deployment}} last hour"
                    ),
                    Query(
                        "avg_over_time(application_deployment:serve_replicas_healthy:sum[1d]) * 24",
                        "{{deployment}} last 24 h",
                    ),
                ),
                description="Replica-hours spent: the mean replica count over the window times "
                "its length in hours.",
            ),
            Panel(
                id="forecast",
                title="Forecast vs actual",
                unit="reqps",
                queries=(
                    Query("model_name:model_requests:rate1m", "{{model_name}} actual"),
                    Query(
                        'max by (model_name) (ray_forecast_qps{bound="yhat"} '
                        f"offset {FORECAST_LEAD})",
                        "{{model_name}} forecast",
                    ),
                    Query(
                        'max by (model_name) (ray_forecast_qps{bound="upper"} '
                        f"offset {FORECAST_LEAD})",
                        "{{model_name}} forecast upper",
                    ),
                ),
                description="Each forecast drawn at the time it was for: the forecast published "
                f"one lead time earlier (offset {FORECAST_LEAD}, the default "
                "forecaster.lead_time_s) against the actual rate. Its accuracy over the last days: "
                "ray_forecast_mape_percent, ray_forecast_interval_coverage_ratio, "
                "ray_forecast_under_forecast_minutes.",
            ),
            Panel(
                id="autoscaler_decisions",
                title="Autoscaler decisions (per 5 min)",
                unit="short",
                queries=(
                    Query(
                        "sum by (deployment, reason) (increase(ray_autoscaler_decision_total[5m]))",
                        "{{deployment}} {{reason}}",
                    ),
                ),
            ),
        ),
    ),
)


def all_panels() -> list[Panel]:
    """Every panel, in page order."""
    return [panel for row in ROWS for panel in row.panels]


def all_exprs() -> list[str]:
    """Every PromQL expression the dashboards run."""
    return [query.expr for panel in all_panels() for query in panel.queries]


def panels_document() -> dict:
    """The panel list as JSON for the /dashboard page."""
    return {"rows": [asdict(row) for row in ROWS]}


# Grafana lays panels out on a 24-column grid.
_GRID_WIDTH, _PANEL_WIDTH, _PANEL_HEIGHT = 24, 8, 8


def _grafana_panel(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    overrides = []
    if panel.right_unit:
        for index, query in enumerate(panel.queries):
            if query.axis == "right":
                overrides.append(
                    {
                        "matcher": {"id": "byFrameRefID", "options": chr(ord("A") + index)},
                        "properties": [
                            {"id": "unit", "value": panel.right_unit},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                )
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": datasource,
        "gridPos": {"h": _PANEL_HEIGHT, "w": _PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": {"lineWidth": 1, "fillOpacity": 5}},
            "overrides": overrides,
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": datasource,
                "expr": query.expr,
                "legendFormat": query.legend,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def grafana_dashboard() -> dict:
    """The Grafana dashboard JSON (schema 39, Grafana 10+), one row per group of panels."""
    panels: list[dict] = []
    y, next_id = 0, 1
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": _GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for index, panel in enumerate(row.panels):
            column = index % (_GRID_WIDTH // _PANEL_WIDTH)
            if index and column == 0:
                y += _PANEL_HEIGHT
            panels.append(_grafana_panel(panel, next_id, column * _PANEL_WIDTH, y))
            next_id += 1
        y += _PANEL_HEIGHT
    return {
        "uid": "recserve-overview",
        "title": "recognition-serve",
        "description": "Classification quality, system load, service quality and resource cost "
        "of recognition-serve.",
        "tags": ["recognition-serve", "ray-serve"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {
                        "text": "recognition-serve Prometheus",
                        "value": GRAFANA_DATASOURCE_UID,
                    },
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render_grafana_dashboard() -> str:
    """configs/grafana/dashboards/recognition-serve.json as text."""
    return json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"
