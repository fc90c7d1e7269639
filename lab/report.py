"""Backtest outputs: summary.csv, timeline.csv, settings.json and a plot a person reads at a
glance."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lab.backtest import STRATEGIES, SUMMARY_COLUMNS, BacktestOptions, BacktestResult

COLORS = {
    "static_peak": "#7f7f7f",
    "fixed_headroom": "#bcbd22",
    "ray_default": "#9467bd",
    "reactive": "#ff7f0e",
    "predictive": "#1f77b4",
    "oracle": "#2ca02c",
    "oracle_budget": "#17becf",
    "oracle_matched": "#98df8a",
}


def write_backtest(result: BacktestResult, options: BacktestOptions) -> dict[str, Path]:
    """Write every output of a backtest into `options.out`; returns {what: path}."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    return {
        "summary": write_summary(out / "summary.csv", result.summary),
        "timeline": write_timeline(out / "timeline.csv", result, options.slo_ms),
        "plot": write_plot(
            out / "backtest.png",
            out / "timeline.csv",
            result.summary,
            options,
            result.capacity_rps,
            result.mape_overall,
        ),
        "settings": write_settings(out / "settings.json", result, options),
    }


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """summary.csv: one row per strategy, columns in the documented order."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in SUMMARY_COLUMNS})
    return path


def write_timeline(path: Path, result: BacktestResult, slo_ms: float) -> Path:
    """timeline.csv: per trace step of the replayed window, the load, the forecast and each
    strategy's replicas."""
    rate, runs, sim_start = result.rate, result.runs, result.sim_start
    step = int(result.step_s)
    first = result.window.start
    n_steps = (result.window.stop - first) // step
    header = ["timestamp", "load_rps", "forecast_yhat", "forecast_upper"]
    for run in runs:
        header += [f"{run.name}_replicas", f"{run.name}_ready", f"{run.name}_slo_miss"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for k in range(n_steps):
            a, b = first + k * step, first + (k + 1) * step
            t = sim_start + a
            forecast = result.forecasts.latest(t)
            yhat = forecast.at(t, "yhat") if forecast else None
            upper = forecast.at(t, "upper") if forecast else None
            row = [
                datetime.fromtimestamp(t, timezone.utc).isoformat(),
                f"{float(rate[a:b].mean()):.2f}",
                "" if yhat is None else f"{yhat:.2f}",
                "" if upper is None else f"{upper:.2f}",
            ]
            for run in runs:
                counts = run.arrivals[a:b].astype(float)
                lo, hi = run.lat_lo_ms[a:b], run.lat_hi_ms[a:b]
                over = np.clip((hi - slo_ms) / np.maximum(hi - lo, 1e-9), 0, 1)
                miss = float((counts * over).sum() / counts.sum()) if counts.sum() > 0 else 0.0
                row += [int(run.allocated[a:b].max()), int(run.ready[a:b].min()), f"{miss:.4f}"]
            writer.writerow(row)
    return path


def write_plot(
    path: Path,
    timeline_path: Path,
    summary: list[dict[str, Any]],
    options: BacktestOptions,
    capacity: float,
    mape_overall: float | None,
) -> Path:
    """backtest.png: load and forecast on top, replicas per strategy below, SLO misses marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    from serve_app.autoscaling.rate_history import trace_utc_offset
    from serve_app.autoscaling.zones import zone_of

    zone = zone_of(options.timezone or trace_utc_offset(options.trace) or "UTC")
    frame = pd.read_csv(timeline_path)
    when = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_convert(zone).dt.tz_localize(None)

    long_replay = (when.iloc[-1] - when.iloc[0]) >= pd.Timedelta(days=1)
    panels = 3 if long_replay else 2
    fig = plt.figure(figsize=(15, 12 if long_replay else 8.5))
    grid = fig.add_gridspec(panels, 1, height_ratios=[1, 1.25, 1.0][:panels], hspace=0.32)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)
    top.plot(when, frame["load_rps"], color="black", lw=0.8, label="load (trace)")
    if frame["forecast_yhat"].notna().any():
        top.plot(
            when,
            frame["forecast_yhat"],
            color=COLORS["predictive"],
            lw=1.0,
            label="day-ahead forecast",
        )
        top.fill_between(
            when,
            frame["forecast_yhat"],
            frame["forecast_upper"],
            color=COLORS["predictive"],
            alpha=0.2,
            label=(
                "forecast upper bound"
                if options.plan_changes_per_day is None
                else f"upper bound planned in steps ({options.plan_changes_per_day} changes a day)"
            ),
        )
    title = {
        "prophet": "load and walk-forward forecast (each day fitted only on the days before it)",
        "exact": "load and the exact forecast (the replayed day itself)",
        "given": f"load and the given forecast ({Path(options.forecast_file or '').name})",
    }[options.forecast]
    if mape_overall is not None:
        title += f" — day-ahead MAPE {mape_overall:.1f}%"
    top.set_title(title, fontsize=10)
    top.set_ylabel("requests / s")
    top.set_ylim(0, frame["load_rps"].max() * 1.25)
    top.legend(loc="upper left", fontsize=8, ncol=3)
    top.grid(alpha=0.3)

    rows = {row["strategy"]: row for row in summary}
    for name in STRATEGIES:
        column = f"{name}_replicas"
        if column not in frame:
            continue
        row = rows[name]
        label = (
            f"{name}: {row['replica_hours']:.0f} replica-h, "
            f"{row['slo_attainment'] * 100:.2f}% within SLO, "
            f"{row['underprovisioned_minutes']:.0f} min under-provisioned"
        )
        width = 1.8 if name == "predictive" else 1.0
        alpha = 0.45 if name in ("static_peak", "fixed_headroom", "ray_default") else 0.95
        bottom.step(
            when,
            frame[column],
            where="post",
            color=COLORS[name],
            lw=width,
            label=label,
            alpha=alpha,
        )
        misses = frame[f"{name}_slo_miss"] > 0.01
        if misses.any():
            bottom.scatter(
                when[misses],
                frame.loc[misses, column],
                marker="x",
                s=22,
                color=COLORS[name],
                zorder=5,
            )
    tallest = max(frame[f"{n}_replicas"].max() for n in STRATEGIES if f"{n}_replicas" in frame)
    bottom.set_ylim(0, tallest * 1.6)  # room for the legend above the lines
    bottom.set_ylabel("replicas")
    bottom.set_title(
        "replicas per strategy (x: a trace step where more than 1% of requests missed the "
        f"{options.slo_ms:.0f} ms SLO); capacity {capacity:.0f} req/s per replica at the SLO, "
        f"start-up {options.startup_s}s",
        fontsize=10,
    )
    bottom.legend(loc="upper left", fontsize=8, ncol=2)
    bottom.grid(alpha=0.3)
    if long_replay:
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%a %m-%d"))
        bottom.xaxis.set_major_locator(mdates.DayLocator())
        _plot_morning_ramp(fig.add_subplot(grid[2]), frame, when, capacity)
    else:
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%a %H:%M"))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_morning_ramp(ax, frame, when, capacity: float) -> None:
    """Zoom on the first replayed weekday morning: ready capacity of each adaptive strategy against
    the load."""
    import matplotlib.dates as mdates

    mornings = [d for d in sorted(set(when.dt.normalize())) if d.day_of_week < 5]
    if not mornings:
        ax.set_visible(False)
        return
    start = mornings[0] + np.timedelta64(5, "h")
    end = mornings[0] + np.timedelta64(13, "h")
    part = (when >= start) & (when < end)
    ax.plot(when[part], frame.loc[part, "load_rps"], color="black", lw=1.2, label="load")
    for name in ("reactive", "predictive", "oracle"):
        column = f"{name}_ready"
        if column in frame:
            ready_capacity = frame.loc[part, column] * capacity
            ax.step(
                when[part],
                ready_capacity,
                where="post",
                color=COLORS[name],
                lw=1.6 if name == "predictive" else 1.1,
                label=f"{name}: ready replicas x capacity",
            )
            short = part & (frame[column] * capacity < frame["load_rps"])
            if short.any():
                ax.scatter(
                    when[short],
                    frame.loc[short, "load_rps"],
                    marker="v",
                    s=18,
                    color=COLORS[name],
                    zorder=5,
                )
    ax.set_title(
        f"{mornings[0]:%a %m-%d} morning ramp: ready capacity against the load "
        "(triangles: ready capacity below the load)",
        fontsize=10,
    )
    ax.set_ylabel("requests / s")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def write_settings(path: Path, result: BacktestResult, options: BacktestOptions) -> Path:
    """settings.json: every option, the fleet's sizing and the forecast error per day (what
    `recserve plot` reads back)."""
    payload = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "capacity_rps_per_replica": round(result.capacity_rps, 2),
        "planning_capacity_rps_per_replica": round(result.planning_capacity_rps, 2),
        "static_peak_replicas": result.static_replicas,
        "fixed_headroom_replicas": result.headroom_replicas,
        "oracle_load_factor": result.oracle_load_factor,
        "max_replicas": result.max_replicas,
        "lead_time_s": result.lead_time_s,
        "mape_by_day": result.mape_by_day,
        "mape_overall": result.mape_overall,
        "forecast_status_by_day": result.day_statuses,
        "predictive_fleet_capacity_qps": result.fleet_table,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
