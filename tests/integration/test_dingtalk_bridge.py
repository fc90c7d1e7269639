"""Alertmanager -> the DingTalk bridge process -> a DingTalk stand-in on loopback, signed and
formatted.

Needs no Serve: alerts are posted to Alertmanager's API the way Prometheus posts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import urllib.parse
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from monitoring_fixtures import post_alerts, wait_until

from serve_app.monitoring.alerting.alertmanager_config import (
    DingTalkChannel,
    ReceiverSettings,
    RouteTiming,
)
from serve_app.monitoring.stack import running_stack
from tests.integration.ports import (
    DINGTALK_ALERTMANAGER_PORT,
    DINGTALK_BRIDGE_PORT,
    DINGTALK_PROMETHEUS_PORT,
)

SECRET = "SECintegration"
# Ports of their own: the session's stack holds 19090 / 19093.
PROMETHEUS_PORT, ALERTMANAGER_PORT, BRIDGE_PORT = (
    DINGTALK_PROMETHEUS_PORT,
    DINGTALK_ALERTMANAGER_PORT,
    DINGTALK_BRIDGE_PORT,
)


class DingTalkStandIn:
    """Answers like DingTalk's robot API and keeps every request (URL and JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                answer = json.dumps({"errcode": 0, "errmsg": "ok"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/robot/send?access_token=tok"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dingtalk():
    stand_in = DingTalkStandIn()
    yield stand_in
    stand_in.close()


def test_alert_arrives_in_dingtalk_signed(dingtalk, tmp_path):
    receivers = ReceiverSettings(
        dingtalk=DingTalkChannel(
            url=dingtalk.url, secret=SECRET, at_mobiles=["13800000000"], bridge_port=BRIDGE_PORT
        ),
        route=RouteTiming(group_wait="1s", group_interval="1s", repeat_interval="1h"),
    )
    with running_stack(
        tmp_path / "no-ray", PROMETHEUS_PORT, ALERTMANAGER_PORT, "5s", alertmanager_config=receivers
    ) as stack:
        now = datetime.now(timezone.utc)
        post_alerts(
            stack,
            [
                {
                    "labels": {
                        "alertname": "GPUMemoryCritical",
                        "severity": "critical",
                        "family": "gpu_memory",
                        "NodeAddress": "10.0.0.7",
                        "gpu": "0",
                    },
                    "annotations": {
                        "summary": "GPU 0 on 10.0.0.7 memory 93% used",
                        "description": "now 93%",
                    },
                    "startsAt": now.isoformat(),
                    "endsAt": (now + timedelta(minutes=10)).isoformat(),
                }
            ],
        )
        wait_until(lambda: dingtalk.requests, 60, "a message at the DingTalk stand-in")

    path, body = dingtalk.requests[0]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert query["access_token"] == ["tok"]
    # The signature DingTalk would check: base64(HMAC-SHA256(secret, "<timestamp>\n<secret>")).
    timestamp = query["timestamp"][0]
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    assert query["sign"] == [expected]  # parse_qs has undone the URL encoding
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == "recognition-serve [FIRING:1] GPUMemoryCritical (critical)"
    assert "GPU 0 on 10.0.0.7 memory 93% used" in body["markdown"]["text"]
    assert body["at"]["atMobiles"] == ["13800000000"] and "@13800000000" in body["markdown"]["text"]
