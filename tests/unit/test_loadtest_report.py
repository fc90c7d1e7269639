"""Load-test report: locust CSVs and Prometheus series -> summary numbers, series.csv and the
PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pandas as pd
import pytest

from loadtests import collect, report, runner
from serve_app.monitoring.prometheus_api import PrometheusClient, PrometheusUnavailable

RUN = report.RunInfo(
    scenario="spike",
    host="http://127.0.0.1:8000",
    model="efficientnet_lite0",
    start=1000.0,
    end=1060.0,
    prometheus_url="http://127.0.0.1:9090",
)

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
STATS_CSV = (
    STATS_HEADER
    + """
POST,/v1/feedback,20,1,3,3.1,1.0,9.0,14.0,0.33,0.0,3,3,4,4,5,6,8,9,9,9,9
POST,/v1/models/[name]/predict,100,2,45,60.2,20.0,400.0,261.0,1.67,0.03,45,50,60,70,120,200,300,350,400,400,400
POST,/v2/models/[name]/infer,30,0,40,50.0,20.0,300.0,225.0,0.5,0.0,40,45,50,55,90,150,250,280,300,300,300
SHED,shed (503),10,0,30,30.0,25.0,40.0,48.0,0.17,0.0,30,30,31,32,35,38,40,40,40,40,40
,Aggregated,160,3,42,55.0,1.0,400.0,200.0,2.67,0.05,42,48,55,60,100,180,280,330,400,400,400
"""
)

HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)
HISTORY_CSV = (
    HISTORY_HEADER
    + """
