"""Dashboards: every query parses and names real metrics; Grafana JSON matches the panel list;
/dashboard routes."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from promql_names import REPO, metric_names, promtool_check_exprs, unknown_metrics

from serve_app.monitoring.dashboard import check_range, make_router, prometheus_url
from serve_app.monitoring.dashboard_panels import (
    GRAFANA_DASHBOARD_FILE,
    GRAFANA_DATASOURCE_UID,
    all_exprs,
    all_panels,
    grafana_dashboard,
)
from serve_app.monitoring.prometheus_api import MAX_POINTS_PER_QUERY

GRAFANA = json.loads(GRAFANA_DASHBOARD_FILE.read_text())
GRAFANA_EXPRS = [t["expr"] for p in GRAFANA["panels"] if p["type"] != "row" for t in p["targets"]]


# --- queries -------------------------------------------------------------------------------------


def test_every_query_parses_with_promtool(tmp_path):
    exprs = sorted(set(all_exprs()) | set(GRAFANA_EXPRS))
    result = promtool_check_exprs(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_query_fails_the_promtool_check(tmp_path):
    # The check above must be able to fail: an unbalanced parenthesis does.
    assert promtool_check_exprs(["sum(rate(ray_model_request_total[1m])"], tmp_path).returncode != 0


def test_every_query_names_only_metrics_that_exist():
    problems = {expr: unknown_metrics(expr) for expr in set(all_exprs()) | set(GRAFANA_EXPRS)}
    assert {k: v for k, v in problems.items() if v} == {}


@pytest.mark.parametrize(
    "expr, unknown",
    [
        (
            "sum(rate(ray_model_requests_total[1m]))",
            {"ray_model_requests_total"},
        ),  # typo of the contract name
        ("ray_serve_num_imaginary_requests_total", {"ray_serve_num_imaginary_requests_total"}),
        (
            "model_name:model_requests:rate2m",
            {"model_name:model_requests:rate2m"},
        ),  # no such recording rule
        ('sum by (model_name) (rate(ray_model_request_total{status="x"}[5m] offset 1d))', set()),
        ("ray_serve_deployment_replica_healthy", set()),
    ],
)
def test_unknown_metric_detection(expr, unknown):
    assert unknown_metrics(expr) == unknown


def test_metric_name_extraction_ignores_functions_labels_and_keywords():
    expr = (
        'histogram_quantile(0.99, sum by (le, NodeAddress) (rate(a_b{x="y:z"}[5m]))) '
        "> on (q) group_left () c:d:e"
    )
    assert metric_names(expr) == {"a_b", "c:d:e"}


# --- the panels users asked for ------------------------------------------------------------------


def test_seed_panels_are_all_there():
    panels = {p.id: p for p in all_panels()}
    for wanted in (
        "accuracy",
        "precision",
        "recall",
        "f1",  # classification quality
        "gpu_utilization",
        "gpu_memory",  # system load
        "latency",
        "qps_latency",
        "node_latency",  # service quality
        "replicas",
        "replica_hours",
        "forecast",  # resource cost
    ):
        assert wanted in panels, wanted
    legends = [q.legend for q in panels["latency"].queries]
    assert legends == ["{{model_name}} p50", "{{model_name}} p95", "{{model_name}} p99"]
    assert "NodeAddress" in panels["node_latency"].queries[0].legend
    assert {q.axis for q in panels["qps_latency"].queries} == {"left", "right"}


def test_panel_ids_are_unique():
    ids = [p.id for p in all_panels()]
    assert len(ids) == len(set(ids))


# --- Grafana -------------------------------------------------------------------------------------


def test_committed_grafana_dashboard_is_the_generated_one():
    assert GRAFANA == grafana_dashboard(), (
        "configs/grafana/dashboards is stale: run `recserve stack render`"
    )


def test_grafana_panels_mirror_the_panel_list_and_do_not_overlap():
    charts = [p for p in GRAFANA["panels"] if p["type"] == "timeseries"]
    assert [c["title"] for c in charts] == [p.title for p in all_panels()]
    cells = set()
    for panel in GRAFANA["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel at {(x, y)}"
                cells.add((x, y))
    assert len({p["id"] for p in GRAFANA["panels"]}) == len(GRAFANA["panels"])


def test_grafana_provisioning_points_at_the_dashboard_datasource():
    provisioning = REPO / "configs" / "grafana" / "provisioning"
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "recognition-serve.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == GRAFANA_DATASOURCE_UID
    assert GRAFANA["templating"]["list"][0]["current"]["value"] == GRAFANA_DATASOURCE_UID
    providers = yaml.safe_load((provisioning / "dashboards" / "recognition-serve.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    for chart in (p for p in GRAFANA["panels"] if p["type"] == "timeseries"):
        assert chart["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


# --- /dashboard ----------------------------------------------------------------------------------


class FakePrometheus(httpx.AsyncBaseTransport):
    """Prometheus' HTTP API at the network boundary: records requests, answers one canned matrix."""

    def __init__(self, status=200, body=None, error=None):
        self.status, self.error, self.requests = status, error, []
        self.body = (
            body
            if body is not None
            else {
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [{"metric": {"model_name": "m"}, "values": [[1, "2.5"]]}],
                },
            }
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error:
            raise self.error
        if isinstance(self.body, bytes):
            return httpx.Response(self.status, content=self.body)
        return httpx.Response(self.status, json=self.body)


