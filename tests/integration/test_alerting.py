"""End to end: our Prometheus scrapes the running service, a rule fires, Alertmanager delivers it to
a webhook."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
from monitoring_fixtures import (
    TEST_ALERT,
    TEST_MODEL,
    alertmanager_alerts,
    post_alerts,
    wait_until,
)

SCRAPE_TIMEOUT_S = 90  # Ray exports every few seconds, Prometheus scrapes every 5 s
ALERT_TIMEOUT_S = 120


def predict(service_url: str, jpeg: bytes) -> int:
    response = requests.post(
        f"{service_url}/v1/models/{TEST_MODEL}/predict",
        data=jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    return response.status_code


def test_prometheus_scrapes_every_ray_node(monitoring_stack, ray_tmpdir: Path):
    groups = json.loads(
        (Path(ray_tmpdir) / "ray" / "prom_metrics_service_discovery.json").read_text()
    )
    targets = {t for g in groups for t in g["targets"]}

    def all_up():
        up = monitoring_stack.query('up{job="ray"}')
        return {s["metric"]["instance"] for s in up if s["value"][1] == "1"} >= targets and up

    wait_until(
        all_up, SCRAPE_TIMEOUT_S, f"every Ray metrics endpoint {sorted(targets)} up in Prometheus"
    )


def test_alert_reaches_the_webhook_receiver(monitoring_stack, alert_sink, service_url, cat_jpeg):
    assert [predict(service_url, cat_jpeg) for _ in range(3)] == [200, 200, 200]

    def test_alert_firing(payload: dict) -> bool:
        return payload["status"] == "firing" and any(
            a["labels"]["alertname"] == TEST_ALERT for a in payload["alerts"]
        )

    payload = alert_sink.wait_for(test_alert_firing, ALERT_TIMEOUT_S, f"{TEST_ALERT} firing")
    # Routed by severity: the rule says critical.
    assert payload["receiver"] == "critical"
    assert payload["externalURL"] == monitoring_stack.alertmanager_url
    assert payload["version"] == "4"
    (alert,) = [a for a in payload["alerts"] if a["labels"]["alertname"] == TEST_ALERT]
    assert alert["labels"]["model_name"] == TEST_MODEL
    assert alert["labels"]["severity"] == "critical"
    # The description carries the value the rule saw: at least one request, and (a scrape may land
    # between our requests) never more than Prometheus counts now.
    count = float(alert["annotations"]["description"].split()[0])
    now_counted = monitoring_stack.query(
        f'sum(ray_model_request_total{{model_name="{TEST_MODEL}", status="success"}})'
    )
    assert 1 <= count <= float(now_counted[0]["value"][1]) and count == int(count), alert[
        "annotations"
    ]
    assert alert["generatorURL"].startswith(monitoring_stack.prometheus_url)


def test_recording_rules_see_the_live_service(monitoring_stack, service_url, cat_jpeg):
    def with_traffic(expr: str):
        # A request per probe: a rate needs increases after Prometheus first saw the counter.
        assert predict(service_url, cat_jpeg) == 200
        return monitoring_stack.query(expr)

    rate = wait_until(
        lambda: with_traffic(f'model_name:model_requests:rate5m{{model_name="{TEST_MODEL}"}} > 0'),
        SCRAPE_TIMEOUT_S,
        "a request rate from the recording rules",
    )
    assert float(rate[0]["value"][1]) > 0
    p99 = wait_until(
        lambda: with_traffic(
            f'model_name:model_latency_seconds:p99_5m{{model_name="{TEST_MODEL}"}} > 0'
        ),
        SCRAPE_TIMEOUT_S,
        "p99 latency from the recording rules",
    )
    assert float(p99[0]["value"][1]) < 60  # seconds: a real latency, not a unit mix-up
    replicas = wait_until(
        lambda: monitoring_stack.query("application_deployment:serve_replicas_healthy:sum > 0"),
        SCRAPE_TIMEOUT_S,
        "healthy replica counts from Ray Serve's metrics",
    )
    assert all(s["metric"].get("deployment") for s in replicas), replicas


def test_ray_serve_metrics_the_rules_rely_on_exist_live(monitoring_stack, service_url, cat_jpeg):
    """The alert rules read Ray Serve's own series: names and labels must be what Ray exports."""
    assert predict(service_url, cat_jpeg) == 200
    status = wait_until(
        lambda: monitoring_stack.query("ray_serve_deployment_status"),
        SCRAPE_TIMEOUT_S,
        "deployment status",
    )
    assert {"application", "deployment"} <= set(status[0]["metric"])
    # ReplicasIdleOffPeak joins health and request series on (application, deployment, replica).
    healthy = wait_until(
        lambda: monitoring_stack.query("ray_serve_deployment_replica_healthy == 1"),
        SCRAPE_TIMEOUT_S,
        "replica health",
    )
    served = wait_until(
        lambda: monitoring_stack.query("ray_serve_deployment_request_counter_total"),
        SCRAPE_TIMEOUT_S,
        "replica requests",
    )

    def key(s):
        return (
            s["metric"].get("application"),
            s["metric"].get("deployment"),
            s["metric"].get("replica"),
        )  # noqa: E731

    assert {key(s) for s in served} & {key(s) for s in healthy}, (healthy[:2], served[:2])
    # A healthy service raises none of the availability alerts.
    firing = monitoring_stack.query('ALERTS{alertstate="firing", family="availability"}')
    assert firing == []


def test_critical_silences_the_warning_of_the_same_family_and_model(monitoring_stack, alert_sink):
    now = datetime.now(timezone.utc)

    def alert(name: str, severity: str, model: str) -> dict:
        return {
            "labels": {
                "alertname": name,
                "severity": severity,
                "family": "latency",
                "model_name": model,
            },
            "annotations": {"summary": f"{name} {severity}"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }

    post_alerts(
        monitoring_stack,
        [
            alert("InhibitionTestCritical", "critical", "inhibition-model"),
            alert("InhibitionTestWarning", "warning", "inhibition-model"),
            alert("InhibitionTestWarning", "warning", "other-model"),
        ],
    )

    def states():
        found = {}
        for a in alertmanager_alerts(monitoring_stack, filter='alertname=~"InhibitionTest.*"'):
            found[(a["labels"]["alertname"], a["labels"]["model_name"])] = a["status"]
        return found if len(found) == 3 else None

    found = wait_until(states, 30, "the three posted alerts in Alertmanager")
    assert found[("InhibitionTestWarning", "inhibition-model")]["state"] == "suppressed"
    assert found[("InhibitionTestWarning", "inhibition-model")]["inhibitedBy"]
    assert found[("InhibitionTestCritical", "inhibition-model")]["state"] == "active"
    assert found[("InhibitionTestWarning", "other-model")]["state"] == "active"
    # The warning of the other model is delivered, through the warning route.
    payload = alert_sink.wait_for(
        lambda p: any(
            a["labels"]["alertname"] == "InhibitionTestWarning"
            and a["labels"]["model_name"] == "other-model"
            for a in p["alerts"]
        ),
        60,
        "the uninhibited warning",
    )
    assert payload["receiver"] == "warning"
