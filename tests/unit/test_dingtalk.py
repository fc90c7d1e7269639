"""The DingTalk bridge: signing, message formatting, delivery outcomes, and its HTTP face."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from serve_app.monitoring.alerting.dingtalk import (
    MAX_TEXT_BYTES,
    DingTalkBridge,
    bridge_from_env,
    format_message,
    serve,
    sign,
    signed_url,
)

ROBOT = "https://oapi.dingtalk.com/robot/send?access_token=tok"


def alert(name="LatencyP99High", severity="warning", status="firing", **labels):
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": f"{name} summary", "description": f"{name} is at 612ms"},
        "startsAt": "2026-11-22T02:33:18.343Z",
        "endsAt": "2026-11-22T02:40:00.000Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
    }


def payload(*alerts, status="firing", **common):
    return {
        "version": "4",
        "status": status,
        "receiver": "warning",
        "alerts": list(alerts),
        "commonLabels": common,
        "externalURL": "http://127.0.0.1:9093",
    }


class RecordingSender:
    """Stands in for DingTalk's HTTP API: records what was sent, answers as told."""

    def __init__(self, answer=None, error=None):
        self.answer = answer if answer is not None else {"errcode": 0, "errmsg": "ok"}
        self.error = error
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, url, body):
        self.sent.append((url, body))
        if self.error:
            raise self.error
        return self.answer


# --- signing -------------------------------------------------------------------------------------


def test_sign_matches_an_independent_hmac():
    # printf '1700000000000\nSECtestsecret' | openssl dgst -sha256 -hmac SECtestsecret -binary |
    # base64 -> 7LVwF0dAF3/+MRRulbpE4y72Ogzykc6bS2nG4I99T4s=   then URL-encoded (/ + = escaped)
    assert (
        sign("SECtestsecret", 1700000000000) == "7LVwF0dAF3%2F%2BMRRulbpE4y72Ogzykc6bS2nG4I99T4s%3D"
    )


def test_signed_url_appends_timestamp_and_sign_only_with_a_secret():
    assert signed_url(ROBOT, None, 1700000000000) == ROBOT
    assert signed_url(ROBOT, "", 1700000000000) == ROBOT
    assert signed_url(ROBOT, "SECtestsecret", 1700000000000) == (
        ROBOT + "&timestamp=1700000000000&sign=7LVwF0dAF3%2F%2BMRRulbpE4y72Ogzykc6bS2nG4I99T4s%3D"
    )
    assert signed_url("https://robot.example/send", "s", 1).startswith(
        "https://robot.example/send?timestamp=1&sign="
    )


# --- formatting ----------------------------------------------------------------------------------


def test_firing_message_is_markdown_with_every_alert():
    message = format_message(
        payload(
            alert(model_name="m1"),
            alert(model_name="m2"),
            alertname="LatencyP99High",
            severity="warning",
        )
    )
    assert message["msgtype"] == "markdown"
    title = message["markdown"]["title"]
    assert title == "recognition-serve [FIRING:2] LatencyP99High (warning)"
    text = message["markdown"]["text"]
    assert text.startswith(f"### {title}\n")
    assert text.count("LatencyP99High is at 612ms") == 2
    assert "model_name=`m1`" in text and "model_name=`m2`" in text
    assert "since 2026-11-22 02:33:18 UTC" in text
    assert "[Alertmanager](http://127.0.0.1:9093)" in text
    assert message["at"] == {"atMobiles": [], "isAtAll": False}


def test_resolved_message_says_when():
    message = format_message(
        payload(alert(status="resolved"), status="resolved", alertname="LatencyP99High")
    )
    assert "[RESOLVED:1]" in message["markdown"]["title"]
    assert "resolved 2026-11-22 02:40:00 UTC" in message["markdown"]["text"]


@pytest.mark.parametrize(
    "severity, status, mentioned",
    [("critical", "firing", True), ("warning", "firing", False), ("critical", "resolved", False)],
)
def test_mobiles_are_mentioned_only_for_firing_critical_alerts(severity, status, mentioned):
    message = format_message(
        payload(alert(severity=severity, status=status), status=status, severity=severity),
        at_mobiles=["13800000000"],
    )
    assert (message["at"]["atMobiles"] == ["13800000000"]) is mentioned
    # DingTalk notifies a number only when the text mentions it too.
    assert ("@13800000000" in message["markdown"]["text"]) is mentioned


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        [],
        "text",
        42,
        {"alerts": "nope"},
        {"alerts": [None, 7, "x"]},
        {"alerts": [{"labels": "bad"}]},
    ],
)
def test_garbage_payloads_still_give_a_valid_message(garbage):
    message = format_message(garbage)
    assert message["msgtype"] == "markdown"
    assert message["markdown"]["title"].startswith("recognition-serve [")
    assert isinstance(message["markdown"]["text"], str) and message["markdown"]["text"]


