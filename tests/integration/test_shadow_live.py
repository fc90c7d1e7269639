"""Shadow testing on the running service: the test config sends half of the default model's
requests also to its INT8 variant (lite0_int8). The report must match what was sent, and agree
with what both models answer when asked directly; feedback must score the candidate too."""

import time

import pytest
import requests

from tests.conftest import ESPRESSO

MODEL, CANDIDATE, FRACTION = "efficientnet_lite0", "lite0_int8", 0.5
SENT = 30
LABELLED = 10
SETTLE_TIMEOUT_S = 90


def report(service_url: str) -> dict:
    r = requests.get(f"{service_url}/v1/models/{MODEL}/shadow", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def seen(rep: dict) -> int:
    """Sampled requests the report accounts for: compared, dropped or failed."""
    return rep["requests"] + rep["dropped"] + rep["errors"]


def settled(service_url: str, quiet_s: float = 4.0) -> dict:
    """The report once it has not moved for `quiet_s` (shadow calls run after the answers)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last, since = report(service_url), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = report(service_url)
        if seen(now) != seen(last):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    pytest.fail(f"shadow report still moving after {SETTLE_TIMEOUT_S}s: {last}")


def predict(service_url: str, model: str, image: bytes) -> dict:
    r = requests.post(
        f"{service_url}/v1/models/{model}/predict",
        data=image,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def sums(rep: dict) -> tuple[int, float, float]:
    n = rep["images"]
    return n, (rep["top1_agreement"] or 0.0) * n, (rep["top5_overlap"] or 0.0) * n


def joined(service_url: str, model: str) -> int:
    r = requests.get(f"{service_url}/v1/models/{model}/quality", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["feedback"]["joined"]


def test_shadow_report_matches_what_was_sent_and_both_models_answers(service_url, coffee_jpeg):
    before = settled(service_url)
    assert (before["model"], before["shadow_model"]) == (MODEL, CANDIDATE)
    for _ in range(SENT):
        predict(service_url, MODEL, coffee_jpeg)
    after = settled(service_url)

    # Each request is sampled with probability 0.5: 5 standard deviations either side.
    sampled = seen(after) - seen(before)
    bound = 5 * (SENT * FRACTION * (1 - FRACTION)) ** 0.5
    assert abs(sampled - SENT * FRACTION) <= bound, (sampled, after)
    assert after["errors"] == before["errors"]

    # What each model answers for this photo when asked directly.
    direct = [
        [p["class_id"] for p in predict(service_url, m, coffee_jpeg)["predictions"][0]["top_k"]]
        for m in (MODEL, CANDIDATE)
    ]
    want_top1 = float(direct[0][0] == direct[1][0])
    want_overlap = len(set(direct[0]) & set(direct[1])) / 5
    n0, agree0, overlap0 = sums(before)
    n1, agree1, overlap1 = sums(after)
    compared = n1 - n0
    assert compared == after["requests"] - before["requests"] >= 1  # one image per request
    assert 0.0 <= after["top1_agreement"] <= 1.0 and 0.0 <= after["top5_overlap"] <= 1.0
    assert (agree1 - agree0) / compared == pytest.approx(want_top1, abs=1e-6)
    # One class at the tail of the top-5 may trade places with batch composition.
    assert (overlap1 - overlap0) / compared == pytest.approx(want_overlap, abs=0.2 + 1e-6)
    for role in ("primary", "shadow"):
        latency = after["latency"][role]
        assert 0 < latency["p50_ms"] <= latency["p99_ms"], after

    # Labels for the primary's answers also label the candidate's answers to the same requests: a
    # few fresh requests, so the test config's small quality store (50 images) still holds them.
    start = settled(service_url)
    joined_before = joined(service_url, CANDIDATE)
    ids = [predict(service_url, MODEL, coffee_jpeg)["request_id"] for _ in range(LABELLED)]
    compared = settled(service_url)["images"] - start["images"]
    items = [{"request_id": i, "label": ESPRESSO} for i in ids]
    r = requests.post(f"{service_url}/v1/feedback", json={"items": items}, timeout=30)
    assert r.status_code == 200 and r.json()["counts"]["joined"] == LABELLED, r.text
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while joined(service_url, CANDIDATE) - joined_before < compared:
        assert time.monotonic() < deadline, "the candidate's answers were not labelled"
        time.sleep(1)
    assert joined(service_url, CANDIDATE) - joined_before == compared


def test_a_model_without_shadow_says_so(service_url):
    r = requests.get(f"{service_url}/v1/models/lite0_canary/shadow", timeout=30)
    assert r.status_code == 422 and "no shadow" in r.json()["error"]["message"]


def test_the_candidate_runs_int8_on_onnxruntime(service_url):
    models = requests.get(f"{service_url}/v1/models", timeout=30).json()["models"]
    info = next(m for m in models if m["name"] == CANDIDATE)
    assert (info["precision"], info["runtime"], info["device"]) == ("int8", "onnxruntime", "cpu")
