"""/dashboard in headless Chromium: after real traffic the page draws non-empty charts from our
Prometheus.

Set RECSERVE_UPDATE_SCREENSHOTS=1 to also write the screenshot to docs/img/dashboard.png (README).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from monitoring_fixtures import TEST_MODEL, wait_until
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "img" / "dashboard.png"
CHROMIUM_TIMEOUT_S = 120
DATA_TIMEOUT_S = 120
# Panels that must show data once the service has served and labelled requests (GPU panels may be
# empty: no GPU here; forecast and autoscaler panels need the forecaster and the custom policy).
MUST_DRAW = [
    "accuracy",
    "latency",
    "qps_latency",
    "node_latency",
    "requests_by_status",
    "error_ratio",
    "replicas",
    "replica_hours",
]
CAT_LABEL = (
    281  # tabby, what the cat photo shows; the model's top-1 for it is Egyptian cat (285): a miss
)
ESPRESSO_LABEL = 967  # the coffee photo: the model's top-1, a hit
FIRST_SERIES_RGB = (0x33, 0x66, 0xCC)  # the first colour of dashboard.js


def chromium() -> list[str]:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("chromium is not installed: apt-get install -y chromium (make deps)")
    return [
        path,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=20000",
    ]


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        chromium() + [f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
    )


def panel_states(dom: str) -> dict[str, dict]:
    """data-panel -> {state, series, points} from the page's DOM after its first refresh."""
    panels = {}
    for tag in re.findall(r'<div class="panel"[^>]*>', dom):
        attrs = dict(re.findall(r'([a-z-]+)="([^"]*)"', tag))
        panels[attrs["data-panel"]] = {
            "state": attrs.get("data-state"),
            "series": int(attrs.get("data-series", 0)),
            "points": int(attrs.get("data-points", 0)),
        }
    return panels


@pytest.fixture(scope="module")
def traffic_with_feedback(monitoring_stack, service_url, cat_jpeg, coffee_jpeg):
    """Predictions of the cat and coffee photos, most labelled, until Prometheus has every number
    the page draws.

    The coffee photo is recognised and the cat photo is not (by its true label), so the quality
    panels show an accuracy between 0 and 1 rather than a flat line at either end.
    """
    sent = 0
    photos = [(coffee_jpeg, ESPRESSO_LABEL), (coffee_jpeg, ESPRESSO_LABEL), (cat_jpeg, CAT_LABEL)]

    def predict_and_label() -> None:
        nonlocal sent
        photo, label = photos[sent % len(photos)]
        response = requests.post(
            f"{service_url}/v1/models/{TEST_MODEL}/predict",
            data=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        if sent % 4 != 3:  # a share of predictions never gets a label, as in production
            feedback = requests.post(
                f"{service_url}/v1/feedback",
                json={"request_id": response.json()["request_id"], "label": label},
                timeout=30,
            )
            assert feedback.status_code == 200, feedback.text
        sent += 1

    # Traffic keeps flowing while we wait: a rate needs increases after Prometheus first saw the
    # counter.
    for expr, what in [
        (f'model_name:model_requests:rate1m{{model_name="{TEST_MODEL}"}} > 0', "request rate"),
        (
            f'model_name:model_latency_seconds:p99_1m{{model_name="{TEST_MODEL}"}} > 0',
            "p99 latency",
        ),
        (f'ray_model_accuracy{{model_name="{TEST_MODEL}"}} >= 0', "accuracy from feedback"),
        ("application_deployment:serve_replicas_healthy:sum", "replica counts"),
    ]:
        wait_until(
            lambda expr=expr: predict_and_label() or monitoring_stack.query(expr),
            DATA_TIMEOUT_S,
            f"{what} in Prometheus ({expr})",
        )
    # Half a minute of traffic in all (one request a second), so the charts hold lines of several
    # scrapes (every 5 s), not single points.
    wait_until(lambda: predict_and_label() or sent >= 30, DATA_TIMEOUT_S, "30 requests sent")


def test_dashboard_page_draws_charts_after_traffic(traffic_with_feedback, service_url, tmp_path):
    url = f"{service_url}/dashboard?range=300"
    dom = run_chromium(["--dump-dom", url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<body[^>]*data-refreshed="[1-9]', dom.stdout), (
        "the page never finished a refresh"
    )
    panels = panel_states(dom.stdout)
    assert set(MUST_DRAW) <= set(panels), sorted(panels)
    errors = {name: p for name, p in panels.items() if p["state"] not in ("ok", "empty")}
    assert errors == {}, "panels failed to load (is RECSERVE_PROMETHEUS_URL set for the service?)"
    blank = {
        name: panels[name]
        for name in MUST_DRAW
        if panels[name]["state"] != "ok" or panels[name]["points"] == 0
    }
    assert blank == {}, "these panels drew nothing after traffic"

    shot = tmp_path / "dashboard.png"
    result = run_chromium(
        [f"--screenshot={shot}", "--window-size=1400,2000", url], tmp_path / "profile-shot"
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2000)
    # Lines in the first series colour prove charts were drawn, not just empty frames.
    pixels = np.asarray(image, dtype=np.int16)
    drawn = int(
        (np.abs(pixels - np.array(FIRST_SERIES_RGB, dtype=np.int16)) <= 24).all(axis=-1).sum()
    )
    assert drawn > 200, f"only {drawn} pixels of chart lines in the screenshot"
    if os.environ.get("RECSERVE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
