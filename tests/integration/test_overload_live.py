"""Tiered circuit breaking on the running service: one model driven past its capacity sheds with
503 + Retry-After (never another 5xx), its replica stays up, and it recovers by itself.

Only this module sends traffic to `lite0_overload` (configs/serve_config.test.yaml), whose
queue-wait levels are tens of milliseconds: shedding then depends on the queue a burst builds,
not on how fast this machine runs the model. `make test` runs it in a session of its own whose
Serve starts that model alone (RECSERVE_TEST_MODELS=lite0_overload); with every model of the
test config started, as it ran before, it passes too.
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections import Counter

import pytest
import requests

from tests.integration.ray_metrics import scrape

MODEL = "lite0_overload"
DEPLOYMENT = f"Recognizer_{MODEL}"
CLIENTS = 24  # concurrent clients: 24 queued crops in batches of 2 are ~12 batches deep
LOAD_S = 12.0  # how long the burst lasts
EXPORT_TIMEOUT_S = 120  # Ray exports every few seconds; a fresh replica on a busy host is slower


def overload_view(targets: list[str]) -> dict:
    """The model's tier gauge (max over replicas), tier changes by tier, and replica starts."""
    view = {"tier": None, "changes": Counter(), "starts": 0.0}
    for s in scrape(targets):
        if s.name == "ray_model_overload_tier" and s.labels.get("model_name") == MODEL:
            view["tier"] = max(view["tier"] or 0, s.value)
        elif (
            s.name == "ray_model_overload_tier_changes_total"
            and s.labels.get("model_name") == MODEL
        ):
            view["changes"][s.labels["tier"]] += s.value
        elif (
            s.name == "ray_serve_deployment_replica_starts_total"
            and s.labels.get("deployment") == DEPLOYMENT
        ):
            view["starts"] += s.value
    return view


def wait_for(predicate, what: str, timeout_s: float = EXPORT_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def predict(service_url: str, jpeg: bytes) -> requests.Response:
    return requests.post(
        f"{service_url}/v1/models/{MODEL}/predict",
        data=jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )


def burst(service_url: str, jpeg: bytes) -> list[tuple[int, str | None, dict]]:
    """CLIENTS clients sending back to back for LOAD_S seconds; every reply's status, Retry-After
    and body."""
    stop_at = time.monotonic() + LOAD_S

    def client(_: int) -> list[tuple[int, str | None, dict]]:
        replies = []
        while time.monotonic() < stop_at:
            r = predict(service_url, jpeg)
            try:
                body = r.json()
            except ValueError:  # not our JSON reply: kept as text for the assertion message
                body = {"text": r.text[:200]}
            replies.append((r.status_code, r.headers.get("Retry-After"), body))
        return replies

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return [reply for replies in pool.map(client, range(CLIENTS)) for reply in replies]


def test_overload_sheds_then_recovers(service_url, metrics_targets, cat_jpeg):
    assert predict(service_url, cat_jpeg).status_code == 200  # the replica is up and warm
    before = wait_for(
        lambda: (v := overload_view(metrics_targets))["tier"] is not None and v,
        "the tier gauge of a fresh replica",
    )
    assert before["tier"] == 0 and before["starts"] >= 1

    replies = burst(service_url, cat_jpeg)

    statuses = Counter(status for status, _, _ in replies)
    assert set(statuses) <= {200, 503}, statuses  # no 5xx but the shedding 503
    assert statuses[200] > 0, statuses  # admitted requests are still served
    shed = [(ra, body) for status, ra, body in replies if status == 503]
    assert shed, f"no request was shed: {statuses}"
    for retry_after, body in shed:
        assert body.get("error", {}).get("code") == "overloaded", body
        # overload.retry_after_s of the test config (2) at least; a shed request is told its
        # expected queue wait, rounded up, where that is longer.
        wait = re.search(r"expected queue wait ([0-9.]+) s", body["error"]["message"])
        least = float(wait.group(1)) if wait else 0.0
        assert retry_after is not None and int(retry_after) >= max(2, least), (retry_after, body)
    # Shed by the replica's shedding tier (not only by Serve's queue limit), before any work.
    assert any("shedding load" in body["error"]["message"] for _, body in shed), shed[:3]

    wait_for(
        lambda: (
            (v := overload_view(metrics_targets))["changes"]["shedding"]
            > before["changes"]["shedding"]
            and v
        ),
        "a tier change into shedding",
    )
    # Recovery: after the window forgets the burst, two holds (shedding -> reduced -> normal).
    recovered = wait_for(
        lambda: (
            (v := overload_view(metrics_targets))["tier"] == 0
            and v["changes"]["normal"] > before["changes"]["normal"]
            and v
        ),
        "the tier back to normal",
    )
    # Down from shedding one tier at a time: reduced batch was entered on the way.
    assert recovered["changes"]["reduced_batch"] > before["changes"]["reduced_batch"]
    assert recovered["starts"] == before["starts"], "the replica restarted under overload"
    assert predict(service_url, cat_jpeg).status_code == 200
