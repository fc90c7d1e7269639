"""The shared PromQL builders spell the queries the rules, policy and collector need."""

from __future__ import annotations

from serve_app.monitoring import promql


def test_series_names_are_the_exported_ones():
    assert promql.REQUESTS == "ray_model_request_total"
    assert promql.LATENCY_BUCKETS == "ray_model_latency_seconds_bucket"


def test_label_values_are_escaped():
    assert promql.quote_label('a"b\\c') == '"a\\"b\\\\c"'
    assert promql.matchers(model_name='x"y') == '{model_name="x\\"y"}'


def test_matchers_skip_none_and_take_regexes():
    assert promql.matchers(model_name=None) == ""
    assert promql.matchers(model_name="m", status="~client_error|server_error") == (
        '{model_name="m",status=~"client_error|server_error"}'
    )


def test_request_rate():
    assert promql.request_rate(model_name="m") == (
        'sum (rate(ray_model_request_total{model_name="m"}[1m]))'
    )
    assert promql.request_rate("5m", by=["model_name"]) == (
        "sum by (model_name) (rate(ray_model_request_total[5m]))"
    )


def test_latency_quantile():
    assert promql.latency_quantile(0.99, model_name="m") == (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(ray_model_latency_seconds_bucket{model_name="m"}[1m])))'
    )
    assert promql.latency_quantile(0.5, "5m", by=["model_name"]) == (
        "histogram_quantile(0.5, sum by (model_name, le) "
        "(rate(ray_model_latency_seconds_bucket[5m])))"
    )
