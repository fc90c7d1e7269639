"""Trace-driven autoscaling simulator: arrivals, batching, queueing, replica start-up, the real
policy in the loop.

The model, one simulated second at a time:

- Arrivals: Poisson counts per second at the trace's rate for that step (common random numbers: every
  strategy sees the same arrivals).
- Service: a replica runs batches back to back; a batch of b images takes l(b) from the profile
  (`batch_size,latency_ms`). At a per-replica arrival rate x the batch size settles where one batch
  collects what arrives while the previous one runs: b = x * (l(b) + batch_wait), capped at the
  maximum batch. A request waits for the running batch (0..l(b)) and then its own (l(b)), plus the
  batch wait and a fixed overhead. Beyond the maximum throughput (max_batch / l(max_batch)) the
  excess queues, and queued requests wait backlog / throughput; a client gives up after
  `client_timeout_s` (30 s), so the queue never holds more than that much work and an abandoned
  request counts as an SLO miss at the timeout. The router is assumed to spread load evenly (power
  of two choices). Within each second latencies are taken as uniform between the fastest and the
  slowest request; SLO attainment and the p99 come from that mixture over every request.
- Replicas asked for become ready `startup_s` later and cost money from the moment they are asked for;
  removed replicas stop at once (starting ones are removed first, as Serve does).
- Control: every `control_period_s` the strategy decides. Ray Serve's controller loop runs every 0.1 s,
  but what the policies read changes only when replicas push metrics (every 10 s), Prometheus
  scrapes (15 s) and the policy's cache refreshes (5 s), and every delay is measured in seconds of
  time, not in calls; calling once per simulated second therefore makes the same decisions up to one
  second later (tests/unit/test_simulator.py checks 0.1 s and 1 s against each other).
- Signals: QPS and p99 over the last minute as Prometheus reports them, refreshed every scrape; ongoing
  requests (Little's law: arrivals x latency) averaged over Serve's 30 s look-back, refreshed every
  metrics push; GPU utilization (busy share of the replicas) only for a GPU profile.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from serve_app.autoscaling.policy import STATE_KEY
from serve_app.autoscaling.ray_policy import ForecastPolicy

PROFILES_DIR = Path(__file__).parent / "profiles"


# --------------------------------------------------------------------------------------------------
# Service model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyCurve:
    """Batch size -> batch latency (ms) of one replica, linearly interpolated between measured
    points."""

    batch_sizes: tuple[float, ...]
    latency_ms: tuple[float, ...]

    def __post_init__(self):
        if len(self.batch_sizes) == 0 or len(self.batch_sizes) != len(self.latency_ms):
            raise ValueError("a latency curve needs at least one (batch_size, latency_ms) point")
        if any(b <= 0 for b in self.batch_sizes) or list(self.batch_sizes) != sorted(
            set(self.batch_sizes)
        ):
            raise ValueError(
                f"batch sizes must be positive and strictly increasing, got {list(self.batch_sizes)}"
            )
        if any(not (l > 0 and math.isfinite(l)) for l in self.latency_ms):
            raise ValueError(
                f"latencies must be positive milliseconds, got {list(self.latency_ms)}"
            )

    @classmethod
    def from_csv(cls, path: str | Path) -> "LatencyCurve":
        """Read `batch_size,latency_ms` (lines starting with # are comments)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"latency profile {str(path)!r} does not exist (use cpu, gpu or a CSV path)"
            )
        lines = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        rows = list(csv.DictReader(lines))
        if not rows or set(rows[0]) != {"batch_size", "latency_ms"}:
            raise ValueError(f"{path}: expected the header batch_size,latency_ms")
        try:
            points = sorted((float(r["batch_size"]), float(r["latency_ms"])) for r in rows)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: every row needs two numbers ({exc})") from None
        return cls(tuple(p[0] for p in points), tuple(p[1] for p in points))

    @classmethod
    def profile(cls, name_or_path: str) -> "LatencyCurve":
        """A bundled profile (`cpu`, `gpu`) or a CSV path."""
        bundled = PROFILES_DIR / f"{name_or_path}.csv"
        return cls.from_csv(bundled if bundled.is_file() else name_or_path)

    def latency(self, batch: float) -> float:
        """Milliseconds for a batch of `batch` images (flat beyond the measured range)."""
        return float(np.interp(batch, self.batch_sizes, self.latency_ms))

    def scaled(self, factor: float) -> "LatencyCurve":
        """The same curve with every latency multiplied by `factor`."""
        return LatencyCurve(self.batch_sizes, tuple(l * factor for l in self.latency_ms))


