"""Metrics and model quality, checked on the running service through Ray's real metrics endpoints.

Only this module sends traffic to `lite0_canary` (configs/serve_config.test.yaml), so its counters
move by exactly what is sent here.
"""

import time
from collections import defaultdict

import pytest
import requests

from tests.integration.ray_metrics import scrape

MODEL = "lite0_canary"
EXPORT_TIMEOUT_S = 90  # Ray's metrics agent exports every few seconds


def request_counts(targets) -> dict:
    counts = defaultdict(float)
    for s in scrape(targets):
        if s.name == "ray_model_request_total" and s.labels.get("model_name") == MODEL:
            counts[s.labels["status"]] += s.value
    return dict(counts)


def wait_for(predicate, what: str):
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}")


def predict(service_url, jpeg, **params):
    return requests.post(
        f"{service_url}/v1/models/{MODEL}/predict",
        data=jpeg,
        params=params,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )


@pytest.fixture(scope="module")
def traffic(service_url, metrics_targets, cat_jpeg, coffee_jpeg):
    """Known traffic: 6 successes and 3 client errors against the canary model."""
    before = request_counts(metrics_targets)
    ok = [predict(service_url, img) for img in (cat_jpeg, coffee_jpeg) * 3]
    bad = [
        predict(service_url, b"not an image"),
        predict(service_url, cat_jpeg, top_k=0),
        predict(service_url, b""),
    ]
    assert [r.status_code for r in ok] == [200] * 6
    assert [r.status_code for r in bad] == [415, 422, 400]
    return before, ok


def test_request_counter_moves_by_exactly_what_was_sent(traffic, metrics_targets):
    before, _ = traffic
    expected = {
        "success": before.get("success", 0) + 6,
        "client_error": before.get("client_error", 0) + 3,
    }

    def settled():
        now = request_counts(metrics_targets)
        return now if all(now.get(k, 0) == v for k, v in expected.items()) else None

    now = wait_for(settled, f"ray_model_request_total to reach {expected}")
    assert now.get("server_error", 0) == before.get("server_error", 0)
    assert now.get("rejected", 0) == before.get("rejected", 0)


def test_histograms_and_stage_timings_have_counts(traffic, metrics_targets):
    def histograms():
        found = defaultdict(float)
        for s in scrape(metrics_targets):
            if s.labels.get("model_name") != MODEL or not s.name.endswith("_count"):
                continue
            key = (
                s.name
                if s.name != "ray_model_stage_seconds_count"
                else f"stage:{s.labels['stage']}"
            )
            found[key] += s.value
        wanted = {
            "ray_model_latency_seconds_count",
            "ray_model_batch_size_count",
            "ray_model_images_per_request_count",
            "stage:decode",
            "stage:preprocess",
            "stage:queue_wait",
            "stage:inference",
            "stage:postprocess",
        }
        return found if wanted <= {k for k, v in found.items() if v > 0} else None

    found = wait_for(histograms, "latency, batch-size and stage histograms")
    assert found["ray_model_latency_seconds_count"] >= 6  # successes only
    assert found["stage:decode"] >= 6


def test_feedback_through_two_ingress_replicas_gives_hand_computed_quality(
    service_url, metrics_targets, cat_jpeg, coffee_jpeg
):
    # 8 predictions (4 cats, 4 espressos); truth: every espresso right, two cats right and two
    # wrong.
    preds = []
    for img in (cat_jpeg, coffee_jpeg) * 4:
        body = predict(service_url, img).json()
        preds.append((body["request_id"], body["predictions"][0]["top_k"][0]["class_id"]))
    cat_pred = preds[0][1]
    assert all(p == cat_pred for _, p in preds[0::2]) and all(p == 967 for _, p in preds[1::2])
    wrong = 281 if cat_pred != 281 else 282
    truths = [cat_pred, 967, cat_pred, 967, wrong, 967, wrong, 967]
    items = [{"request_id": rid, "label": t} for (rid, _), t in zip(preds, truths, strict=True)]
    # Half sent one by one, half in one batch: requests spread over both ingress replicas.
    singles = [
        requests.post(f"{service_url}/v1/feedback", json=item, timeout=30) for item in items[:4]
    ]
    assert [r.status_code for r in singles] == [200] * 4 and all(
        r.json()["status"] == "joined" for r in singles
    )
    batch = requests.post(
        f"{service_url}/v1/feedback", json={"items": items[4:]}, timeout=30
    ).json()
    assert batch["counts"]["joined"] == 4 and batch["not_joined"] == []

    # By hand. Confusion (truth, predicted): (c,c) x2, (e,e) x4, (w,c) x2 with c = cat_pred, e =
    # 967, w = wrong. accuracy = 6/8 = 0.75 present classes {c, e, w}: c: tp 2, fp 2, fn 0 -> p 0.5,
    # r 1, f1 2*0.5*1/1.5 = 0.6667 e: tp 4 -> p 1, r 1, f1 1;   w: tp 0, fn 2 -> p 0, r 0, f1 0
    # macro p = 1.5/3 = 0.5, macro r = 2/3 = 0.6667, macro f1 = 1.6667/3 = 0.5556
    quality = requests.get(f"{service_url}/v1/models/{MODEL}/quality", timeout=30).json()
    window = quality["versions"]["2"]["windows"]["last_100"]
    assert window["labelled"] == 8
    assert window["accuracy"] == pytest.approx(0.75)
    assert window["precision"] == pytest.approx(0.5)
    assert window["recall"] == pytest.approx(2 / 3)
    assert window["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)

    # The same numbers reach Prometheus as gauges.
    def gauges():
        values = {
            s.name: s.value
            for s in scrape(metrics_targets)
            if s.labels.get("model_name") == MODEL and s.labels.get("window") == "last_100"
        }
        return values if values.get("ray_model_accuracy") == pytest.approx(0.75) else None

    values = wait_for(gauges, "ray_model_accuracy gauge = 0.75")
    assert values["ray_model_f1"] == pytest.approx((2 / 3 + 1) / 3)

    # Unknown ids and unknown labels are answered, counted, never dropped silently.
    r = requests.post(
        f"{service_url}/v1/feedback", json={"request_id": "never-issued", "label": 1}, timeout=30
    )
    assert r.status_code == 404 and r.json()["status"] == "unknown_id"
    r = requests.post(
        f"{service_url}/v1/feedback",
        json={"request_id": preds[0][0], "label": "not a class"},
        timeout=30,
    )
    assert r.status_code == 422


def test_ingress_ran_on_two_replicas(traffic, metrics_targets):
    replicas = {
        s.labels.get("replica")
        for s in scrape(metrics_targets)
        if s.name == "ray_model_request_total" and s.labels.get("deployment") == "Ingress"
    }
    assert len(replicas) == 2, replicas
