"""The forecast policy on the real service, time compressed to seconds
(configs/serve_config.test.yaml).

`lite0_autoscale` scales on QPS read from our Prometheus (up 3 / down 0.5 per instance, cooldowns
5 s / 20 s)
and on the Forecaster's published forecast (lead time 30 s, 2 QPS per instance); `lite0_fallback`
points its policy at a Prometheus that does not exist and must scale on Ray's own queue figures.

Replica counts come from Serve itself: the dashboard's REST API (`/api/serve/applications/`), which
answers from the controller's live state: `target_num_replicas` is what the policy asked for and
`replicas` are the ones Serve runs. (Prometheus' `ray_serve_deployment_replica_healthy` lags a
scrape behind and keeps a stopped replica's series until it goes stale, so it cannot show a
scale-down promptly.) Why the policy scaled comes from its own log line in the Serve controller's
log and its `ray_autoscaler_decision_total{reason}` counter.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from tests.integration.monitoring_fixtures import wait_until

AUTOSCALED = "lite0_autoscale"
FALLBACK = "lite0_fallback"
APP = "recognition"
# The Forecaster of the test config reads this file (forecaster.planned_events_file).
PLANNED_EVENTS_FILE = Path("/tmp/recserve-test-planned-events.yaml")

# Deadlines, not sleeps: each wait returns as soon as Serve shows what it waits for.
SCALE_UP_TIMEOUT_S = (
    120  # 30 s rate window + metrics export + scrape + replica start on a loaded 2-core host
)
SCALE_DOWN_TIMEOUT_S = 120  # the rate window drains (30 s), then the 20 s down cooldown
LOAD_QPS = 8.0  # above 3 per instance on 1 instance: the load needs ceil(8 / 3) = 3 instances


def deployment_name(model: str) -> str:
    return f"Recognizer_{model}"


class ServeStatus:
    """Serve's own view of a deployment through the Ray dashboard's REST API (token auth)."""

    def __init__(self, dashboard_url: str, token: str):
        self.url = f"{dashboard_url}/api/serve/applications/"
        self.headers = {"Authorization": f"Bearer {token}"}

    def deployment(self, model: str) -> dict:
        answer = requests.get(self.url, headers=self.headers, timeout=10)
        answer.raise_for_status()
        return answer.json()["applications"][APP]["deployments"][deployment_name(model)]

    def replicas(self, model: str) -> tuple[int, int]:
        """(target replicas, RUNNING replicas)."""
        d = self.deployment(model)
        return d["target_num_replicas"], sum(1 for r in d["replicas"] if r["state"] == "RUNNING")


@pytest.fixture(scope="module")
def serve_status(service_url: str, ray_tmpdir: Path) -> ServeStatus:
    """The dashboard address `serve run` printed when it started Ray, with the cluster's token."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", (ray_tmpdir / "serve_run.log").read_text(errors="replace"))
    found = re.search(r"View the dashboard at (http://[\d.]+:\d+)", log)
    assert found, "serve run did not print the Ray dashboard address"
    token_file = Path.home() / ".ray" / "auth_token"
    assert token_file.is_file(), (
        f"{token_file} missing: serve run starts Ray with RAY_AUTH_MODE=token"
    )
    return ServeStatus(found.group(1), token_file.read_text().strip())


def controller_log_lines(ray_tmpdir: Path, *needles: str) -> list[str]:
    """Messages in the Serve controller's log containing every needle (the policy logs from the
    controller)."""
    lines = []
    for path in (ray_tmpdir / "ray" / "session_latest" / "logs" / "serve").glob("controller_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                message = line
            if all(n in message for n in needles):
                lines.append(message)
    return lines


def decisions(stack, model: str) -> dict[str, float]:
    """ray_autoscaler_decision_total by reason code for one deployment, as Prometheus has it."""
    rows = stack.query(
        f'sum by (reason) (ray_autoscaler_decision_total{{deployment="{deployment_name(model)}"}})'
    )
    return {row["metric"]["reason"]: float(row["value"][1]) for row in rows}


def write_planned_events(events: list[dict]) -> None:
    tmp = PLANNED_EVENTS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(events))
    tmp.replace(PLANNED_EVENTS_FILE)  # the Forecaster never reads half a file


class Load:
    """Requests to one model from a background thread: open loop at `qps`, or `concurrency` closed
    loops."""

    def __init__(
        self,
        service_url: str,
        model: str,
        body: bytes,
        qps: float | None = None,
        concurrency: int = 4,
    ):
        self.url = f"{service_url}/v1/models/{model}/predict"
        self.body, self.qps, self.concurrency = body, qps, concurrency
        self.stop_event = threading.Event()
        self.ok = self.failed = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _send(self, session: requests.Session) -> None:
        try:
            answer = session.post(
                self.url, data=self.body, headers={"Content-Type": "image/jpeg"}, timeout=30
            )
            good = answer.status_code == 200
        except requests.RequestException:
            good = False
        with self._lock:
            if good:
                self.ok += 1
            else:
                self.failed += 1

    def _worker(self, index: int) -> None:
        session = requests.Session()
        if self.qps is None:
            while not self.stop_event.is_set():
                self._send(session)
            return
        # Open loop: each of the workers owns every concurrency-th tick, so slow answers do not
        # lower the rate.
        period = self.concurrency / self.qps
        next_at = time.monotonic() + index / self.qps
        while not self.stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                return
            self._send(session)
            next_at += period

    def __enter__(self) -> "Load":
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=35)


