"""Bridge from Alertmanager's webhook to a DingTalk group robot.

Alertmanager has no DingTalk receiver, so it posts its webhook JSON here and this server sends
the robot a markdown message. A robot with "加签" (signing) security gets `timestamp` and `sign`
query parameters: sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))),
timestamp in milliseconds. Every message carries "recognition-serve" so a robot with keyword
security can use that keyword.

Run: RECSERVE_DINGTALK_WEBHOOK=https://oapi.dingtalk.com/robot/send?access_token=... \\
     RECSERVE_DINGTALK_SECRET=SEC... python -m serve_app.monitoring.alerting.dingtalk --listen
     127.0.0.1:9095
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from serve_app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, error_body

log = logging.getLogger("recserve.dingtalk")

# DingTalk rejects markdown texts much above 20,000 bytes; stay well below.
MAX_TEXT_BYTES = 18_000
MAX_BODY_BYTES = 5 * 1024 * 1024
SEND_TIMEOUT_S = 10
PRODUCT = "recognition-serve"
WRONG_PATH = "POST Alertmanager webhooks to /alert"


def is_json(content_type: str | None) -> bool:
    """Alertmanager posts application/json; a web page can post forms and text/plain to any
    address without asking (no CORS preflight), so nothing else is taken."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def sign(secret: str, timestamp_ms: int) -> str:
    """The robot's `sign` parameter, already URL-encoded."""
    string_to_sign = f"{timestamp_ms}\n{secret}".encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), string_to_sign, digestmod=hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest))


def signed_url(url: str, secret: str | None, timestamp_ms: int) -> str:
    """The robot URL with `timestamp` and `sign` appended when a secret is set."""
    if not secret:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}timestamp={timestamp_ms}&sign={sign(secret, timestamp_ms)}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _alert_block(alert: Any) -> str:
    if not isinstance(alert, dict):
        return f"- (unreadable alert: {_text(alert)[:200]})"
    labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
    annotations = alert.get("annotations") if isinstance(alert.get("annotations"), dict) else {}
    status = _text(alert.get("status") or "firing")
    name = _text(labels.get("alertname") or "alert")
    icon = "✅" if status == "resolved" else "🔥"
    severity = _text(labels.get("severity") or "none")
    lines = [f"#### {icon} {name} ({severity})"]
    if annotations.get("summary"):
        lines.append(f"> {_text(annotations['summary'])}")
    if annotations.get("description"):
        lines.append(f"\n{_text(annotations['description'])}")
    shown = {k: v for k, v in sorted(labels.items()) if k not in ("alertname", "severity")}
    if shown:
        lines.append("\n" + ", ".join(f"{k}=`{_text(v)}`" for k, v in shown.items()))
    times = f"since {_text(alert.get('startsAt'))[:19].replace('T', ' ')} UTC"
    if status == "resolved" and alert.get("endsAt"):
        times += f", resolved {_text(alert['endsAt'])[:19].replace('T', ' ')} UTC"
    lines.append(f"\n{times}")
    if alert.get("generatorURL"):
        lines.append(f"[source]({_text(alert['generatorURL'])})")
    return "\n".join(lines)


def format_message(payload: Any, at_mobiles: list[str] | None = None) -> dict:
    """A DingTalk markdown message for one Alertmanager webhook payload (any JSON: never raises)."""
    payload = payload if isinstance(payload, dict) else {"alerts": []}
    alerts = payload.get("alerts") if isinstance(payload.get("alerts"), list) else []
    status = _text(payload.get("status") or "firing").upper()
    common = payload.get("commonLabels") if isinstance(payload.get("commonLabels"), dict) else {}
    name = _text(
        common.get("alertname") or (f"{len(alerts)} alerts" if len(alerts) != 1 else "alert")
    )
    severity = _text(common.get("severity") or "")
    title = f"{PRODUCT} [{status}:{len(alerts)}] {name}" + (f" ({severity})" if severity else "")

    header = f"### {title}\n"
    blocks = [_alert_block(a) for a in alerts] or ["(the payload held no alerts)"]
    text = header
    for index, block in enumerate(blocks):
        candidate = text + "\n" + block + "\n"
        if len(candidate.encode("utf-8")) > MAX_TEXT_BYTES:
            text += f"\n... and {len(blocks) - index} more alerts, see Alertmanager\n"
            break
        text = candidate
    if payload.get("externalURL"):
        text += f"\n[Alertmanager]({_text(payload['externalURL'])})\n"

    mention = bool(at_mobiles) and status == "FIRING" and severity == "critical"
    if mention:
        # DingTalk only notifies numbers that also appear in the text.
        text += "\n" + " ".join(f"@{m}" for m in at_mobiles or [])
    return {
        "msgtype": "markdown",
        "markdown": {"title": title, "text": text},
        "at": {"atMobiles": list(at_mobiles or []) if mention else [], "isAtAll": False},
    }


