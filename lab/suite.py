"""The robustness matrix: the backtest over every (trace, per-replica capacity) cell, each cell's
predictive strategy checked against the same goals.

Traces come in two sets: `training` (the defaults of the replayed policy were chosen on these) and
`held-out` (reported separately, never tuned on). Each cell is one `run_backtest` with the same
options but the trace and `--replica-rps`; `lab/suite_report.py` writes the table and the plot.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from lab import tracegen
from lab.backtest import BacktestOptions, run_backtest
from lab.controllers import quiet_policy_logs
from lab.forecasts import PLAN_CHANGES_PER_DAY, SUITE_FORECASTS
from lab.report import write_settings, write_summary
from lab.yardsticks import MAX_EVENTS_PER_DAY
from serve_app.autoscaling.forecaster import ForecasterSettings

CAPACITIES = (5.0, 10.0, 25.0, 92.0)
HISTORY_DAYS = 7
REPLAY_DAYS = 2
SETS = ("training", "held-out")

# The goals every cell's predictive strategy is checked against (the doc explains each).
MAX_OVER_ORACLE = 1.25
MAX_OF_FIXED_HEADROOM = 0.85
GOALS = ("in_slo", "events", "vs_oracle", "vs_fixed", "under_vs_reactive")


@dataclass(frozen=True)
class TraceSpec:
    """One trace of the matrix: its name, its set, what it is, and how to write it."""

    name: str
    set: str
    description: str
    rows: Callable[[], list]  # picklable (a partial): cells travel to worker processes

    def write(self, directory: Path) -> Path:
        """Write the trace's CSV into `directory` (deterministic: the same bytes every run)."""
        return tracegen.write_csv(directory / f"{self.name}.csv", self.rows())

    def write_expected(self, directory: Path) -> tuple[Path, float] | None:
        """The generator's expected rate of this trace (`NAME.expected.csv` in `directory`) and
        the upper bound of the forecaster's interval over it, as a factor of that rate: the best
        day-ahead forecast its history allows. None for a trace no generator made."""
        if getattr(self.rows, "func", None) is not tracegen.diurnal:
            return None
        keywords = self.rows.keywords
        rows = tracegen.diurnal(**{**keywords, "expected": True})
        path = tracegen.write_csv(directory / f"{self.name}.expected.csv", rows)
        noise_sd = keywords.get("noise_sd", tracegen.NOISE_SD)
        width = ForecasterSettings().interval_width
        return path, tracegen.expected_upper_factor(noise_sd, width)


DAYS = HISTORY_DAYS + REPLAY_DAYS
# An evening-heavy week: a small morning, the peak at 21:00 (a consumer app rather than an office).
EVENING_WEEKDAY = [(9.0, 0.20, 1.5), (13.0, 0.30, 2.0), (21.0, 0.75, 1.8)]
EVENING_WEEKEND = [(11.0, 0.35, 2.5), (21.5, 0.65, 2.0)]

TRACES = (
    TraceSpec(
        "diurnal_2w",
        "training",
        "the bundled trace (lab/traces/diurnal_2w.csv): office week, peak 1500 req/s, 3 spikes",
        partial(tracegen.diurnal),
    ),
    TraceSpec(
        "diurnal_seed7",
        "training",
        "the same generator, seed 7, peak 400 req/s, spikes on replayed days 1 and 2",
        partial(
            tracegen.diurnal,
            days=DAYS,
            seed=7,
            peak_rps=400.0,
            spikes=[(7.45, 2.0, 25), (8.62, 1.6, 40)],
        ),
    ),
    TraceSpec(
        "noisy_small",
        "held-out",
        "seed 11, peak 120 req/s, twice the noise (sd 12%), three spikes up to 2.5x",
        partial(
            tracegen.diurnal,
            days=DAYS,
            seed=11,
            peak_rps=120.0,
            noise_sd=0.12,
            spikes=[(7.40, 2.5, 20), (8.80, 1.8, 30), (9.35, 2.2, 15)],
        ),
    ),
    TraceSpec(
        "evening_peak",
        "held-out",
        "another shape: evening-heavy week peaking at 21:00, seed 23, peak 800 req/s, one spike",
        partial(
            tracegen.diurnal,
            days=DAYS,
            seed=23,
            peak_rps=800.0,
            spikes=[(8.30, 1.9, 30)],
            weekday_bumps=EVENING_WEEKDAY,
            weekend_bumps=EVENING_WEEKEND,
        ),
    ),
    TraceSpec(
        "taylor_demand",
        "held-out",
        "real: half-hourly electricity demand, England and Wales, June 2000 (pmdarima's `taylor`), "
        "mapped onto 10..100 req/s",
        partial(tracegen.taylor_demand, days=DAYS),
    ),
)


