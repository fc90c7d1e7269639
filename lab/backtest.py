"""Walk-forward backtest: replay a trace against six scaling strategies and say what each one
costs and misses, every one of them at the same SLO point (`slo_target` of requests within
`slo_ms`).

- `static_peak`: the fewest fixed replicas that keep the SLO target over the replay (searched with
  the simulator, lab/yardsticks.py).
- `fixed_headroom`: a fixed fleet sized the usual way, the peak plus 20% over one replica's
  capacity: the reference cost of not autoscaling.
- `ray_default`: Ray Serve's own queue-length policy with Serve's defaults (target 2 ongoing
  requests per replica, 30 s up delay, 600 s down delay).
- `reactive`: our ForecastPolicy with thresholds only.
- `predictive`: the same thresholds plus the forecast floor. Each replayed day is forecast by a
  Prophet model fitted only on the trace before that day (walk-forward: no peeking), or, with
  `forecast="exact"`, by the day itself, or with `forecast="given"` by `forecast_file`'s rate
  (lab/forecasts.py).
- `oracle`: the cheapest clairvoyant schedule that keeps the SLO target: it knows the future load,
  sizes each moment by what n replicas sustain at the SLO (measured, not n x one replica), starts
  replicas start-up time ahead and pays from then, at the smallest load factor whose replay keeps
  the target: the bound of cost. It changes its fleet whenever the load does, hundreds of times a
  day, which no policy held to a scale-event budget may.
- `oracle_budget`: the same clairvoyance held to the replayed policy's own budget of scale
  events (`max_scale_events_per_day`): in each replayed day, the cheapest schedule that covers the
  oracle's need with at most that many changes, at the smallest load factor that keeps the SLO
  target: the bound of cost for a policy that may not flap.
- `oracle_matched`: the oracle searched again to keep at least the share predictive kept (shown,
  not a goal): predictive's cost against clairvoyance at predictive's own SLO point.

The first `history_days` days are history only; every figure is over the replayed days. The
backtest computes and returns; lab/report.py writes its files.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from lab.controllers import ForecastPolicyController, RayDefaultController, quiet_policy_logs
from lab.forecasts import (
    DAY,
    FORECASTS,
    PLAN_CHANGES_PER_DAY,
    FitForecasts,
    day_ahead_mape,
    trace_forecasts,
    walk_forward,
)
from lab.service_model import LatencyCurve, ServiceModel
from lab.simulator import Run, SimConfig, latency_quantile, service_for, share_within, simulate
from lab.yardsticks import (
    find_yardsticks,
    fleet_capacities,
    headroom_fleet,
    matched_oracle,
    replicas_for_load,
)
from serve_app.autoscaling.forecaster import ForecasterSettings
from serve_app.autoscaling.rate_history import RateHistory, read_csv, trace_utc_offset

STRATEGIES = (
    "static_peak",
    "fixed_headroom",
    "ray_default",
    "reactive",
    "predictive",
    "oracle",
    "oracle_budget",
    "oracle_matched",
)
SUMMARY_COLUMNS = (
    "strategy",
    "slo_attainment",
    "p99_ms",
    "replica_hours",
    "cost",
    "scale_events",
    "underprovisioned_minutes",
)
WARMUP_S = 3600


@dataclass(frozen=True)
class BacktestOptions:
    """Everything `recserve backtest` takes."""

    trace: Path
    out: Path
    replica_rps: float | None = None
    slo_ms: float = 500.0
    # Share of requests within slo_ms every strategy is judged at (and the yardsticks sized for).
    slo_target: float = 0.99
    startup_s: int = 120
    history_days: int = 7
    # None: every day after the history.
    replay_days: int | None = None
    price_per_replica_hour: float = 1.0
    profile: str = "cpu"
    timezone: str | None = None
    headroom: float = 0.95
    seed: int = 0
    control_period_s: float = 1.0
    workers: int = 2
    min_replicas: int = 1
    # None: half again static_peak's count, room to drain a backlog after a surge.
    max_replicas: int | None = None
    # (dotted policy_kwargs key, value) pairs set on both replayed policies, reactive and
    # predictive alike, so a comparison changes one thing at a time (the tuning runs).
    policy: tuple[tuple[str, Any], ...] = ()
    # What predictive plans with: Prophet walk-forward, or the replayed day (lab/forecasts.py).
    forecast: str = "prophet"
    # forecast "given": the trace whose rate is the forecast, its upper bound this factor x it.
    forecast_file: Path | None = None
    forecast_upper_factor: float = 1.0
    # The forecaster's plan_changes_per_day: the forecast planned into steps (None: as forecast).
    plan_changes_per_day: int | None = PLAN_CHANGES_PER_DAY
    # Seconds between Prophet fits, as the forecaster's refit_interval_s (None: one fit per
    # replayed day, at its start).
    refit_interval_s: float | None = None

    def __post_init__(self):
        if self.refit_interval_s is not None and not 60 <= self.refit_interval_s <= DAY:
            raise ValueError(
                f"--refit-interval-s must be between 60 and {DAY}, got {self.refit_interval_s:g}"
            )
        if self.plan_changes_per_day is not None and self.plan_changes_per_day < 1:
            raise ValueError(f"--plan-changes must be >= 1 or off, got {self.plan_changes_per_day}")
        if self.forecast not in FORECASTS:
            raise ValueError(f"--forecast must be one of {', '.join(FORECASTS)}")
        if (self.forecast == "given") != (self.forecast_file is not None):
            raise ValueError("--forecast-file goes with --forecast given, and only with it")
        if self.forecast_upper_factor < 1:
            factor = self.forecast_upper_factor
            raise ValueError(f"--forecast-upper-factor must be >= 1, got {factor}")
        if self.slo_ms <= 0:
            raise ValueError(f"--slo-ms must be positive, got {self.slo_ms}")
        if self.startup_s < 0:
            raise ValueError(f"--startup-s must be >= 0, got {self.startup_s}")
        if not 0 < self.slo_target < 1:
            raise ValueError(f"--slo-target must be in (0, 1), got {self.slo_target}")
        if self.replay_days is not None and self.replay_days < 1:
            raise ValueError(f"--replay-days must be >= 1, got {self.replay_days}")
        if self.history_days < 0:
            raise ValueError(f"--history-days must be >= 0, got {self.history_days}")
        if self.replica_rps is not None and self.replica_rps <= 0:
            raise ValueError(f"--replica-rps must be positive, got {self.replica_rps}")
        if self.price_per_replica_hour < 0:
            raise ValueError(
                f"--price-per-replica-hour must be >= 0, got {self.price_per_replica_hour}"
            )
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"--max-replicas ({self.max_replicas}) must be >= min replicas "
                f"({self.min_replicas})"
            )
        if not 0 < self.headroom <= 1:
            raise ValueError(f"--headroom must be in (0, 1], got {self.headroom}")
        # A missing profile fails now, not after the forecasts.
        LatencyCurve.profile(self.profile)


@dataclass
class BacktestResult:
    """Per-strategy summary rows, the forecast error, the fleet's sizing and the per-second replay
    the timeline is drawn from."""

    summary: list[dict[str, Any]]
    mape_by_day: list[float | None]
    mape_overall: float | None
    capacity_rps: float
    # Per replica, what a fleet of the size the median replayed load needs sustains at the SLO:
    # the capacity the replayed policy plans with.
    planning_capacity_rps: float
    static_replicas: int
    headroom_replicas: int
    oracle_load_factor: float | None  # None: no factor up to the search's top kept the target
    max_replicas: int
    lead_time_s: float
    history: RateHistory
    forecasts: FitForecasts
    runs: list[Run]
    rate: np.ndarray  # per simulated second, warm-up included
    sim_start: float  # unix time of the first simulated second
    window: slice  # the replayed seconds within the simulated span
    step_s: float  # the trace's step
    day_statuses: list[str] = field(default_factory=list)
    # The fleet table the replayed predictive policy planned with (None: one per-replica figure).
    fleet_table: dict[int, float] | None = None


# --------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------


def service_and_capacity(options: BacktestOptions) -> tuple[ServiceModel, float]:
    """The service model and the per-replica capacity at the SLO (from --replica-rps or the
    profile)."""
    return service_for(LatencyCurve.profile(options.profile), options.slo_ms, options.replica_rps)


def forecaster_settings(options: BacktestOptions) -> ForecasterSettings:
    """Forecaster settings for the trace's local time."""
    zone = options.timezone or trace_utc_offset(options.trace) or "UTC"
    return ForecasterSettings(timezone=zone)