class ServiceModel:
    """Per-replica batching service: batch size and batch latency at a given arrival rate."""

    GRID = 2000

    def __init__(
        self,
        curve: LatencyCurve,
        batch_wait_ms: float = 10.0,
        overhead_ms: float = 5.0,
        max_batch: float | None = None,
    ):
        self.curve = curve
        self.batch_wait_ms = batch_wait_ms
        self.overhead_ms = overhead_ms
        # By default the batch size with the highest throughput: a tuned deployment sets
        # max_batch_size there (a bigger batch that is slower per image would only add latency).
        self.max_batch = float(
            max_batch or max(curve.batch_sizes, key=lambda b: b / curve.latency(b))
        )
        if self.max_batch > curve.batch_sizes[-1]:
            raise ValueError(
                f"max batch {self.max_batch:g} is beyond the profile's largest batch {curve.batch_sizes[-1]:g}"
            )
        self.max_latency_ms = curve.latency(self.max_batch)
        self.mu_max = self.max_batch / (
            self.max_latency_ms / 1000.0
        )  # requests/s of one saturated replica
        self._x = np.linspace(0.0, self.mu_max, self.GRID)
        self._batch_ms = np.array([curve.latency(self._batch_at(x)) for x in self._x])

    def _batch_at(self, x: float) -> float:
        """Batch size where one batch gathers the arrivals during the previous one: b = x * (l(b) +
        wait)."""

        def gathered(b: float) -> float:
            return x * (self.curve.latency(b) + self.batch_wait_ms) / 1000.0

        low, high = min(1.0, self.max_batch), self.max_batch
        if gathered(low) <= low:
            return low
        if gathered(high) >= high:
            return high
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if gathered(mid) > mid else (low, mid)
        return high

    def batch_latency_ms(self, per_replica_rate: float) -> float:
        """Latency of one batch at this per-replica arrival rate (the saturated batch beyond
        mu_max)."""
        if per_replica_rate >= self.mu_max:
            return self.max_latency_ms
        return float(np.interp(per_replica_rate, self._x, self._batch_ms))

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-replica rate grid, batch latency ms) for fast interpolation in the simulation loop."""
        return self._x, self._batch_ms


# --------------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Timing of the simulated cluster and the SLO."""

    slo_ms: float = 500.0
    startup_s: int = 120
    control_period_s: float = 1.0
    scrape_interval_s: int = 15
    rate_window_s: int = 60
    metrics_push_s: int = 10
    look_back_s: int = 30
    client_timeout_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 100
    gpu_signal: bool = False


@dataclass
class Observation:
    """What a strategy can see at one control period (absolute unix time in `now`)."""

    now: float
    ready: int
    allocated: int
    target: int
    qps: float | None
    p99_ms: float | None
    gpu_utilization: float | None
    ongoing: float


class Controller(Protocol):
    """A scaling strategy in the loop."""

    def decide(self, obs: Observation) -> int: ...


@dataclass
class Run:
    """Per-second record of one strategy over the simulated span."""

    name: str
    arrivals: np.ndarray
    lat_lo_ms: np.ndarray
    lat_hi_ms: np.ndarray
    ready: np.ndarray
    allocated: np.ndarray
    reasons: list[tuple[float, str]] = field(default_factory=list)