def client(transport: FakePrometheus, prometheus="http://prom.test:9090") -> TestClient:
    app = FastAPI()
    app.include_router(make_router(prometheus, transport=transport))
    return TestClient(app)


def range_params(query="model_name:model_requests:rate1m", span=3600, step=15):
    end = time.time()
    return {"query": query, "start": end - span, "end": end, "step": step}


def test_page_and_its_static_files_are_served():
    c = client(FakePrometheus())
    page = c.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "dashboard.js", "dashboard.css"):
        assert f"dashboard/static/{name}" in page.text
        response = c.get(f"/dashboard/static/{name}")
        assert response.status_code == 200 and len(response.content) > 500, name
    assert c.get("/dashboard/static/../../stack.py").status_code == 404
    assert c.get("/dashboard/static/LICENSE").status_code == 404


def test_trailing_slash_redirects_to_the_page():
    response = client(FakePrometheus()).get("/dashboard/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "../dashboard"


def test_panels_api_lists_every_query():
    body = client(FakePrometheus()).get("/dashboard/api/panels").json()
    exprs = [q["expr"] for row in body["rows"] for p in row["panels"] for q in p["queries"]]
    assert exprs == all_exprs()
    assert body["prometheus"] == "http://prom.test:9090"


def test_query_range_proxies_to_prometheus():
    fake = FakePrometheus()
    params = range_params()
    response = client(fake).get("/dashboard/api/query_range", params=params)
    assert response.status_code == 200
    assert response.json()["data"]["result"][0]["values"] == [[1, "2.5"]]
    (request,) = fake.requests
    assert request.url.path == "/api/v1/query_range" and request.url.host == "prom.test"
    assert request.url.params["query"] == params["query"]
    assert float(request.url.params["start"]) == pytest.approx(params["start"], abs=1e-3)
    assert request.url.params["step"] == "15"


def test_query_range_refuses_queries_that_are_not_panels():
    fake = FakePrometheus()
    response = client(fake).get(
        "/dashboard/api/query_range", params=range_params(query="count({__name__=~'.+'})")
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_query"
    assert fake.requests == []


@pytest.mark.parametrize(
    "start, end, step, problem",
    [
        (100, 100, 15, "must be after"),
        (0, 8 * 24 * 3600, 3600, "exceeds"),
        (0, 3600, 0, "step must be positive"),
        (0, 3600, 0.1, f"exceed {MAX_POINTS_PER_QUERY}"),  # 3600 s / 0.1 s = 36,000 points
        (float("nan"), 3600, 15, "finite"),
        (0, 3600, 15, None),
    ],
)
def test_range_bounds(start, end, step, problem):
    message = check_range(start, end, step)
    assert (message is None) if problem is None else (problem in message)


def test_bad_range_is_refused_before_prometheus_is_asked():
    fake = FakePrometheus()
    response = client(fake).get("/dashboard/api/query_range", params=range_params(step=0))
    assert response.status_code == 422 and response.json()["error"]["code"] == "bad_range"
    assert client(fake).get("/dashboard/api/query_range", params={"query": "x"}).status_code == 422
    assert fake.requests == []


def test_prometheus_down_gives_a_clear_503():
    fake = FakePrometheus(error=httpx.ConnectError("connection refused"))
    response = client(fake).get("/dashboard/api/query_range", params=range_params())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "prometheus_unavailable"
    assert "prom.test" not in error["message"] and "recserve stack up" in error["message"]


def test_prometheus_errors_pass_through_and_garbage_is_502():
    error_body = {"status": "error", "errorType": "timeout", "error": "query timed out"}
    response = client(FakePrometheus(status=503, body=error_body)).get(
        "/dashboard/api/query_range", params=range_params()
    )
    assert (response.status_code, response.json()) == (503, error_body)
    response = client(FakePrometheus(body=b"<html>proxy error</html>")).get(
        "/dashboard/api/query_range", params=range_params()
    )
    assert (
        response.status_code == 502 and response.json()["error"]["code"] == "prometheus_bad_answer"
    )


def test_prometheus_address_comes_from_the_environment(monkeypatch):
    fake = FakePrometheus()
    app = FastAPI()
    app.include_router(make_router(transport=fake))
    monkeypatch.setenv("RAY_PROMETHEUS_HOST", "http://ray-prom:9090")
    monkeypatch.delenv("RECSERVE_PROMETHEUS_URL", raising=False)
    TestClient(app).get("/dashboard/api/query_range", params=range_params())
    monkeypatch.setenv("RECSERVE_PROMETHEUS_URL", "http://ours:19090/")
    TestClient(app).get("/dashboard/api/query_range", params=range_params())
    assert [(r.url.host, r.url.port) for r in fake.requests] == [
        ("ray-prom", 9090),
        ("ours", 19090),
    ]


@pytest.mark.parametrize(
    "environ, url",
    [
        ({}, "http://127.0.0.1:9090"),
        ({"RAY_PROMETHEUS_HOST": "ray-prom:9090"}, "http://ray-prom:9090"),  # scheme added
        (
            {"RECSERVE_PROMETHEUS_URL": "https://ours:19090/", "RAY_PROMETHEUS_HOST": "x:1"},
            "https://ours:19090",
        ),
    ],
)
def test_prometheus_url_is_normalised(monkeypatch, environ, url):
    for name in ("RECSERVE_PROMETHEUS_URL", "RAY_PROMETHEUS_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert prometheus_url() == url