1000,0,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1001,2,POST,/v1/models/[name]/predict,0.000000,0.000000,0,0,0,0,0,0,0,0,0,0,0,1,0,38,38,38,38,261
1001,2,,Aggregated,0.000000,0.000000,0,0,0,0,0,0,0,0,0,0,0,1,0,38,38,38,38,261
1002,4,POST,/v1/models/[name]/predict,2.500000,0.000000,44,50,50,60,60,70,70,90,90,90,90,5,0,38,38,38,38,261
1002,4,,Aggregated,3.000000,0.000000,30,40,44,50,60,70,70,90,90,90,90,6,0,38,38,38,38,261
"""
)


def stats_frame(tmp_path: Path) -> pd.DataFrame:
    path = tmp_path / "locust_stats.csv"
    path.write_text(STATS_CSV)
    return report.read_locust_stats(path)


def series_frame() -> pd.DataFrame:
    """Replica, forecast and rate series every 10 s of a 60 s run, plus one point after it ended."""
    rows = []

    def add(series, label, values):
        for i, value in enumerate(values):
            elapsed = 10.0 * i
            rows.append(
                {
                    "timestamp": RUN.start + elapsed,
                    "elapsed_s": elapsed,
                    "series": series,
                    "label": label,
                    "value": value,
                }
            )

    add(
        "running_replicas", "Recognizer", [1, 1, 2, 3, 3, 2, 1, 5]
    )  # the 5 is at 70 s, after the run
    add("running_replicas", "Ingress", [1] * 7)
    add("target_replicas", "Recognizer", [1, 2, 3, 3, 3, 1, 1])
    add("forecast_qps", "yhat", [4, 5, 7, 9, 8, 6, 4])
    add("forecast_qps", "upper", [6, 7, 9, 12, 10, 8, 6])
    add("request_rate", "", [0.5, 2.0, 6.0, 8.5, 8.0, 3.0, 1.0])
    add("latency_p50_s", "", [0.04, 0.04, 0.05, 0.06, 0.05, 0.04, 0.04])
    add("latency_p99_s", "", [0.1, 0.2, 0.5, 0.4, 0.3, 0.1, math.nan])
    return pd.DataFrame(rows, columns=collect.SERIES_COLUMNS)


TOTALS = {
    "requests_by_status": {"success": 128.0, "server_error": 2.0},
    "shed_http_503": 10.0,
    "latency_p50_s": 0.045,
    "latency_p99_s": 0.310,
}


# --- client side ------------------------------------------------------------------------------


def test_client_summary_counts_each_kind_once(tmp_path):
    client = report.summarize_client(stats_frame(tmp_path))
    assert client.recognition_requests == 130  # predict 100 + infer 30 (shed and feedback apart)
    assert client.recognition_failures == 2  # 2 + 0
    assert client.feedback_requests == 20 and client.feedback_failures == 1
    assert client.shed == 10
    assert client.failure_ratio == pytest.approx(2 / 130)
    assert client.shed_ratio == pytest.approx(10 / 160)  # 10 / (130 + 20 + 10)
    assert [e.name for e in client.endpoints] == [
        "/v1/feedback",
        "/v1/models/[name]/predict",
        "/v2/models/[name]/infer",
        "shed (503)",
    ]  # the Aggregated row is not an endpoint
    predict = client.endpoints[1]
    assert (predict.p50_ms, predict.p99_ms) == (45.0, 350.0)


def test_history_takes_load_from_aggregated_and_latency_from_predict(tmp_path):
    path = tmp_path / "locust_stats_history.csv"
    path.write_text(HISTORY_CSV)
    history = report.read_locust_history(path, run_start=1000.0)
    assert list(history["elapsed_s"]) == [0.0, 1.0, 2.0]
    assert list(history["users"]) == [0, 2, 4]
    assert history["rps"].iloc[2] == 3.0  # Aggregated, all requests
    assert (
        history["p50_ms"].iloc[2] == 44.0 and history["p99_ms"].iloc[2] == 90.0
    )  # predict row, not 30/90
    # "N/A" and locust's 0 ms placeholder for an empty window are missing values, not zero latency
    assert history["p50_ms"].iloc[:2].isna().all()


def test_history_of_a_run_that_wrote_none_is_empty(tmp_path):
    assert report.read_locust_history(tmp_path / "absent.csv", 0.0).empty


# --- service side -----------------------------------------------------------------------------


def test_service_summary_spans_only_the_run():
    service = report.summarize_service(series_frame(), TOTALS, RUN)
    assert service.running_replicas["Recognizer"] == report.Span(
        1, 3
    )  # the 5 at 70 s is after the 60 s run
    assert service.running_replicas["Ingress"] == report.Span(1, 1)
    assert service.target_replicas == {"Recognizer": report.Span(1, 3)}
    assert service.forecast_qps == report.Span(4, 9)  # yhat only, not the upper bound (12)
    assert service.peak_request_rate == 8.5
    assert service.latency_p99_s == 0.310


def test_target_falls_back_to_serves_own_gauge():
    series = series_frame()
    series.loc[series["series"] == "target_replicas", "series"] = "serve_target_replicas"
    service = report.summarize_service(series, TOTALS, RUN)
    assert service.target_replicas == {"Recognizer": report.Span(1, 3)}


def test_summary_markdown_has_the_numbers(tmp_path):
    client = report.summarize_client(stats_frame(tmp_path))
    text = report.render_summary(RUN, client, report.summarize_service(series_frame(), TOTALS, RUN))
    assert "recognition requests: 130, failures: 2 (1.5%)" in text  # 2/130 = 1.54%
    assert (
        "shed (503): 10 (6.2% of all requests sent)" in text
    )  # 10/160 = 6.25% -> 6.2 (round half even)
    assert "p50 45 ms, p99 310 ms" in text
    assert "server_error: 2, success: 128" in text
    assert "| Recognizer | 1 – 3 | 1 – 3 |" in text
    assert "| Ingress | 1 | n/a |" in text
    assert "forecast QPS (yhat) over the run: 4 – 9" in text
    assert "| /v1/models/[name]/predict | 100 | 2 | 45 | 350 | 1.67 |" in text


def test_summary_without_prometheus_says_the_series_are_missing(tmp_path):
    client = report.summarize_client(stats_frame(tmp_path))
    text = report.render_summary(
        RUN, client, None, "Prometheus at http://127.0.0.1:9 did not answer"
    )
    assert "Series missing: Prometheus at http://127.0.0.1:9 did not answer." in text
    assert "recognition requests: 130" in text


@pytest.mark.parametrize(
    "running, target, expected",
    [
        (
            {"Ingress": [1, 1], "Recognizer": [1, 2]},
            {"Recognizer": [1, 2]},
            ["Recognizer"],
        ),  # autoscaled ones
        ({"Ingress": [1, 1], "Recognizer": [1, 2]}, {}, ["Recognizer"]),  # those that moved
        ({"Ingress": [1, 1], "Recognizer": [1, 1]}, {}, ["Ingress", "Recognizer"]),  # else all
    ],
)
def test_deployments_to_plot(running, target, expected):
    rows = [
        {"timestamp": 0, "elapsed_s": i, "series": series, "label": label, "value": v}
        for series, table in (("running_replicas", running), ("target_replicas", target))
        for label, values in table.items()
        for i, v in enumerate(values)
    ]
    assert (
        report.deployments_to_plot(pd.DataFrame(rows, columns=collect.SERIES_COLUMNS)) == expected
    )


def test_plot_is_a_png(tmp_path):
    history_path = tmp_path / "history.csv"
    history_path.write_text(HISTORY_CSV)
    history = report.read_locust_history(history_path, RUN.start)
    path = report.plot_loadtest(series_frame(), history, RUN, tmp_path / "loadtest.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000  # three panels of lines, not an empty canvas


def test_plot_without_any_series_still_renders(tmp_path):
    empty = pd.DataFrame(columns=collect.SERIES_COLUMNS)
    history = pd.DataFrame(
        columns=["elapsed_s", "users", "rps", "failures_per_s", "p50_ms", "p99_ms"]
    )
    path = report.plot_loadtest(empty, history, RUN, tmp_path / "loadtest.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# --- Prometheus collection through a canned transport -------------------------------------------


class CannedPrometheus:
    """Answers /api/v1/query(_range) like Prometheus, from the metric name found in the query."""

    def __init__(self):
        self.queries: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())["query"][0]
        self.queries.append(query)
        if request.url.path == "/api/v1/query":
            return self.instant(query)
        start, step = float(parse_qs(request.url.query.decode())["start"][0]), 10.0
        times = [start + step * i for i in range(7)]
        if "replica_healthy" in query:
            result = [
                {
                    "metric": {"deployment": "Recognizer"},
                    "values": [[t, v] for t, v in zip(times, "1122321", strict=True)],
                },
                {"metric": {"deployment": "Ingress"}, "values": [[t, "1"] for t in times]},
            ]
        elif "ray_autoscaler_target_replicas" in query:
            result = [
                {
                    "metric": {"deployment": "Recognizer"},
                    "values": [[t, v] for t, v in zip(times, "1233311", strict=True)],
                }
            ]
        elif "ray_model_request_total" in query and "status" not in query:
            result = [
                {
                    "metric": {},
                    "values": [
                        [t, str(v)] for t, v in zip(times, [1, 2, 6, 8, 8, 3, 1], strict=True)
                    ],
                }
            ]
        elif "histogram_quantile" in query:
            result = [
                {
                    "metric": {},
                    "values": [[t, "NaN" if i == 0 else "0.05"] for i, t in enumerate(times)],
                }
            ]
        else:
            result = []  # e.g. no errors recorded: Prometheus returns an empty matrix
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "matrix", "result": result}}
        )

    def instant(self, query: str) -> httpx.Response:
        if query == "1":
            result = [{"metric": {}, "value": [0, "1"]}]
        elif query.startswith("sum by (status)"):
            result = [{"metric": {"status": "success"}, "value": [0, "29.4"]}]
        elif query.startswith("histogram_quantile(0.99"):
            result = [{"metric": {}, "value": [0, "0.25"]}]
        else:
            result = []
        return httpx.Response(
            200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
        )


def refusing(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def test_collect_series_turns_matrices_into_long_rows():
    client = PrometheusClient(
        "http://prometheus", transport=httpx.MockTransport(CannedPrometheus())
    )
    specs = collect.series_specs("efficientnet_lite0", "30s")
    frame = collect.collect_series(client, specs, RUN.start, RUN.end, 10.0, RUN.start)
    running = frame[(frame["series"] == "running_replicas") & (frame["label"] == "Recognizer")]
    assert list(running["value"]) == [1, 1, 2, 2, 3, 2, 1]
    assert list(running["elapsed_s"]) == [0, 10, 20, 30, 40, 50, 60]
    p50 = frame[frame["series"] == "latency_p50_s"]["value"]
    assert math.isnan(p50.iloc[0]) and p50.iloc[1] == 0.05  # "NaN" from an idle window stays NaN
    assert frame[frame["series"] == "error_rate"].empty


def test_queries_filter_by_model_and_quote_it():
    canned = CannedPrometheus()
    client = PrometheusClient("http://prometheus", transport=httpx.MockTransport(canned))
    collect.collect_series(client, collect.series_specs('odd"name', "30s"), 0, 60, 5, 0)
    assert any('model_name="odd\\"name"' in q for q in canned.queries)


def test_prometheus_errors_are_reported_not_raised_raw():
    def bad_query(request):
        return httpx.Response(400, json={"status": "error", "error": "parse error at char 5"})

    client = PrometheusClient("http://prometheus", transport=httpx.MockTransport(bad_query))
    with pytest.raises(PrometheusUnavailable, match="parse error at char 5"):
        client.query_range("sum(", 0, 60, 5)
    assert not PrometheusClient(
        "http://prometheus", transport=httpx.MockTransport(refusing)
    ).ready()


# --- the whole report as the CLI writes it ----------------------------------------------------


def write_locust_outputs(out: Path) -> None:
    (out / "locust_stats.csv").write_text(STATS_CSV)
    (out / "locust_stats_history.csv").write_text(HISTORY_CSV)


def report_args():
    return runner.build_parser().parse_args(
        ["spike", "--settle", "0", "--prometheus", "http://prometheus"]
    )


def test_report_without_prometheus_still_writes_everything(tmp_path):
    write_locust_outputs(tmp_path)
    unreachable = PrometheusClient("http://prometheus", transport=httpx.MockTransport(refusing))
    summary, has_series = runner.write_report(tmp_path, RUN, report_args(), unreachable)
    assert not has_series
    assert "Series missing: Prometheus at http://prometheus did not answer" in summary
    assert (tmp_path / "summary.md").read_text() == summary
    assert list(pd.read_csv(tmp_path / "series.csv").columns) == collect.SERIES_COLUMNS
    assert (tmp_path / "loadtest.png").read_bytes()[:4] == b"\x89PNG"


def test_report_with_prometheus_writes_series_and_replicas(tmp_path):
    write_locust_outputs(tmp_path)
    prometheus = PrometheusClient(
        "http://prometheus", transport=httpx.MockTransport(CannedPrometheus())
    )
    summary, has_series = runner.write_report(tmp_path, RUN, report_args(), prometheus)
    assert has_series
    assert "| Recognizer | 1 – 3 | 1 – 3 |" in summary
    assert "success: 29" in summary
    assert "p99 250 ms" in summary and "p50 n/a ms" in summary  # no p50 answer -> n/a, not 0
    series = pd.read_csv(tmp_path / "series.csv")
    assert set(series["series"]) >= {
        "running_replicas",
        "target_replicas",
        "request_rate",
        "latency_p50_s",
    }


def test_report_without_locust_stats_says_so(tmp_path):
    unreachable = PrometheusClient("http://prometheus", transport=httpx.MockTransport(refusing))
    summary, _ = runner.write_report(tmp_path, RUN, report_args(), unreachable)
    assert "recognition requests: 0" in summary
    assert "locust wrote no locust_stats.csv" in summary


# --- CLI plumbing -----------------------------------------------------------------------------


def test_headless_locust_command(tmp_path):
    args = runner.build_parser().parse_args(
        ["diurnal", "--duration", "10m", "--out", str(tmp_path)]
    )
    command = runner.locust_command(args, "http://127.0.0.1:8000", tmp_path, 600.0)
    assert command[1:5] == ["-m", "locust", "-f", str(runner.LOCUSTFILE)]
    assert {"--headless", "--csv-full-history"} <= set(command)
    assert command[command.index("--run-time") + 1] == "600s"
    assert command[command.index("--csv") + 1] == str(tmp_path / "locust")


def test_web_locust_command_has_no_headless_flag(tmp_path):
    args = runner.build_parser().parse_args(["spike", "--web", "--web-port", "8091"])
    command = runner.locust_command(args, "http://127.0.0.1:8000", tmp_path, None)
    assert "--headless" not in command and "--run-time" not in command
    assert command[command.index("--web-port") + 1] == "8091"


def test_locust_environment_carries_the_scenario_and_shares(monkeypatch):
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
    args = runner.build_parser().parse_args(["step", "--oip-share", "0.5", "--user-rps", "2"])
    env = runner.locust_environment(args, "mobilenet_v3")
    assert env["LOADTEST_SCENARIO"] == "step" and env["LOADTEST_MODEL"] == "mobilenet_v3"
    assert env["LOADTEST_OIP_SHARE"] == "0.5" and env["LOADTEST_USER_RPS"] == "2.0"
    assert "LOCUST_SKIP_MONKEY_PATCH" not in env


@pytest.mark.parametrize(
    "listing, names",
    [
        (
            {"models": [{"name": "efficientnet_lite0"}, {"name": "resnet50"}]},
            ["efficientnet_lite0", "resnet50"],
        ),
        ([{"name": "a"}], ["a"]),
        (["a", "b"], ["a", "b"]),
        ({"models": "garbage"}, []),
        ({"unexpected": 1}, []),
    ],
)
def test_model_names(listing, names):
    assert runner.model_names(json.loads(json.dumps(listing))) == names


def test_cli_refuses_an_unknown_scenario(capsys):
    assert runner.main(["nope", "--host", "http://127.0.0.1:9"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_cli_refuses_bad_shares_before_anything_starts(capsys):
    assert runner.main(["smoke", "--oip-share", "2", "--host", "http://127.0.0.1:9"]) == 2
    assert "--oip-share=2.0 must be between 0 and 1" in capsys.readouterr().err