def post_json(url: str, body: dict, timeout: float = SEND_TIMEOUT_S) -> dict:
    """POST JSON and return the JSON answer (DingTalk answers {"errcode": 0, "errmsg": "ok"})."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read().decode("utf-8") or "{}")
    return (
        answer
        if isinstance(answer, dict)
        else {"errcode": -1, "errmsg": f"unexpected answer {answer!r}"}
    )


class DingTalkBridge:
    """Turns Alertmanager payloads into signed robot messages; `send` is the network boundary."""

    def __init__(
        self,
        robot_url: str,
        secret: str | None = None,
        at_mobiles: list[str] | None = None,
        send: Callable[[str, dict], dict] = post_json,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if not robot_url.startswith(("http://", "https://")):
            raise ValueError(
                f"DingTalk robot URL {robot_url!r} must be http(s), e.g. "
                "https://oapi.dingtalk.com/robot/send?access_token=..."
            )
        self.robot_url = robot_url
        self.secret = secret or None
        self.at_mobiles = list(at_mobiles or [])
        self.send = send
        self.clock_ms = clock_ms

    def deliver(self, payload: Any) -> tuple[int, dict]:
        """Send one payload; returns (HTTP status for Alertmanager, details)."""
        message = format_message(payload, self.at_mobiles)
        url = signed_url(self.robot_url, self.secret, self.clock_ms())
        try:
            answer = self.send(url, message)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("DingTalk unreachable: %s", exc)
            return 502, error_body("dingtalk_unreachable", f"DingTalk unreachable: {exc}")
        if answer.get("errcode") not in (0, "0"):
            log.warning("DingTalk refused the message: %s", answer)
            return 502, error_body(
                "dingtalk_refused",
                f"DingTalk refused the message: errcode {answer.get('errcode')}, "
                f"errmsg {answer.get('errmsg')!r}",
            )
        return 200, {"ok": True}


def make_handler(bridge: DingTalkBridge) -> type[BaseHTTPRequestHandler]:
    """An HTTP handler class bound to `bridge`: POST /alert, GET /-/ready and /-/healthy."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "recserve-dingtalk/1"

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path in ("/-/ready", "/-/healthy"):
                self._reply(200, {"ok": True})
            else:
                self._reply(404, error_body("not_found", WRONG_PATH))

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/alert":
                self._reply(404, error_body("not_found", WRONG_PATH))
                return
            if not is_json(self.headers.get("Content-Type")):
                self._reply(
                    415,
                    error_body(
                        UnsupportedMediaType.code, "the body must be JSON (application/json)"
                    ),
                )
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._reply(
                    413, error_body(PayloadTooLarge.code, f"body must be 0..{MAX_BODY_BYTES} bytes")
                )
                return
            try:
                payload = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._reply(400, error_body(BadRequest.code, f"body is not JSON: {exc}"))
                return
            status, body = bridge.deliver(payload)
            self._reply(status, body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s " + fmt, self.address_string(), *args)

    return Handler


def serve(bridge: DingTalkBridge, host: str, port: int) -> ThreadingHTTPServer:
    """Bind the bridge's HTTP server (call serve_forever on it)."""
    return ThreadingHTTPServer((host, port), make_handler(bridge))


def bridge_from_env(environ: dict[str, str] | os._Environ = os.environ) -> DingTalkBridge:
    """The bridge configured by RECSERVE_DINGTALK_WEBHOOK / _SECRET / _AT_MOBILES."""
    url = environ.get("RECSERVE_DINGTALK_WEBHOOK", "")
    if not url:
        raise SystemExit(
            "set RECSERVE_DINGTALK_WEBHOOK to the robot URL "
            "(https://oapi.dingtalk.com/robot/send?access_token=...)"
        )
    mobiles = [
        m.strip() for m in environ.get("RECSERVE_DINGTALK_AT_MOBILES", "").split(",") if m.strip()
    ]
    return DingTalkBridge(url, environ.get("RECSERVE_DINGTALK_SECRET") or None, mobiles)


def main(argv: list[str] | None = None) -> int:
    """Run the bridge until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.monitoring.alerting.dingtalk", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:9095", help="host:port to listen on (default %(default)s)"
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen {args.listen!r} must be host:port, e.g. 127.0.0.1:9095")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = serve(bridge_from_env(), host, int(port))
    log.info("DingTalk bridge on http://%s:%s/alert", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
