"""Session fixtures for the monitoring stack, imported by tests/integration/conftest.py.

`monitoring_stack`: our real Prometheus (scraping the running service through Ray's discovery file,
every 5 s) and Alertmanager, on the test ports 19090 / 19093, with the project's rules plus one
test rule that fires on any successful request. `alert_sink`: a webhook receiver on loopback that
Alertmanager delivers every severity to, recording each payload.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from serve_app.monitoring.alerting.alertmanager_config import (
    ReceiverSettings,
    RouteTiming,
    WebhookChannel,
)
from serve_app.monitoring.stack import Stack, running_stack
from tests.integration.ports import ALERTMANAGER_PORT, PROMETHEUS_PORT

SCRAPE_INTERVAL = "5s"
TEST_ALERT = "RecserveTestTraffic"
TEST_MODEL = "efficientnet_lite0"

# Fires as soon as Prometheus has scraped one successful request of TEST_MODEL.
TEST_RULES = f"""
groups:
  - name: recserve_integration_test
    rules:
      - alert: {TEST_ALERT}
        expr: >-
          sum by (model_name)
          (ray_model_request_total{{model_name="{TEST_MODEL}", status="success"}}) > 0
        labels:
          severity: critical
          family: integration_test
        annotations:
          summary: "{{{{ $labels.model_name }}}} has served requests"
          description: >-
            {{{{ $value }}}} successful requests of {{{{ $labels.model_name }}}} so far.
"""


class AlertSink:
    """A webhook receiver: records every JSON payload Alertmanager posts."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        self._changed = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink._changed:
                    sink.payloads.append(json.loads(body))
                    sink._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, match: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """The first payload `match` accepts, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for payload in self.payloads:
                    if match(payload):
                        return payload
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [
                        [a["labels"].get("alertname") for a in p.get("alerts", [])]
                        for p in self.payloads
                    ]
                    pytest.fail(
                        f"no webhook payload with {what} after {timeout:.0f} s; received: {names}"
                    )
                self._changed.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def wait_until(probe: Callable[[], object], timeout: float, what: str, every: float = 1.0):
    """Call `probe` until it returns something truthy; fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def alertmanager_alerts(stack: Stack, **filters: str) -> list[dict]:
    """GET /api/v2/alerts of our Alertmanager."""
    query = urllib.parse.urlencode(filters)
    with urllib.request.urlopen(
        f"{stack.alertmanager_url}/api/v2/alerts?{query}", timeout=5
    ) as response:
        return json.loads(response.read())


def post_alerts(stack: Stack, alerts: list[dict]) -> None:
    """POST alerts straight to Alertmanager's API, as Prometheus does."""
    request = urllib.request.Request(
        f"{stack.alertmanager_url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture(scope="session")
def alert_sink():
    sink = AlertSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def monitoring_stack(
    service_url: str, ray_tmpdir: Path, alert_sink: AlertSink, tmp_path_factory
) -> Stack:
    """Prometheus + Alertmanager for the session, routed to `alert_sink`; stopped by PID at end."""
    rules = tmp_path_factory.mktemp("monitoring") / "test_rules.yml"
    rules.write_text(TEST_RULES)
    receivers = ReceiverSettings(
        webhook=WebhookChannel(url=alert_sink.url, severities=["critical", "warning", "info"]),
        route=RouteTiming(group_wait="1s", group_interval="1s", repeat_interval="1h"),
    )
    with running_stack(
        ray_tmpdir,
        prometheus_port=PROMETHEUS_PORT,
        alertmanager_port=ALERTMANAGER_PORT,
        scrape_interval=SCRAPE_INTERVAL,
        extra_rule_files=[rules],
        alertmanager_config=receivers,
    ) as stack:
        yield stack
