"""The shared PromQL builders spell the queries the rules, dashboards, policy and collector need."""

from __future__ import annotations

import pytest

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


def test_stage_buckets_are_the_exported_histogram():
    assert promql.STAGE_BUCKETS == "ray_model_stage_seconds_bucket"


@pytest.mark.parametrize(
    "kwargs, expr",
    [
        (
            {"series": "ray_x_total"},
            "sum (rate(ray_x_total[1m]))",
        ),
        (  # grouped, with a label matcher
            {"series": "ray_x_total", "window": "5m", "by": ["model_name"], "stage": "decode"},
            'sum by (model_name) (rate(ray_x_total{stage="decode"}[5m]))',
        ),
        (  # the same window one week earlier: the offset follows the range selector
            {"series": "ray_x_total", "window": "30m", "by": ["model_name"], "offset": "1w"},
            "sum by (model_name) (rate(ray_x_total[30m] offset 1w))",
        ),
    ],
)
def test_summed_rate(kwargs, expr):
    assert promql.summed_rate(**kwargs) == expr


@pytest.mark.parametrize(
    "quantile, expr_head",
    [
        (0.99, "histogram_quantile(0.99, "),
        (0.5, "histogram_quantile(0.5, "),  # a float is written as %g
        ("0.50", "histogram_quantile(0.50, "),  # text is kept as written
    ],
)
def test_bucket_quantile(quantile, expr_head):
    expr = promql.bucket_quantile(
        quantile, promql.STAGE_BUCKETS, by=["NodeAddress", "model_name"], stage="inference"
    )
    assert expr == (
        expr_head + "sum by (NodeAddress, model_name, le) "
        '(rate(ray_model_stage_seconds_bucket{stage="inference"}[1m])))'
    )
