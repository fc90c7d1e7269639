"""The Prometheus client: addresses, and one wording for every way Prometheus can fail a query."""

from __future__ import annotations

import httpx
import pytest

from serve_app.monitoring.prometheus_api import PrometheusClient, PrometheusUnavailable, base_url


@pytest.mark.parametrize(
    "address, url",
    [
        ("127.0.0.1:9090", "http://127.0.0.1:9090"),  # host:port gets a scheme
        (" http://prom:9090/ ", "http://prom:9090"),  # spaces and the trailing slash go
        ("https://prom.example", "https://prom.example"),
    ],
)
def test_base_url(address, url):
    assert base_url(address) == url


def client(handler) -> PrometheusClient:
    return PrometheusClient("prom:9090", transport=httpx.MockTransport(handler))


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused")


@pytest.mark.parametrize(
    "handler, message",
    [
        (refuse_connection, "Prometheus at http://prom:9090 did not answer: connection refused"),
        (
            lambda request: httpx.Response(502, content=b"<html>proxy</html>"),
            "Prometheus at http://prom:9090/api/v1/query answered HTTP 502 without JSON",
        ),
        (
            lambda request: httpx.Response(400, json={"status": "error", "error": "parse error"}),
            "Prometheus at http://prom:9090 refused 'up' (HTTP 400): parse error",
        ),
    ],
)
def test_failures_raise_one_error_type_naming_the_address(handler, message):
    with pytest.raises(PrometheusUnavailable) as caught:
        client(handler).query("up")
    assert str(caught.value) == message


def test_ready_is_false_instead_of_raising():
    assert client(refuse_connection).ready() is False
