"""The Ray adapter of the policy, `ForecastPolicy`, with Ray's real context, Ray's own wrapper and
Serve's way of loading it from the YAML's import path."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from serve_app.autoscaling.deployment_policy import POLICY_FUNCTION
from serve_app.autoscaling.ray_policy import STATE_KEY, ForecastPolicy
from tests.unit.test_policy import MONDAY_10, PEAK, PREDICTIVE


def context(target=1, running=None, ongoing=0.0, state=None, now=MONDAY_10, lo=1, hi=10):
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID(name="recognizer", app_name="default"),
        deployment_name="recognizer",
        app_name="default",
        current_num_replicas=target if running is None else running,
        target_num_replicas=target,
        running_replicas=[],
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics={},
        capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi,
        policy_state=state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=AutoscalingConfig(
            min_replicas=lo, max_replicas=hi, upscale_delay_s=0, downscale_delay_s=0
        ),
    )


class PrometheusStub(BaseHTTPRequestHandler):
    """A real HTTP server speaking the Prometheus instant-query API with fixed values per query."""

    values: dict[str, float] = {}

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query)["query"][0]
        result = (
            []
            if query not in self.values
            else [{"metric": {}, "value": [MONDAY_10, str(self.values[query])]}]
        )
        body = json.dumps(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrometheusStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def wait_for_cache(policy: ForecastPolicy) -> dict:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        values = policy.read_prometheus()
        if values is not None:
            return values
        time.sleep(0.05)
    raise AssertionError("the policy never read Prometheus")


def test_adapter_reads_prometheus_and_decides(prometheus):
    kwargs = {
        "deployment": "recognizer",
        "model_name": "m",
        "prometheus_address": f"127.0.0.1:{prometheus.server_port}",
        "fetch_interval_s": 0.1,
        "thresholds": {"qps": {"up": 100, "down": 20}},
    }
    policy = ForecastPolicy(**kwargs)
    PrometheusStub.values = {policy.queries["qps"]: 132.0, policy.queries["p99_ms"]: 240.0}
    assert wait_for_cache(policy) == {"qps": 132.0, "p99_ms": 240.0}
    replicas, state = policy(context(target=1, state={"__ray_internal": 7}))
    assert replicas == 3
    assert state["__ray_internal"] == 7  # Ray's own keys survive
    assert state[STATE_KEY]["last_scale_up_s"] == MONDAY_10


def test_adapter_without_prometheus_falls_back_to_queue(monkeypatch):
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    policy = ForecastPolicy(deployment="recognizer", model_name="m")
    # 10 each > 4 -> max(2 + 2, ceil(20 / (0.8 * 4)) = ceil(6.25) = 7): lands at target_fill.
    replicas, state = policy(context(target=2, ongoing=20.0))
    assert replicas == 7
    assert state[STATE_KEY]["last_code"] == "fallback_scale_up_threshold"


def test_adapter_state_travels_in_the_dict_not_on_self(monkeypatch):
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    policy = ForecastPolicy(deployment="recognizer", model_name="m")
    _, state = policy(context(target=2, ongoing=20.0))
    # Same instance, a fresh (empty) state: no memory of the scale-up, so no cooldown.
    # 4.8 each > 4: max(5 + 2, ceil(24 / (0.8 * 4)) = ceil(7.5) = 8).
    assert policy(context(target=5, ongoing=24.0, now=MONDAY_10 + 1))[0] == 8
    # With the returned state the up cooldown applies.
    assert policy(context(target=5, ongoing=24.0, state=state, now=MONDAY_10 + 1))[0] == 5


def test_adapter_never_raises_into_the_controller(monkeypatch):
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)

    def broken() -> float:
        raise RuntimeError("metrics store gone")

    policy = ForecastPolicy(deployment="recognizer", model_name="m")
    replicas, state = policy(context(target=4, ongoing=broken))
    assert replicas == 4
    assert state[STATE_KEY].get("last_code") is None  # no decision was made, nothing invented


def test_adapter_with_invalid_kwargs_holds_and_says_why(caplog):
    policy = ForecastPolicy(model_name="m", thresholds={"qps": {"up": 10, "down": 50}})
    assert policy.config_error and "down (50) must not exceed up (10)" in policy.config_error
    assert policy(context(target=3, ongoing=100.0))[0] == 3


def test_adapter_without_a_model_name_holds_and_says_why():
    """Outside the application builder nothing fills model_name: the policy must not guess one."""
    policy = ForecastPolicy(deployment="recognizer")
    assert "model_name is empty" in policy.config_error
    replicas, state = policy(context(target=3, ongoing=100.0))  # 33 each: far above any threshold
    assert replicas == 3
    assert state[STATE_KEY] == {}  # no decision was made, nothing remembered


def test_adapter_inside_rays_own_wrapper(monkeypatch):
    """The controller wraps the policy with Ray's scaling factors, delays and state merge: it must
    survive that."""
    from ray.serve.autoscaling_policy import _apply_autoscaling_config

    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    wrapped = _apply_autoscaling_config(ForecastPolicy(deployment="recognizer", model_name="m"))
    replicas, state = wrapped(context(target=2, ongoing=20.0))
    assert replicas == 7  # max(2 + 2, ceil(20 / (0.8 * 4)) = 7)
    assert STATE_KEY in state


def test_serve_loads_the_policy_from_its_import_path():
    """Serve cloudpickles `policy_function` and instantiates the class with policy_kwargs in the
    controller."""
    from ray import cloudpickle
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingPolicy

    kwargs = {
        "deployment": "recognizer",
        "model_name": "m",
        "windows": [PEAK],
        "predictive": PREDICTIVE,
    }
    config = AutoscalingPolicy(policy_function=POLICY_FUNCTION, policy_kwargs=kwargs)
    assert cloudpickle.loads(config.get_serialized_policy_def()) is ForecastPolicy
    policy = _resolve_policy_callable(config)
    assert policy.config_error is None and policy.rules.windows[0].name == "peak-hours"


def test_adapter_warns_when_the_scale_event_budget_holds(monkeypatch, caplog):
    monkeypatch.delenv("RAY_PROMETHEUS_HOST", raising=False)
    policy = ForecastPolicy(deployment="recognizer", model_name="m", max_scale_events_per_hour=1)
    # One change a minute ago spent the hour's budget: an idle fleet of 4 would scale down; holds.
    spent = {STATE_KEY: {"scale_events": [MONDAY_10 - 60]}}
    with caplog.at_level("WARNING", logger="ray.serve"):
        replicas, state = policy(context(target=4, ongoing=0.0, state=spent))
    assert replicas == 4 and state[STATE_KEY]["last_code"] == "hold_event_budget"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("scale-event budget (max_scale_events_per_hour=1) is spent" in m for m in warned)
    # The state still remembers the spent event, so the next period holds too.
    assert state[STATE_KEY]["scale_events"] == [MONDAY_10 - 60]
