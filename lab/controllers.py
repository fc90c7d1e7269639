"""The scaling strategies the simulator runs in its loop, inside Ray Serve's own control step.

`ray_control_step` does on the simulated clock what Serve's controller does with a policy each
period; `RayDefaultController` runs Ray's default queue-length policy through it and
`ForecastPolicyController` runs our production `ForecastPolicy`, with the simulator standing in for
Prometheus.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from lab.simulator import Observation, SimConfig
from serve_app.autoscaling.ray_policy import STATE_KEY, ForecastPolicy

# now -> (forecast upper bound at now + lead time, fit time, yhat at now + lead time)
ForecastLookup = Callable[[float], tuple[float | None, float | None, float | None]]


def autoscaling_context(
    obs: Observation, policy_state: dict[str, Any], config: Any, deployment: str = "recognizer"
):
    """A real Ray Serve AutoscalingContext for the simulated moment."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID(name=deployment, app_name="default"),
        deployment_name=deployment,
        app_name="default",
        current_num_replicas=obs.ready,
        target_num_replicas=obs.target,
        running_replicas=[],
        total_num_requests=obs.ongoing,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=policy_state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=obs.now,
        config=config,
    )


def ray_control_step(policy: Callable, ctx: Any, now: float) -> tuple[int, dict[str, Any]]:
    """What Serve's controller does with a policy each period, on the simulated clock.

    Mirrors `_apply_autoscaling_config.wrapped_policy` -> `_apply_default_params` in
    ray/serve/autoscaling_policy.py (Ray 2.60: cold-start fast path, scaling factors, then
    `_apply_delay_logic`) and `AutoscalingState.apply_bounds`, calling Ray's own step functions.
    The only change: `_apply_delay_logic` gets `_now=now`, because the wrapper reads time.time()
    and a replay must not.
    """
    from ray.serve.autoscaling_policy import (
        _apply_delay_logic,
        _apply_scaling_factors,
        _extract_internal_policy_state,
        _get_cold_start_scale_up_replicas,
    )

    cold = _get_cold_start_scale_up_replicas(ctx)
    if cold is not None:
        return cold, ctx.policy_state
    internal = _extract_internal_policy_state(ctx.policy_state.copy())
    desired, user_state = policy(ctx)
    desired = _apply_scaling_factors(desired, ctx.current_num_replicas, ctx.config)
    if ctx.current_num_replicas == 0 and desired > 0:
        final = desired
    else:
        final, internal = _apply_delay_logic(
            max(0, desired), ctx.target_num_replicas, ctx.config, internal, _now=now
        )
    user_state = dict(user_state or {})
    user_state.update(internal)
    if isinstance(final, float):
        final = math.ceil(final)
    bounded = max(
        ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, final)
    )
    return bounded, user_state


class RayDefaultController:
    """Ray Serve's default queue-length policy (`replica_queue_length_autoscaling_policy`) with
    Serve's defaults."""

    def __init__(self, config: SimConfig, **autoscaling_overrides: Any):
        from ray.serve.config import AutoscalingConfig

        self.autoscaling = AutoscalingConfig(
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            **autoscaling_overrides,
        )
        self.state: dict[str, Any] = {}

    def decide(self, obs: Observation) -> int:
        """The target Ray's default policy sets at this moment."""
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        ctx = autoscaling_context(obs, self.state, self.autoscaling)
        target, self.state = ray_control_step(replica_queue_length_autoscaling_policy, ctx, obs.now)
        return target


class SimulatedPrometheusPolicy(ForecastPolicy):
    """The production ForecastPolicy with the simulator standing in for Prometheus (the network
    boundary)."""

    def __init__(self, **policy_kwargs: Any):
        super().__init__(**policy_kwargs)
        self.values: dict[str, float] | None = None

    def read_prometheus(self) -> dict[str, float] | None:
        """The simulated signals of this moment."""
        return self.values


class ForecastPolicyController:
    """Our policy (`serve_app.autoscaling.ray_policy.ForecastPolicy`) inside Ray's control step, fed
    simulated Prometheus values."""

    def __init__(
        self,
        config: SimConfig,
        policy_kwargs: dict[str, Any],
        forecast: ForecastLookup | None = None,
        upscale_delay_s: float = 0.0,
        downscale_delay_s: float = 0.0,
    ):
        from ray.serve.config import AutoscalingConfig

        self.policy = SimulatedPrometheusPolicy(**policy_kwargs)
        if self.policy.config_error:
            raise ValueError(self.policy.config_error)
        self.autoscaling = AutoscalingConfig(
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            upscale_delay_s=upscale_delay_s,
            downscale_delay_s=downscale_delay_s,
        )
        self.forecast = forecast
        self.state: dict[str, Any] = {}
        self.changes: list[tuple[float, int, str]] = []

    def decide(self, obs: Observation) -> int:
        """The target our policy sets at this moment; each change is kept with its reason code."""
        values: dict[str, float] = {}
        if obs.qps is not None:
            values["qps"] = obs.qps
        if obs.p99_ms is not None:
            values["p99_ms"] = obs.p99_ms
        if obs.gpu_utilization is not None:
            values["gpu_utilization"] = obs.gpu_utilization
        if self.forecast is not None:
            upper, fit_time, yhat = self.forecast(obs.now)
            if upper is not None and fit_time is not None:
                values["forecast_qps"] = upper
                values["forecast_yhat_qps"] = yhat
                values["forecast_fit_time"] = fit_time
        self.policy.values = values
        ctx = autoscaling_context(obs, self.state, self.autoscaling)
        target, self.state = ray_control_step(self.policy, ctx, obs.now)
        if target != obs.target:
            code = (self.state.get(STATE_KEY) or {}).get("last_code", "")
            self.changes.append((obs.now, target, code))
        return target


def quiet_policy_logs() -> None:
    """The policy logs every change for operators; thousands of simulated changes would drown the
    CLI."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