def operator_fleet_table(capacities: np.ndarray) -> dict[int, float]:
    """The fleet sizes an operator measures (1, 2, 4, ... up to the table's largest) and what each
    sustains at the SLO."""
    sizes = [2**k for k in range((len(capacities) - 1).bit_length())]
    return {n: round(float(capacities[n]), 2) for n in sizes}


def policy_kwargs(
    capacity: float,
    options: BacktestOptions,
    config: SimConfig,
    predictive: bool,
    lead_time_s: float,
    fleet_table: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Our policy's YAML for the replay: thresholds from the capacity at the SLO, the forecast floor
    if predictive."""
    kwargs: dict[str, Any] = {
        "deployment": "recognizer",
        "model_name": "efficientnet_lite0",
        "step_up": 2,
        "step_down": 1,
        "cooldown_up_s": 30,
        "cooldown_down_s": 300,
        "thresholds": {
            # Scale up before a replica passes `headroom` of what it sustains within the SLO; the
            # down threshold leaves a wide band so the reactive policy does not flap.
            "qps": {"up": options.headroom * capacity, "down": 0.5 * capacity},
            "p99_ms": {"up": options.slo_ms, "down": 0.4 * options.slo_ms},
        },
        # The same capacity for both: knowing it, a slow model's p99 does not pin reactive at max.
        "predictive": {
            "enabled": False,
            "replica_capacity_qps": capacity,
            "headroom": options.headroom,
        },
    }
    if config.gpu_signal:
        kwargs["thresholds"]["gpu_utilization"] = {"up": options.headroom, "down": 0.5}
    if predictive:
        kwargs["predictive"] = {
            **kwargs["predictive"],
            "enabled": True,
            "lead_time_s": lead_time_s,
            "startup_s": options.startup_s,
            "max_forecast_age_s": 2 * DAY,
            # What the application copies from the forecaster (deployment_policy.py).
            "landing": "target_fill" if options.plan_changes_per_day is None else "floor",
        }
    for key, value in options.policy:
        # `measured`: the operator's fleet table, for the predictive replay only (a tuning run).
        if key == "predictive.fleet_capacity_qps" and value == "measured":
            if not predictive:
                continue
            value = fleet_table
        *parents, leaf = key.split(".")
        node = kwargs
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return kwargs


# --------------------------------------------------------------------------------------------------
# Running one strategy (in a worker process)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyJob:
    """Everything one strategy's replay needs, picklable for a worker process."""

    name: str
    rate: np.ndarray
    arrivals: np.ndarray
    model: ServiceModel
    config: SimConfig
    start_unix: float
    schedule: np.ndarray | None = None
    allocated: np.ndarray | None = None
    kwargs: dict[str, Any] | None = None
    forecasts: FitForecasts | None = None
    initial_replicas: int = 1


def run_job(job: StrategyJob) -> Run:
    """Replay one strategy."""
    quiet_policy_logs()
    controller = None
    if job.schedule is None and job.name == "ray_default":
        controller = RayDefaultController(job.config)
    elif job.schedule is None:
        lookup = job.forecasts.lookup if job.forecasts is not None else None
        controller = ForecastPolicyController(job.config, job.kwargs or {}, forecast=lookup)
    run = simulate(
        job.name,
        job.rate,
        job.arrivals,
        job.model,
        job.config,
        job.start_unix,
        controller=controller,
        schedule=job.schedule,
        initial_replicas=job.initial_replicas,
    )
    if job.allocated is not None:
        # The oracle pays for replicas it starts ahead of need: more than the ready schedule.
        run.allocated = job.allocated.astype(np.int32)
    return run


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def summarize(
    run: Run, rate: np.ndarray, window: slice, capacities: np.ndarray, options: BacktestOptions
) -> dict[str, Any]:
    """One summary row over the replayed window (under-provisioned: what the ready fleet sustains
    at the SLO is below the true load)."""
    counts = run.arrivals[window]
    lo, hi = run.lat_lo_ms[window], run.lat_hi_ms[window]
    allocated = run.allocated[window]
    replica_hours = float(allocated.sum()) / 3600.0
    events = int(
        np.count_nonzero(
            np.diff(run.allocated[window.start - 1 if window.start else 0 : window.stop])
        )
    )
    ready = np.minimum(run.ready[window], len(capacities) - 1)
    short = np.count_nonzero(capacities[ready] < rate[window])
    return {
        "strategy": run.name,
        "slo_attainment": round(share_within(counts, lo, hi, options.slo_ms), 5),
        "p99_ms": round(latency_quantile(counts, lo, hi, 0.99), 1),
        "replica_hours": round(replica_hours, 1),
        "cost": round(replica_hours * options.price_per_replica_hour, 2),
        "scale_events": events,
        "underprovisioned_minutes": round(float(short) / 60.0, 1),
    }


# --------------------------------------------------------------------------------------------------
# The backtest
# --------------------------------------------------------------------------------------------------


def run_backtest(options: BacktestOptions) -> BacktestResult:
    """Replay the trace against every strategy and summarize each over the replayed days."""
    history = read_csv(options.trace)
    step = history.require_regular()
    first, last = float(history.timestamps[0]), float(history.timestamps[-1]) + step
    replay_start = first + options.history_days * DAY
    if options.replay_days is not None:
        last = min(last, replay_start + options.replay_days * DAY)
    if replay_start >= last:
        raise ValueError(
            f"the trace covers {(last - first) / DAY:.2f} days but --history-days is "
            f"{options.history_days}: nothing is left to replay; lower --history-days"
        )
    model, capacity = service_and_capacity(options)
    # Start-up plus a scrape and a few control periods of slack.
    lead_time_s = float(options.startup_s + 60)

    # Per-second rate over the warm-up and the replayed window; the warm-up is simulated but not
    # counted.
    sim_start = max(first, replay_start - WARMUP_S)
    seconds = int(round(last - sim_start))
    step_index = ((sim_start + np.arange(seconds) - first) // step).astype(int)
    rate = history.rps[np.clip(step_index, 0, len(history) - 1)]
    arrivals = np.random.default_rng(options.seed).poisson(rate)
    window = slice(int(round(replay_start - sim_start)), seconds)

    # The warm-up hour is simulated too, so the fixed fleets must cover it as well as the replayed
    # peak.
    peak = float(rate.max())
    headroom_n = max(options.min_replicas, headroom_fleet(peak, capacity))
    largest = max(2, 2 * headroom_n)
    capacities = fleet_capacities(model, options.slo_ms, largest)
    config = SimConfig(
        slo_ms=options.slo_ms,
        startup_s=options.startup_s,
        control_period_s=options.control_period_s,
        min_replicas=options.min_replicas,
        gpu_signal=options.profile == "gpu",
    )

    sticks = find_yardsticks(
        rate, arrivals, model, config, window, capacities, options.slo_target, largest
    )
    static_n, ready = sticks.static_replicas, sticks.oracle_ready
    max_replicas = options.max_replicas or max(math.ceil(1.5 * static_n), int(ready.max()))
    # An operator measures capacity on the fleet they run (`recserve capacity --replicas N`), and a
    # fleet sustains more per replica than one replica alone.
    typical = int(replicas_for_load(np.array([np.median(rate[window])]), capacities, 1)[0])
    planning = float(capacities[typical] / typical)
    # What `recserve capacity --replicas N` measures at 1, 2, 4, ...: the predictive policy plans
    # each fleet size with it under `--policy predictive.fleet_capacity_qps=measured`.
    table = operator_fleet_table(capacities)
    config = replace(config, max_replicas=max_replicas)

    day_starts = [replay_start + k * DAY for k in range(math.ceil((last - replay_start) / DAY))]
    if options.forecast == "exact":
        forecasts = trace_forecasts(history, day_starts, lead_time_s, step)
    elif options.forecast == "given":
        given = read_csv(options.forecast_file)
        factor = options.forecast_upper_factor
        forecasts = trace_forecasts(given, day_starts, lead_time_s, step, factor, "given")
    else:
        forecasts = walk_forward(
            history,
            day_starts,
            forecaster_settings(options),
            lead_time_s,
            step,
            options.seed,
            options.refit_interval_s or DAY,
        )
    # Day-ahead error: the whole day against the fit made at its start, however often it refits.
    mape_by_day, mape_overall = day_ahead_mape(forecasts, history, day_starts)

    if options.plan_changes_per_day is not None:
        forecasts = forecasts.planned(options.plan_changes_per_day)
    initial = int(ready[0])
    predictive_kwargs = policy_kwargs(planning, options, config, True, lead_time_s, table)
    # Every strategy replays the same arrivals on the same simulated service.
    job = partial(
        StrategyJob, rate=rate, arrivals=arrivals, model=model, config=config, start_unix=sim_start
    )
    jobs = [
        job("static_peak", schedule=np.full(seconds, static_n, dtype=np.int32)),
        job("fixed_headroom", schedule=np.full(seconds, headroom_n, dtype=np.int32)),
        job("ray_default", initial_replicas=initial),
        job(
            "reactive",
            kwargs=policy_kwargs(planning, options, config, False, lead_time_s),
            initial_replicas=initial,
        ),
        job(
            "predictive",
            kwargs=predictive_kwargs,
            forecasts=forecasts,
            initial_replicas=initial,
        ),
        job("oracle", schedule=ready, allocated=sticks.oracle_allocated),
        job("oracle_budget", schedule=sticks.budget_ready, allocated=sticks.budget_allocated),
    ]
    workers = max(1, min(options.workers, os.cpu_count() or 1))
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            runs = list(pool.map(run_job, jobs))
    else:
        runs = [run_job(job) for job in jobs]
    kept = next(run for run in runs if run.name == "predictive")
    share = share_within(
        kept.arrivals[window], kept.lat_lo_ms[window], kept.lat_hi_ms[window], options.slo_ms
    )
    _, matched, matched_allocated = matched_oracle(
        rate, arrivals, model, config, window, capacities, share
    )
    runs.append(run_job(job("oracle_matched", schedule=matched, allocated=matched_allocated)))

    summary = [summarize(run, rate, window, capacities, options) for run in runs]
    return BacktestResult(
        summary,
        mape_by_day,
        mape_overall,
        capacity,
        planning,
        static_n,
        headroom_n,
        sticks.oracle_factor,
        max_replicas,
        lead_time_s,
        history,
        forecasts,
        runs,
        rate,
        sim_start,
        window,
        step,
        day_statuses=[forecasts.status_at(start) for start in day_starts],
        fleet_table=predictive_kwargs["predictive"].get("fleet_capacity_qps"),
    )