# The replayed policy's headroom, chosen on the training traces with the CPU curve of 2026-12-01
# (docs/autoscaling-tuning/README.md, "The remeasured CPU curve").
DEFAULT_HEADROOM = 0.95


@dataclass(frozen=True)
class SuiteOptions:
    """Everything `recserve backtest-suite` takes."""

    out: Path
    workers: int = 2
    sets: tuple[str, ...] = SETS
    capacities: tuple[float, ...] = CAPACITIES
    replay_days: int = REPLAY_DAYS
    # Chosen on the training traces (docs/AUTOSCALING.md, "Tuned on training traces").
    headroom: float = DEFAULT_HEADROOM
    seed: int = 0
    # Policy overrides for tuning runs (BacktestOptions.policy).
    policy: tuple[tuple[str, Any], ...] = ()
    # What predictive plans with (BacktestOptions.forecast, .plan_changes_per_day).
    forecast: str = "prophet"
    plan_changes_per_day: int | None = PLAN_CHANGES_PER_DAY
    refit_interval_s: float | None = None  # BacktestOptions.refit_interval_s

    def __post_init__(self):
        unknown = set(self.sets) - set(SETS)
        if unknown:
            raise ValueError(f"--set must be one of {', '.join(SETS)}, got {sorted(unknown)}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if not 1 <= self.replay_days <= DAYS - HISTORY_DAYS:
            raise ValueError(f"--replay-days must be in 1..{DAYS - HISTORY_DAYS}")
        if self.forecast not in SUITE_FORECASTS:
            raise ValueError(f"--forecast must be one of {', '.join(SUITE_FORECASTS)}")


@dataclass(frozen=True)
class Cell:
    """One (trace, capacity) backtest to run in a worker."""

    trace: TraceSpec
    trace_path: Path
    options: BacktestOptions


def goals_of(rows: dict[str, dict[str, Any]], replay_days: float, slo_target: float) -> dict:
    """Each goal of the predictive strategy in one cell: True when met (a pure function of the
    summary rows)."""
    predictive, oracle = rows["predictive"], rows["oracle"]
    hours = predictive["replica_hours"]
    return {
        "in_slo": predictive["slo_attainment"] >= slo_target,
        "events": predictive["scale_events"] / replay_days <= MAX_EVENTS_PER_DAY,
        "vs_oracle": hours <= MAX_OVER_ORACLE * oracle["replica_hours"],
        "vs_fixed": hours <= MAX_OF_FIXED_HEADROOM * rows["fixed_headroom"]["replica_hours"],
        "under_vs_reactive": predictive["underprovisioned_minutes"]
        <= rows["reactive"]["underprovisioned_minutes"],
    }


def matrix_row(cell: Cell, rows: dict[str, dict[str, Any]], result: Any, seconds: float) -> dict:
    """One line of the matrix: the cell, the figures behind each goal, each goal's verdict."""
    options = cell.options
    days = (result.window.stop - result.window.start) / 86400
    predictive, oracle, budget = rows["predictive"], rows["oracle"], rows["oracle_budget"]
    fixed = rows["fixed_headroom"]["replica_hours"]
    matched = rows["oracle_matched"]
    goals = goals_of(rows, days, options.slo_target)
    return {
        "trace": cell.trace.name,
        "set": cell.trace.set,
        "replica_rps": options.replica_rps,
        "replay_days": round(days, 2),
        "peak_rps": round(float(result.rate[result.window].max()), 1),
        "static_peak_replicas": result.static_replicas,
        "fixed_headroom_replicas": result.headroom_replicas,
        "predictive_slo": predictive["slo_attainment"],
        "predictive_events_per_day": round(predictive["scale_events"] / days, 1),
        "predictive_replica_hours": predictive["replica_hours"],
        "oracle_replica_hours": oracle["replica_hours"],
        "oracle_slo": oracle["slo_attainment"],
        "over_oracle": round(predictive["replica_hours"] / max(oracle["replica_hours"], 1e-9), 3),
        "oracle_budget_replica_hours": budget["replica_hours"],
        "oracle_budget_slo": budget["slo_attainment"],
        "over_oracle_budget": round(
            predictive["replica_hours"] / max(budget["replica_hours"], 1e-9), 3
        ),
        "oracle_matched_replica_hours": matched["replica_hours"],
        "oracle_matched_slo": matched["slo_attainment"],
        "over_oracle_matched": round(
            predictive["replica_hours"] / max(matched["replica_hours"], 1e-9), 3
        ),
        "of_fixed_headroom": round(predictive["replica_hours"] / max(fixed, 1e-9), 3),
        "predictive_under_min": predictive["underprovisioned_minutes"],
        "reactive_under_min": rows["reactive"]["underprovisioned_minutes"],
        "reactive_slo": rows["reactive"]["slo_attainment"],
        "static_peak_slo": rows["static_peak"]["slo_attainment"],
        "mape": result.mape_overall,
        **{f"goal_{name}": met for name, met in goals.items()},
        "goals_met": sum(goals.values()),
        "seconds": round(seconds, 1),
    }


def run_cell(cell: Cell) -> dict[str, Any]:
    """Backtest one cell, keep its summary and settings, return its matrix row."""
    quiet_policy_logs()
    started = time.monotonic()
    result = run_backtest(cell.options)
    cell.options.out.mkdir(parents=True, exist_ok=True)
    write_summary(cell.options.out / "summary.csv", result.summary)
    write_settings(cell.options.out / "settings.json", result, cell.options)
    rows = {row["strategy"]: row for row in result.summary}
    return matrix_row(cell, rows, result, time.monotonic() - started)


def cells_of(options: SuiteOptions) -> list[Cell]:
    """Every (trace, capacity) cell of the chosen sets, traces written under out/traces."""
    traces_dir = options.out / "traces"
    cells = []
    for spec in TRACES:
        if spec.set not in options.sets:
            continue
        path = spec.write(traces_dir)
        forecast = {"forecast": options.forecast}
        if options.forecast == "expected":
            expected = spec.write_expected(traces_dir)
            if expected is None:
                continue
            forecast = {
                "forecast": "given",
                "forecast_file": expected[0],
                "forecast_upper_factor": round(expected[1], 4),
            }
        for capacity in options.capacities:
            cell_out = options.out / "cells" / f"{spec.name}_{capacity:g}rps"
            backtest = BacktestOptions(
                trace=path,
                out=cell_out,
                replica_rps=capacity,
                history_days=HISTORY_DAYS,
                replay_days=options.replay_days,
                headroom=options.headroom,
                seed=options.seed,
                workers=1,
                policy=options.policy,
                plan_changes_per_day=options.plan_changes_per_day,
                refit_interval_s=options.refit_interval_s,
                **forecast,
            )
            cells.append(Cell(spec, path, backtest))
    return cells


def run_suite(options: SuiteOptions) -> list[dict[str, Any]]:
    """Run every cell (`workers` at a time, the biggest first) and return the matrix rows in
    trace, capacity order."""
    cells = cells_of(options)
    order = {(c.trace.name, c.options.replica_rps): i for i, c in enumerate(cells)}
    if options.workers > 1:
        with ProcessPoolExecutor(max_workers=options.workers) as pool:
            rows = list(pool.map(run_cell, cells))
    else:
        rows = [run_cell(cell) for cell in cells]
    return sorted(rows, key=lambda r: order[(r["trace"], r["replica_rps"])])
