"""Prophet acting on the live service: backfilled history makes the forecast floor scale ahead of a
daily ramp that has not come yet (configs/serve_config.test.yaml, model `lite0_predictive`).

The test builds three days of request-rate history in which traffic ramps from 0.5 to 12 QPS every
day at the time of day that comes RAMP_IN_S after the test starts, backfills it into the session's
Prometheus (`backfill_trace`, what `recserve backfill` / `recserve up --history` run) and sends only
the base load. The Forecaster (retrying every 10 s while it has too little history) fits Prophet on
the backfilled counters, publishes the forecast at now + 30 s, and the policy must raise the target
before the ramp's time, with a reason naming the forecast. On the way, the Forecaster scores what
it published against the actual (base) rate: the accuracy figures appear in its status and in
Prometheus.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests

from serve_app.autoscaling.history_backfill import backfill_trace
from tests.integration import test_autoscaling_live as live
from tests.integration.monitoring_fixtures import wait_until
from tests.integration.test_autoscaling_live import (
    Load,
    controller_log_lines,
    decisions,
    deployment_name,
)

# Serve's own replica counts (the dashboard API), shared with the autoscaling tests.
serve_status = live.serve_status

MODEL = "lite0_predictive"
BASE_QPS = 0.5
RAMP_QPS = 12.0  # at 2 QPS per instance: ceil(12 / 2) = 6 instances, capped by max_replicas 2
RAMP_IN_S = 300  # the ramp's time of day comes this long after the test starts
RAMP_RISE_S = 300
RAMP_HOLD_S = 3 * 3600
HISTORY_DAYS = 3
STEP_S = 60
# promtool's blocks appear in a running Prometheus at its next block reload (about a minute), then
# the Forecaster's next retry (10 s) fits Prophet (seconds, more on a loaded host).
FIT_TIMEOUT_S = 200


def ramp_trace(path: Path, now: float, ramp_at: float) -> Path:
    """`timestamp,rps` rows every STEP_S up to now: base load, and a ramp at `ramp_at`'s time of
    day on each of the last HISTORY_DAYS days."""
    times = np.arange(now - HISTORY_DAYS * 86400, now - STEP_S, STEP_S)
    since_ramp = (times - ramp_at) % 86400  # seconds since that day's ramp began
    rise = np.clip(since_ramp / RAMP_RISE_S, 0, 1)
    rps = np.where(
        since_ramp < RAMP_RISE_S + RAMP_HOLD_S, BASE_QPS + rise * (RAMP_QPS - BASE_QPS), BASE_QPS
    )
    rows = ["timestamp,rps"] + [f"{t:.0f},{r:.3f}" for t, r in zip(times, rps, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def forecaster_status(service_url: str) -> dict:
    answer = requests.get(f"{service_url}/v1/autoscaling/forecast", timeout=30)
    assert answer.status_code == 200, f"{answer.status_code}: {answer.text}"
    return answer.json()["models"][MODEL]


def polled_status(service_url: str) -> dict:
    """The status, or {} when one poll is answered late (a loaded 2-core host): the wait polls
    again."""
    try:
        return forecaster_status(service_url)
    except (requests.RequestException, AssertionError):
        return {}


@pytest.fixture
def saved_model_removed():
    """The Forecaster saves its fit; the next session must start without history again."""
    yield
    Path("/tmp/recserve-test-forecaster-models", f"{MODEL}.json").unlink(missing_ok=True)


def test_backfilled_history_scales_before_the_ramp(
    service_url, serve_status, monitoring_stack, ray_tmpdir, cat_jpeg, tmp_path, saved_model_removed
):
    # The session may have just started: wait for the Forecaster and the model's replica.
    before = wait_until(lambda: polled_status(service_url), 120, "the Forecaster's status")
    assert before["status"] != "ok", (
        "a Prophet model saved by an earlier session is in use; delete "
        f"/tmp/recserve-test-forecaster-models/{MODEL}.json: {before}"
    )
    wait_until(
        lambda: serve_status.replicas(MODEL) == (1, 1), 180, "lite0_predictive RUNNING at 1 replica"
    )

    started = time.time()
    ramp_at = started + RAMP_IN_S
    trace = ramp_trace(tmp_path / "ramp.csv", started, ramp_at)
    result = backfill_trace(
        trace,
        monitoring_stack.config.prometheus_data_dir,
        ray_tmpdir / "serve_config.yaml",  # the session's config (its ports moved)
        [MODEL],
    )
    assert result.series == 1 and result.end <= started

    with Load(service_url, MODEL, cat_jpeg, qps=BASE_QPS, concurrency=1) as load:
        fitted = wait_until(
            lambda: (s := polled_status(service_url)).get("status") == "ok" and s,
            FIT_TIMEOUT_S,
            "the Forecaster to fit Prophet on the backfilled history",
        )
        assert fitted["forecast_source"] in ("prophet", "prophet+planned"), fitted
        assert "fitted on" in fitted["message"], fitted

        target = wait_until(
            lambda: (n := serve_status.replicas(MODEL)[0]) > 1 and n,
            max(1.0, ramp_at - time.time()),
            "the forecast floor to raise lite0_predictive's target before the ramp",
        )
        scaled_at = time.time()
        assert scaled_at < ramp_at, "the target rose only once the ramp's time had come"
        assert target == 2  # the ramp needs 6, max_replicas is 2

        lines = wait_until(
            lambda: controller_log_lines(
                ray_tmpdir, deployment_name(MODEL), "QPS at +30s needs", "scaling up: 1 →"
            ),
            30,
            "the forecast-floor log line",
        )
        assert f"{deployment_name(MODEL)}: forecast " in lines[0], lines[0]
        assert (
            wait_until(
                lambda: decisions(monitoring_stack, MODEL).get("scale_up_forecast"),
                30,
                "ray_autoscaler_decision_total{reason=scale_up_forecast}",
            )
            >= 1
        )
        # What the Forecaster published, scored against the actual (base) rate. The first points
        # scored may all target times before the base load reached Prometheus (actual rate 0),
        # where MAPE is undefined (None): wait for a score that has one.
        accuracy = wait_until(
            lambda: (
                (a := polled_status(service_url).get("accuracy") or {}).get("mape_pct") is not None
                and a
            ),
            90,
            "the Forecaster to score its published forecasts against a positive actual rate",
        )
        assert accuracy["points"] >= 1 and accuracy["mape_pct"] >= 0
        assert 0.0 <= accuracy["interval_coverage"] <= 1.0
        assert accuracy["under_forecast_minutes"] >= 0
        published = wait_until(
            lambda: monitoring_stack.query(f'ray_forecast_accuracy_points{{model_name="{MODEL}"}}'),
            30,
            "ray_forecast_accuracy_points in Prometheus",
        )
        assert float(published[0]["value"][1]) >= 1

    # Only base load was sent: the QPS thresholds (up 3) never asked for the scale-up.
    assert load.ok > 0 and load.failed == 0, (load.ok, load.failed)
    assert "scale_up_threshold" not in decisions(monitoring_stack, MODEL)
    print(
        f"\nforecast history: backfill {result.samples} samples; target up "
        f"{scaled_at - started:.0f} s after the start, {ramp_at - scaled_at:.0f} s before the "
        f"ramp; accuracy {accuracy}"
    )