@pytest.fixture(scope="module")
def no_planned_events():
    """Start and end with an empty plan, so only the planned-event test sees a forecast."""
    write_planned_events([])
    yield
    write_planned_events([])


@pytest.fixture(scope="module")
def timeline() -> dict:
    """Seconds measured by the tests, printed at the end (docs/AUTOSCALING.md quotes them)."""
    record: dict = {}
    yield record
    print("\nautoscaling timeline:", json.dumps(record))


def test_rising_load_scales_up_on_qps(
    service_url, serve_status, monitoring_stack, ray_tmpdir, cat_jpeg, no_planned_events, timeline
):
    assert serve_status.replicas(AUTOSCALED) == (1, 1), (
        "lite0_autoscale must start at initial_replicas 1"
    )
    started = time.monotonic()
    with Load(service_url, AUTOSCALED, cat_jpeg, qps=LOAD_QPS) as load:
        target = wait_until(
            lambda: (n := serve_status.replicas(AUTOSCALED)[0]) > 1 and n,
            SCALE_UP_TIMEOUT_S,
            "the policy to raise lite0_autoscale's target above 1",
        )
        timeline["qps_target_up_s"] = round(time.monotonic() - started, 1)
        wait_until(
            lambda: serve_status.replicas(AUTOSCALED)[1] > 1,
            SCALE_UP_TIMEOUT_S,
            "a second RUNNING replica",
        )
        timeline["qps_running_up_s"] = round(time.monotonic() - started, 1)
    timeline["load_ok"], timeline["load_failed"] = load.ok, load.failed
    assert load.ok > 0 and load.failed <= load.ok * 0.05, (
        f"the load itself failed: {load.ok} ok, {load.failed} failed"
    )
    assert 1 < target <= 3  # max_replicas 3

    lines = wait_until(
        lambda: controller_log_lines(
            ray_tmpdir, deployment_name(AUTOSCALED), "QPS=", "scaling up: 1 →"
        ),
        30,
        "the policy's scale-up log line naming QPS",
    )
    assert re.search(r"QPS=\d+ > 3, scaling up: 1 → [23] instances", lines[0]), lines[0]
    codes = wait_until(
        lambda: decisions(monitoring_stack, AUTOSCALED).get("scale_up_threshold"),
        30,
        "ray_autoscaler_decision_total{reason=scale_up_threshold}",
    )
    assert codes >= 1


def test_falling_load_scales_down_after_cooldown(
    service_url, serve_status, monitoring_stack, ray_tmpdir, cat_jpeg, no_planned_events, timeline
):
    if serve_status.replicas(AUTOSCALED)[0] <= 1:
        # Run on its own (without the scale-up test before it): raise the target first, then stop
        # the load.
        with Load(service_url, AUTOSCALED, cat_jpeg, qps=LOAD_QPS):
            wait_until(
                lambda: serve_status.replicas(AUTOSCALED)[0] > 1,
                SCALE_UP_TIMEOUT_S,
                "the policy to raise lite0_autoscale's target above 1",
            )
    started = time.monotonic()  # the load has stopped
    wait_until(
        lambda: serve_status.replicas(AUTOSCALED) == (1, 1),
        SCALE_DOWN_TIMEOUT_S,
        "lite0_autoscale back at 1 target and 1 RUNNING replica",
    )
    timeline["scale_down_s"] = round(time.monotonic() - started, 1)
    lines = controller_log_lines(
        ray_tmpdir, deployment_name(AUTOSCALED), "all signals below thresholds", "scaling down"
    )
    assert lines, "no scale-down log line with its reason"
    assert "QPS=" in lines[-1] and "< 0.5" in lines[-1], lines[-1]
    assert (
        wait_until(
            lambda: decisions(monitoring_stack, AUTOSCALED).get("scale_down_threshold"),
            30,
            "ray_autoscaler_decision_total{reason=scale_down_threshold}",
        )
        >= 1
    )


