"""Trace-driven autoscaling simulator: arrivals, batching, queueing, replica start-up, the real
policy in the loop.

The model, one simulated second at a time:

- Arrivals: Poisson counts per second at the trace's rate for that step (common random numbers:
  every strategy sees the same arrivals).
- Service (lab/service_model.py): a replica runs batches back to back; a batch of b images takes
  l(b) from the profile (`batch_size,latency_ms`). At a per-replica arrival rate x the batch size
  settles where one batch collects what arrives while the previous one runs: b = x * (l(b) +
  batch_wait), capped at the maximum batch. A request waits for the running batch (0..l(b)) and
  then its own (l(b)), plus the batch wait and a fixed overhead. Beyond the maximum throughput
  (max_batch / l(max_batch)) the excess queues, and queued requests wait backlog / throughput; a
  client gives up after `client_timeout_s` (30 s), so the queue never holds more than that much
  work and an abandoned request counts as an SLO miss at the timeout. The router is assumed to
  spread load evenly (power of two choices). Within each second latencies are taken as uniform
  between the fastest and the slowest request; SLO attainment and the p99 come from that mixture
  over every request.
- Replicas asked for become ready `startup_s` later and cost money from the moment they are asked
  for; removed replicas stop at once (starting ones are removed first, as Serve does).
- Control (lab/controllers.py): the strategy decides at every multiple of `control_period_s`, at
  that moment of simulated time (0.1 s, Ray Serve's controller loop, means ten decisions per
  simulated second). What the policies read changes only when replicas push metrics (every 10 s),
  Prometheus scrapes (15 s) and the policy's cache refreshes (5 s), and every delay is measured in
  seconds of time, not in calls; a 1 s period therefore makes the same moves up to a second later
  (tests/unit/test_simulator.py runs both). A replica asked for at a moment inside a second serves
  from the first whole second after its start-up.
- Signals: QPS and p99 over the last minute as Prometheus reports them, refreshed every scrape;
  ongoing requests (Little's law: arrivals x latency) averaged over Serve's 30 s look-back,
  refreshed every metrics push; GPU utilization (busy share of the replicas) only for a GPU
  profile.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lab.service_model import LatencyCurve, ServiceModel

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

    def decide(self, obs: Observation) -> int:
        """The target replica count at this control period."""
        ...


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
    # Plain floats and lists: this loop runs once per simulated second, and numpy scalars are slow.
    grid = grid_ms.tolist()
    grid_last = len(grid) - 1
    grid_step = float(grid_x[1] - grid_x[0]) if len(grid_x) > 1 else 1.0
    mu, max_ms = model.mu_max, model.max_latency_ms
    overhead_ms = model.overhead_ms
    fixed_ms = model.batch_wait_ms + overhead_ms
    lo_out = np.zeros(n_seconds)
    hi_out = np.zeros(n_seconds)
    ready_out = np.zeros(n_seconds, dtype=np.int32)
    alloc_out = np.zeros(n_seconds, dtype=np.int32)
    ongoing_out = np.zeros(n_seconds)
    busy_out = np.zeros(n_seconds)
    arrivals_f = arrivals.astype(float)
    arrivals_list = arrivals_f.tolist()
    schedule_list = schedule.tolist() if schedule is not None else None
    timeout_s = config.client_timeout_s
    timeout_ms = timeout_s * 1000.0

    ready_count = 0 if schedule is not None else initial_replicas
    pending: deque[float] = deque()  # start-up finish times of starting replicas, in order
    backlog = 0.0
    target = initial_replicas
    control_index = 0  # the next control moment is control_index * period
    qps = p99 = gpu = None
    ongoing_avg = 0.0
    period = config.control_period_s
    if period <= 0:
        raise ValueError(f"control_period_s must be positive, got {period}")

    for t in range(n_seconds):
        a = arrivals_list[t]
        if schedule_list is not None:
            n = int(schedule_list[t])
            allocated = n
        else:
            while pending and pending[0] <= t:
                pending.popleft()
                ready_count += 1
            n = ready_count
            allocated = ready_count + len(pending)

        # --- serve this second ---
        if n <= 0:
            # Nobody serves: waiting clients give up after the timeout.
            backlog = min(backlog + a, a * timeout_s)
            lo = hi = timeout_ms
            busy = 1.0
        else:
            capacity = n * mu
            wait_start = backlog / capacity
            work = backlog + a
            if work <= capacity:
                x = work / n
                # Linear interpolation on the evenly spaced rate grid (np.interp, unrolled).
                position = x / grid_step
                i = int(position)
                if i >= grid_last:
                    batch_ms = grid[grid_last]
                else:
                    batch_ms = grid[i] + (position - i) * (grid[i + 1] - grid[i])
                backlog = 0.0
                lo = batch_ms + overhead_ms
                hi = wait_start * 1000.0 + 2 * batch_ms + fixed_ms
                busy = x / mu
            else:
                # Requests queued deeper than the timeout's worth of work would outwait their
                # client: they leave (each one an SLO miss at the timeout) instead of clogging the
                # queue for minutes.
                backlog = min(work - capacity, capacity * timeout_s)
                lo = wait_start * 1000.0 + max_ms + overhead_ms
                hi = backlog / capacity * 1000.0 + 2 * max_ms + fixed_ms
                busy = 1.0
            lo, hi = min(lo, timeout_ms), min(hi, timeout_ms)
        lo_out[t], hi_out[t] = lo, hi
        ready_out[t], alloc_out[t] = n, allocated
        # Little's law plus whatever is still queued.
        ongoing_out[t] = a * (lo + hi) / 2000.0 + backlog
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

        # --- control: every control moment within this second, at its own time ---
        while (moment := round(control_index * period, 9)) < t + 1:
            control_index += 1
            moment = max(moment, float(t))
            obs = Observation(start_unix + moment, n, allocated, target, qps, p99, gpu, ongoing_avg)
            new_target = max(0, int(controller.decide(obs)))
            if new_target > allocated:
                pending.extend([moment + config.startup_s] * (new_target - allocated))
            elif new_target < allocated:
                remove = allocated - new_target
                while remove and pending:  # starting replicas go first, the latest first
                    pending.pop()
                    remove -= 1
                ready_count -= remove
                n = min(n, ready_count)
            allocated = ready_count + len(pending)
            target = new_target

    return Run(name, arrivals, lo_out, hi_out, ready_out, alloc_out)


# --------------------------------------------------------------------------------------------------
# Capacity and results
# --------------------------------------------------------------------------------------------------


def capacity_at_slo(
    model: ServiceModel, slo_ms: float, seconds: int = 3600, seed: int = 1, replicas: int = 1
) -> float:
    """Highest per-replica rate at which `replicas` replicas (Poisson arrivals, one hour) keep the
    p99 within the SLO.

    A larger fleet sustains a little more per replica: the same relative burst is smaller on a
    larger total rate.
    """
    config = SimConfig(slo_ms=slo_ms)

    def p99_for(x: float) -> float:
        # The same seed at every rate: common random numbers keep the bisection steady.
        arrivals = np.random.default_rng(seed).poisson(x * replicas, seconds)
        run = simulate(
            "capacity",
            np.full(seconds, x * replicas),
            arrivals,
            model,
            config,
            0.0,
            schedule=np.full(seconds, replicas, dtype=np.int32),
        )
        return latency_quantile(run.arrivals, run.lat_lo_ms, run.lat_hi_ms, 0.99)

    low, high = 0.0, model.mu_max
    if p99_for(0.01 * high) > slo_ms:
        raise ValueError(
            f"even a nearly idle replica misses the {slo_ms:g} ms SLO (batch latency "
            f"{model.curve.latency(1):g} ms + {model.batch_wait_ms + model.overhead_ms:g} ms wait "
            "and overhead): raise --slo-ms or use a faster profile"
        )
    for _ in range(16):
        mid = (low + high) / 2
        low, high = (mid, high) if p99_for(mid) <= slo_ms else (low, mid)
    return low


def service_for(
    curve: LatencyCurve, slo_ms: float, replica_rps: float | None = None, **service: Any
) -> tuple[ServiceModel, float]:
    """A service model and its per-replica capacity at the SLO.

    With `replica_rps` (a measured capacity) the curve's latencies are stretched until one simulated
    replica sustains exactly that at the SLO. The batch wait and the overhead do not stretch, so
    the stretch is searched for, not taken as derived / replica_rps.
    """
    model = ServiceModel(curve, **service)
    derived = capacity_at_slo(model, slo_ms)
    if replica_rps is None:
        return model, derived

    def capacity_with(factor: float) -> float:
        try:
            return capacity_at_slo(ServiceModel(curve.scaled(factor), **service), slo_ms)
        except ValueError:  # even an idle replica misses the SLO: no capacity at all
            return 0.0

    # Capacity falls as latencies stretch: bisect log(factor) between bounds that bracket it.
    low, high = derived / replica_rps, derived / replica_rps
    for _ in range(60):
        if capacity_with(low) >= replica_rps:
            break
        low /= 2
    for _ in range(60):
        if capacity_with(high) <= replica_rps:
            break
        high *= 2
    if capacity_with(high) > replica_rps or capacity_with(low) < replica_rps:
        raise ValueError(
            f"no stretch of the profile sustains {replica_rps:g} req/s per replica within "
            f"{slo_ms:g} ms: raise --slo-ms or pick another --replica-rps"
        )
    for _ in range(30):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if capacity_with(mid) >= replica_rps else (low, mid)
    return ServiceModel(curve.scaled(low), **service), float(replica_rps)


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