def window_p99(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float | None:
    """p99 of a window of seconds as a Prometheus histogram would roughly report it (per-second
    p99s, weighted)."""
    total = counts.sum()
    if total <= 0:
        return None
    per_second = lo + 0.99 * (hi - lo)
    order = np.argsort(per_second)[::-1]
    tail = np.cumsum(counts[order]) / total
    return float(per_second[order][np.searchsorted(tail, 0.01)])


def simulate(
    name: str,
    rate: np.ndarray,
    arrivals: np.ndarray,
    model: ServiceModel,
    config: SimConfig,
    start_unix: float,
    controller: Controller | None = None,
    schedule: np.ndarray | None = None,
    initial_replicas: int = 1,
) -> Run:
    """Replay per-second arrivals against a controller (decides each control period) or a
    ready-replica schedule."""
    if (controller is None) == (schedule is None):
        raise ValueError("give either a controller or a schedule")
    n_seconds = len(arrivals)
    grid_x, grid_ms = model.table()
    mu, max_ms = model.mu_max, model.max_latency_ms
    fixed_ms = model.batch_wait_ms + model.overhead_ms
    lo_out = np.zeros(n_seconds)
    hi_out = np.zeros(n_seconds)
    ready_out = np.zeros(n_seconds, dtype=np.int32)
    alloc_out = np.zeros(n_seconds, dtype=np.int32)
    ongoing_out = np.zeros(n_seconds)
    busy_out = np.zeros(n_seconds)
    arrivals_f = arrivals.astype(float)
    timeout_s = config.client_timeout_s
    timeout_ms = timeout_s * 1000.0

    ready_count = 0 if schedule is not None else initial_replicas
    pending: deque[float] = deque()  # start-up finish times of starting replicas, in order
    backlog = 0.0
    target = initial_replicas
    next_control = 0.0
    qps = p99 = gpu = None
    ongoing_avg = 0.0
    period = config.control_period_s

    for t in range(n_seconds):
        a = arrivals_f[t]
        if schedule is not None:
            n = int(schedule[t])
            allocated = n
        else:
            while pending and pending[0] <= t:
                pending.popleft()
                ready_count += 1
            n = ready_count
            allocated = ready_count + len(pending)

        # --- serve this second ---
        if n <= 0:
            backlog = min(
                backlog + a, a * timeout_s
            )  # nobody serves: waiting clients give up after the timeout
            lo = hi = timeout_ms
            busy = 1.0
        else:
            capacity = n * mu
            wait_start = backlog / capacity
            work = backlog + a
            if work <= capacity:
                x = work / n
                batch_ms = grid_ms[-1] if x >= grid_x[-1] else float(np.interp(x, grid_x, grid_ms))
                backlog = 0.0
                lo = batch_ms + model.overhead_ms
                hi = wait_start * 1000.0 + 2 * batch_ms + fixed_ms
                busy = x / mu
            else:
                # Requests queued deeper than the timeout's worth of work would outwait their
                # client: they leave (each one an SLO miss at the timeout) instead of clogging the
                # queue for minutes.
                backlog = min(work - capacity, capacity * timeout_s)
                lo = wait_start * 1000.0 + max_ms + model.overhead_ms
                hi = backlog / capacity * 1000.0 + 2 * max_ms + fixed_ms
                busy = 1.0
            lo, hi = min(lo, timeout_ms), min(hi, timeout_ms)
        lo_out[t], hi_out[t] = lo, hi
        ready_out[t], alloc_out[t] = n, allocated
        ongoing_out[t] = (
            a * (lo + hi) / 2000.0 + backlog
        )  # Little's law plus whatever is still queued
        busy_out[t] = busy

        if controller is None:
            continue

        # --- signals refresh on their own cadences ---
        if t % config.scrape_interval_s == 0:
            w0 = max(0, t - config.rate_window_s + 1)
            window = arrivals_f[w0 : t + 1]
            qps = float(window.sum()) / len(window)
            p99 = window_p99(window, lo_out[w0 : t + 1], hi_out[w0 : t + 1])
            gpu = float(busy_out[w0 : t + 1].mean()) if config.gpu_signal else None
        if t % config.metrics_push_s == 0:
            ongoing_avg = float(ongoing_out[max(0, t - config.look_back_s + 1) : t + 1].mean())

        # --- control ---
        if t >= next_control:
            next_control += period
            obs = Observation(start_unix + t, n, allocated, target, qps, p99, gpu, ongoing_avg)
            new_target = max(0, int(controller.decide(obs)))
            if new_target > allocated:
                pending.extend([t + config.startup_s] * (new_target - allocated))
            elif new_target < allocated:
                remove = allocated - new_target
                while remove and pending:  # starting replicas go first, the latest first
                    pending.pop()
                    remove -= 1
                ready_count -= remove
            target = new_target

    return Run(name, arrivals, lo_out, hi_out, ready_out, alloc_out)


# --------------------------------------------------------------------------------------------------
# Strategies in the loop
# --------------------------------------------------------------------------------------------------


def _context(
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
    `_apply_delay_logic`) and `AutoscalingState.apply_bounds`, calling Ray's own step functions. The only
    change: `_apply_delay_logic` gets `_now=now`, because the wrapper reads time.time() and a replay
    must not.
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
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        ctx = _context(obs, self.state, self.autoscaling)
        target, self.state = ray_control_step(replica_queue_length_autoscaling_policy, ctx, obs.now)
        return target


class SimulatedPrometheusPolicy(ForecastPolicy):
    """The production ForecastPolicy with the simulator standing in for Prometheus (the network
    boundary)."""

    def __init__(self, **policy_kwargs: Any):
        super().__init__(**policy_kwargs)
        self.values: dict[str, float] | None = None

    def read_prometheus(self) -> dict[str, float] | None:
        return self.values


ForecastLookup = Callable[
    [float], tuple[float | None, float | None]
]  # now -> (upper at now + lead, fit time)


class ForecastPolicyController:
    """Our policy (`serve_app.autoscaling.policy.ForecastPolicy`) inside Ray's control step, fed
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
        values: dict[str, float] = {}
        if obs.qps is not None:
            values["qps"] = obs.qps
        if obs.p99_ms is not None:
            values["p99_ms"] = obs.p99_ms
        if obs.gpu_utilization is not None:
            values["gpu_utilization"] = obs.gpu_utilization
        if self.forecast is not None:
            upper, fit_time = self.forecast(obs.now)
            if upper is not None and fit_time is not None:
                values["forecast_qps"] = upper
                values["forecast_fit_time"] = fit_time
        self.policy.values = values
        ctx = _context(obs, self.state, self.autoscaling)
        target, self.state = ray_control_step(self.policy, ctx, obs.now)
        if target != obs.target:
            code = (self.state.get(STATE_KEY) or {}).get("last_code", "")
            self.changes.append((obs.now, target, code))
        return target


def quiet_policy_logs() -> None:
    """The policy logs every change for operators; thousands of simulated changes would drown the
    CLI."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


# --------------------------------------------------------------------------------------------------
# Capacity and results
# --------------------------------------------------------------------------------------------------


def capacity_at_slo(
    model: ServiceModel, slo_ms: float, seconds: int = 3600, seed: int = 1
) -> float:
    """Highest per-replica rate whose simulated p99 (one replica, Poisson arrivals, one hour) stays
    within the SLO."""
    config = SimConfig(slo_ms=slo_ms)

    def p99_for(x: float) -> float:
        # The same seed at every rate: common random numbers keep the bisection steady.
        arrivals = np.random.default_rng(seed).poisson(x, seconds)
        run = simulate(
            "capacity",
            np.full(seconds, x),
            arrivals,
            model,
            config,
            0.0,
            schedule=np.ones(seconds, dtype=np.int32),
        )
        return latency_quantile(run.arrivals, run.lat_lo_ms, run.lat_hi_ms, 0.99)

    low, high = 0.0, model.mu_max
    if p99_for(0.01 * high) > slo_ms:
        raise ValueError(
            f"even a nearly idle replica misses the {slo_ms:g} ms SLO (batch latency {model.curve.latency(1):g} ms "
            f"+ {model.batch_wait_ms + model.overhead_ms:g} ms wait and overhead): raise --slo-ms or use a faster profile"
        )
    for _ in range(16):
        mid = (low + high) / 2
        low, high = (mid, high) if p99_for(mid) <= slo_ms else (low, mid)
    return low


def service_for(
    curve: LatencyCurve, slo_ms: float, replica_rps: float | None = None, **service: Any
) -> tuple[ServiceModel, float]:
    """A service model and its per-replica capacity at the SLO.

    With `replica_rps` (a measured capacity) the curve is stretched so one simulated replica
    sustains exactly that.
    """
    model = ServiceModel(curve, **service)
    derived = capacity_at_slo(model, slo_ms)
    if replica_rps is None:
        return model, derived
    return ServiceModel(curve.scaled(derived / replica_rps), **service), float(replica_rps)


def latency_quantile(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: float) -> float:
    """Quantile of all requests' latencies, each second's requests uniform between its lo and hi."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    left, right = float(lo.min()), float(hi.max())
    for _ in range(50):
        mid = (left + right) / 2
        if share_within(counts, lo, hi, mid) >= q:
            right = mid
        else:
            left = mid
    return right


def share_within(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, limit_ms: float) -> float:
    """Share of requests whose latency is at most `limit_ms`."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        return 1.0
    span = np.maximum(hi - lo, 1e-9)
    inside = np.clip((limit_ms - lo) / span, 0.0, 1.0)
    return float((counts * inside).sum() / total)