def test_planned_event_scales_up_before_any_load(
    service_url, serve_status, monitoring_stack, ray_tmpdir, no_planned_events, timeline
):
    wait_until(
        lambda: serve_status.replicas(AUTOSCALED) == (1, 1),
        SCALE_DOWN_TIMEOUT_S,
        "lite0_autoscale at 1 replica",
    )
    now = datetime.now(timezone.utc)
    # The event starts one lead time (30 s) ahead: the forecast at now + lead includes it from the
    # first publish, as a promotion announced in advance would. Publish (1 s), metrics export and
    # scrape (5 s) come on top.
    start = now + timedelta(seconds=30)
    # 6 QPS at 2 QPS per instance (headroom 1.0): ceil(6 / 2) = 3 instances, capped by max_replicas
    # 3.
    write_planned_events(
        [
            {
                "name": "flash-sale",
                "start": start.isoformat(),
                "end": (now + timedelta(seconds=180)).isoformat(),
                "qps": 6,
            }
        ]
    )
    written = time.monotonic()
    try:
        status = wait_until(
            lambda: (lambda s: s if s["forecast_qps"] else None)(
                requests.get(f"{service_url}/v1/autoscaling/forecast", timeout=10).json()["models"][
                    AUTOSCALED
                ]
            ),
            30,
            "the Forecaster to publish the planned event",
        )
        assert status["forecast_source"] == "planned_only"
        assert "planned events only" in status["message"]
        assert status["forecast_qps"] == {"yhat": 6.0, "upper": 6.0}
        assert [e["name"] for e in status["planned_events"]] == ["flash-sale"]

        target = wait_until(
            lambda: (n := serve_status.replicas(AUTOSCALED)[0]) > 1 and n,
            SCALE_UP_TIMEOUT_S,
            "the forecast floor to raise lite0_autoscale's target",
        )
        timeline["planned_target_up_s"] = round(time.monotonic() - written, 1)
        timeline["planned_target_up_before_event_start_s"] = round(
            (start - datetime.now(timezone.utc)).total_seconds(), 1
        )
        assert target == 3
        wait_until(
            lambda: serve_status.replicas(AUTOSCALED)[1] > 1,
            SCALE_UP_TIMEOUT_S,
            "a second RUNNING replica",
        )
        timeline["planned_running_up_s"] = round(time.monotonic() - written, 1)

        # No request was sent to this model during the test: the scale-up came from the plan alone.
        qps = monitoring_stack.query(
            f'sum(rate(ray_model_request_total{{model_name="{AUTOSCALED}"}}[30s]))'
        )
        assert not qps or float(qps[0]["value"][1]) == 0.0
        lines = wait_until(
            lambda: controller_log_lines(
                ray_tmpdir,
                deployment_name(AUTOSCALED),
                "forecast 6 QPS at +30s needs 3 instances",
                "scaling up",
            ),
            30,
            "the forecast-floor log line",
        )
        assert "scaling up: 1 → 3 instances" in lines[-1], lines[-1]
        assert (
            wait_until(
                lambda: decisions(monitoring_stack, AUTOSCALED).get("scale_up_forecast"),
                30,
                "ray_autoscaler_decision_total{reason=scale_up_forecast}",
            )
            >= 1
        )
    finally:
        write_planned_events([])


def test_prometheus_unavailable_falls_back_to_queue_scaling(
    service_url, serve_status, monitoring_stack, ray_tmpdir, cat_jpeg, timeline
):
    assert serve_status.replicas(FALLBACK) == (1, 1)
    started = time.monotonic()
    # 12 closed loops keep about 12 requests ongoing on one replica: above ongoing_per_replica.up =
    # 2.
    with Load(service_url, FALLBACK, cat_jpeg, concurrency=12) as burst:
        wait_until(
            lambda: serve_status.replicas(FALLBACK)[0] == 2,
            SCALE_UP_TIMEOUT_S,
            "lite0_fallback's target at 2",
        )
        timeline["fallback_target_up_s"] = round(time.monotonic() - started, 1)
    timeline["burst_ok"], timeline["burst_failed"] = burst.ok, burst.failed
    assert burst.ok > 0
    wait_until(
        lambda: serve_status.replicas(FALLBACK)[1] == 2,
        SCALE_UP_TIMEOUT_S,
        "a second RUNNING lite0_fallback replica",
    )
    timeline["fallback_running_up_s"] = round(time.monotonic() - started, 1)

    lines = controller_log_lines(
        ray_tmpdir,
        deployment_name(FALLBACK),
        "Prometheus unavailable: queue-based fallback",
        "scaling up: 1 → 2",
    )
    assert lines and "ongoing requests per instance=" in lines[-1], lines
    unavailable = wait_until(
        lambda: monitoring_stack.query(
            f'ray_autoscaler_signal_available{{deployment="{deployment_name(FALLBACK)}",signal="qps"}}'
        ),
        30,
        "ray_autoscaler_signal_available for lite0_fallback",
    )
    assert float(unavailable[0]["value"][1]) == 0.0
    assert (
        wait_until(
            lambda: decisions(monitoring_stack, FALLBACK).get("fallback_scale_up_threshold"),
            30,
            "ray_autoscaler_decision_total{reason=fallback_scale_up_threshold}",
        )
        >= 1
    )