def test_huge_payloads_are_cut_below_dingtalk_limit_and_say_how_many_are_left():
    many = [alert(model_name=f"model-{i}") for i in range(200)]
    for a in many:
        a["annotations"]["description"] = "y" * 500  # 200 alerts x ~700 bytes = ~140 kB
    text = format_message(payload(*many))["markdown"]["text"]
    assert len(text.encode("utf-8")) <= MAX_TEXT_BYTES + 200  # plus the closing link line
    shown = text.count("#### ")
    assert 0 < shown < 200
    assert f"... and {200 - shown} more alerts, see Alertmanager" in text


# --- delivery ------------------------------------------------------------------------------------


def test_deliver_signs_with_the_clock_and_reports_success():
    sender = RecordingSender()
    bridge = DingTalkBridge(ROBOT, "SECtestsecret", send=sender, clock_ms=lambda: 1700000000000)
    assert bridge.deliver(payload(alert())) == (200, {"ok": True})
    ((url, body),) = sender.sent
    assert url.endswith(
        "&timestamp=1700000000000&sign=7LVwF0dAF3%2F%2BMRRulbpE4y72Ogzykc6bS2nG4I99T4s%3D"
    )
    assert body["msgtype"] == "markdown"


def test_refused_or_unreachable_dingtalk_answers_502_so_alertmanager_retries():
    refused = DingTalkBridge(
        ROBOT, send=RecordingSender(answer={"errcode": 310000, "errmsg": "sign not match"})
    )
    status, body = refused.deliver(payload(alert()))
    assert status == 502 and body["error"]["code"] == "dingtalk_refused"
    assert "errcode 310000" in body["error"]["message"]  # DingTalk's own reason is kept
    down = DingTalkBridge(
        ROBOT, send=RecordingSender(error=urllib.error.URLError("connection refused"))
    )
    status, body = down.deliver(payload(alert()))
    assert status == 502 and body["error"]["code"] == "dingtalk_unreachable"
    assert "unreachable" in body["error"]["message"]


def test_bad_robot_url_is_refused_at_construction():
    with pytest.raises(ValueError, match="must be http"):
        DingTalkBridge("oapi.dingtalk.com/robot/send")


def test_bridge_from_env_needs_the_robot_url():
    with pytest.raises(SystemExit, match="RECSERVE_DINGTALK_WEBHOOK"):
        bridge_from_env({})
    bridge = bridge_from_env(
        {"RECSERVE_DINGTALK_WEBHOOK": ROBOT, "RECSERVE_DINGTALK_AT_MOBILES": " 1, 2 ,"}
    )
    assert bridge.at_mobiles == ["1", "2"] and bridge.secret is None


# --- HTTP (in-process, loopback) -----------------------------------------------------------------


@pytest.fixture
def bridge_url():
    sender = RecordingSender()
    server = serve(DingTalkBridge(ROBOT, send=sender), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", sender
    server.shutdown()
    server.server_close()


def _post(url, data: bytes):
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_alert_is_forwarded(bridge_url):
    url, sender = bridge_url
    status, body = _post(
        url + "/alert", json.dumps(payload(alert(), alertname="LatencyP99High")).encode()
    )
    assert (status, body) == (200, {"ok": True})
    assert sender.sent[0][1]["markdown"]["title"].endswith("LatencyP99High")


@pytest.mark.parametrize(
    "path, data, status, code",
    [
        ("/alert", b"{not json", 400, "bad_request"),
        ("/elsewhere", b"{}", 404, "not_found"),
    ],
)
def test_http_rejects_non_json_and_unknown_paths(bridge_url, path, data, status, code):
    url, sender = bridge_url
    answer_status, body = _post(url + path, data)
    assert answer_status == status
    assert body["error"]["code"] == code and body["error"]["message"]
    assert sender.sent == []


def test_http_readiness(bridge_url):
    url, _ = bridge_url
    with urllib.request.urlopen(url + "/-/ready", timeout=5) as response:
        assert response.status == 200
