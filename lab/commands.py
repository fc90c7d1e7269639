"""The lab's command line: fit / forecast / backtest / backtest-suite / plot / gen-traces
(`recserve <command>` dispatches here; `python -m lab.commands <command>` runs them without the
dispatcher)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from lab.cli_common import add_forecast_arguments, fail
from lab.suite_cli import main_backtest_suite

# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def _fit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recserve fit", description="Fit the Prophet forecaster on request-rate history."
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="CSV `timestamp,rps` history")
    source.add_argument(
        "--prometheus", metavar="ADDRESS", help="Prometheus base URL, e.g. http://127.0.0.1:9090"
    )
    p.add_argument(
        "--model-name",
        default="efficientnet_lite0",
        help="model_name label to read from Prometheus",
    )
    p.add_argument(
        "--days", type=float, default=14, help="days of Prometheus history to read (default 14)"
    )
    p.add_argument(
        "--step-s", type=float, default=300, help="history resolution in seconds (default 300)"
    )
    p.add_argument(
        "--timezone",
        default="UTC",
        help="local time zone of the daily pattern (IANA name or +08:00)",
    )
    p.add_argument(
        "--holidays", metavar="COUNTRY", help="add public holidays of this country (e.g. CN, US)"
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the fitted model JSON")
    return p


def main_fit(argv: list[str] | None = None) -> int:
    """`recserve fit`: fit on a CSV or Prometheus history and save the model as JSON."""
    from serve_app.autoscaling.forecaster import ForecasterSettings, RateForecaster
    from serve_app.autoscaling.rate_history import prometheus_rate_history, read_csv
    from serve_app.monitoring.prometheus_api import PrometheusUnavailable

    args = _fit_parser().parse_args(argv)
    try:
        settings = ForecasterSettings(timezone=args.timezone, holidays_country=args.holidays)
        if args.trace:
            history = read_csv(args.trace, timezone=args.timezone)
        else:
            end = time.time()
            history = prometheus_rate_history(
                args.prometheus, args.model_name, end - args.days * 86400, end, args.step_s
            )
        if len(history) == 0:
            return fail(
                "the history is empty: is the model receiving traffic, and is the model name right?"
            )
        forecaster = RateForecaster(settings)
        outcome = forecaster.fit(history.timestamps, history.rps)
    except (ValueError, PrometheusUnavailable) as exc:
        return fail(str(exc))
    print(f"{outcome.status}: {outcome.message}")
    if outcome.status != "ok":
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(forecaster.to_json())
    print(f"saved {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------
# forecast
# --------------------------------------------------------------------------------------------------


def _forecast_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recserve forecast", description="Forecast request rate with a fitted model."
    )
    p.add_argument("--model-file", type=Path, required=True, help="JSON written by `recserve fit`")
    p.add_argument("--start", help="ISO time or unix seconds to start from (default: now)")
    p.add_argument("--horizon-h", type=float, default=24, help="hours ahead (default 24)")
    p.add_argument(
        "--step-min", type=float, default=60, help="minutes between points (default 60: hourly)"
    )
    p.add_argument(
        "--capacity",
        type=float,
        help="per-replica QPS at the SLO: adds the replicas to ask for at each point",
    )
    p.add_argument(
        "--headroom", type=float, default=0.9, help="share of capacity to plan for (default 0.9)"
    )
    p.add_argument(
        "--lead-time-s", type=float, default=180, help="replica start-up lead time (default 180)"
    )
    p.add_argument("--out", type=Path, help="CSV to write (default: print)")
    return p


def main_forecast(argv: list[str] | None = None) -> int:
    """`recserve forecast`: print or write the next hours of yhat / lower / upper (and replicas)."""
    from serve_app.autoscaling.forecaster import RateForecaster
    from serve_app.autoscaling.planner import replica_plan
    from serve_app.autoscaling.rate_history import parse_timestamp

    args = _forecast_parser().parse_args(argv)
    try:
        if not args.model_file.is_file():
            return fail(
                f"model file {str(args.model_file)!r} does not exist: run `recserve fit` first"
            )
        forecaster = RateForecaster.from_json(args.model_file.read_text())
        start = parse_timestamp(args.start, timezone.utc) if args.start else time.time()
        forecast = forecaster.predict(start, args.horizon_h * 3600, args.step_min * 60)
        plan = {}
        if args.capacity:
            # The replicas to ask for at t so they are ready for the upper bound at t + lead time.
            plan = dict(
                replica_plan(
                    forecast.timestamps,
                    forecast.upper,
                    args.lead_time_s,
                    args.capacity,
                    args.headroom,
                )
            )
        header = ["timestamp", "yhat", "lower", "upper"] + (["replicas"] if args.capacity else [])
        rows = []
        for t, y, lo, up in zip(
            forecast.timestamps, forecast.yhat, forecast.lower, forecast.upper, strict=True
        ):
            row = [
                datetime.fromtimestamp(t, timezone.utc).isoformat(),
                f"{y:.2f}",
                f"{lo:.2f}",
                f"{up:.2f}",
            ]
            if args.capacity:
                row.append(plan.get(t, ""))
            rows.append(row)
    except ValueError as exc:
        return fail(str(exc))
    out = args.out.open("w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    finally:
        if args.out:
            out.close()
    return 0


# --------------------------------------------------------------------------------------------------
# backtest / plot
# --------------------------------------------------------------------------------------------------


def _backtest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recserve backtest",
        description="Replay a `timestamp,rps` trace against static_peak, fixed_headroom, "
        "ray_default, reactive, predictive and oracle, all judged at one SLO point.",
    )
    p.add_argument(
        "--trace", type=Path, required=True, help="CSV `timestamp,rps` at a regular step"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for summary.csv, timeline.csv, backtest.png",
    )
    p.add_argument(
        "--replica-rps",
        type=float,
        help="sustainable per-replica QPS at the SLO (overrides the profile's)",
    )
    p.add_argument(
        "--slo-ms",
        type=float,
        default=500.0,
        help="latency SLO in ms (default 500, the seeds' P99 alert)",
    )
    p.add_argument(
        "--slo-target",
        type=float,
        default=0.99,
        help="share of requests within the SLO every strategy is judged at and the yardsticks are "
        "sized for (default 0.99)",
    )
    p.add_argument(
        "--startup-s", type=int, default=120, help="replica start-up time in seconds (default 120)"
    )
    p.add_argument(
        "--history-days", type=int, default=7, help="leading days used only as history (default 7)"
    )
    p.add_argument(
        "--replay-days",
        type=int,
        help="days to replay after the history (default: the rest of the trace)",
    )
    p.add_argument(
        "--price-per-replica-hour",
        type=float,
        default=1.0,
        help="cost of one replica-hour (default 1.0)",
    )
    p.add_argument(
        "--profile",
        default="cpu",
        help="batch-latency profile: cpu, gpu or a CSV path (default cpu)",
    )
    p.add_argument(
        "--headroom",
        type=float,
        default=0.95,
        help="share of the per-replica capacity to plan for, in thresholds and the forecast "
        "floor (default 0.95)",
    )
    p.add_argument(
        "--max-replicas",
        type=int,
        help="max_replicas of the adaptive strategies (default: 1.5 x static_peak's)",
    )
    p.add_argument(
        "--timezone",
        help="local time zone of the trace's daily pattern (default: the trace's UTC offset)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes replaying strategies in parallel (default 2)",
    )
    add_forecast_arguments(p)
    return p


def main_backtest(argv: list[str] | None = None) -> int:
    """`recserve backtest`: write DIR/summary.csv, DIR/timeline.csv and DIR/backtest.png, print the
    table."""
    from lab.backtest import BacktestOptions, run_backtest
    from lab.report import write_backtest

    args = _backtest_parser().parse_args(argv)
    started = time.monotonic()
    try:
        options = BacktestOptions(
            trace=args.trace,
            out=args.out,
            replica_rps=args.replica_rps,
            slo_ms=args.slo_ms,
            slo_target=args.slo_target,
            startup_s=args.startup_s,
            history_days=args.history_days,
            replay_days=args.replay_days,
            price_per_replica_hour=args.price_per_replica_hour,
            profile=args.profile,
            timezone=args.timezone,
            headroom=args.headroom,
            seed=args.seed,
            workers=args.workers,
            max_replicas=args.max_replicas,
            forecast=args.forecast,
            forecast_file=args.forecast_file,
            forecast_upper_factor=args.forecast_upper_factor,
            plan_changes_per_day=args.plan_changes,
            refit_interval_s=args.refit_interval_s,
        )
        result = run_backtest(options)
    except ValueError as exc:
        return fail(str(exc))
    files = write_backtest(result, options)
    print(format_summary(result.summary))
    if result.mape_overall is not None:
        days = ", ".join("-" if m is None else f"{m:.1f}" for m in result.mape_by_day)
        print(f"\nday-ahead forecast MAPE: {result.mape_overall:.1f}% (per replayed day: {days})")
    else:
        statuses = ", ".join(sorted(set(result.day_statuses)))
        print(f"\nno forecast: {statuses} (predictive ran reactive)")
    print(
        f"every strategy judged at the same SLO point: {options.slo_target:.1%} of requests "
        f"within {options.slo_ms:g} ms"
    )
    factor = result.oracle_load_factor
    print(
        f"capacity {result.capacity_rps:.1f} req/s per replica at the SLO; static_peak holds "
        f"{result.static_replicas} (the fewest that keep the target), fixed_headroom "
        f"{result.headroom_replicas}; oracle provisions "
        + (f"{factor:.3f} x the true load" if factor else "2 x the true load and still misses")
    )
    print(f"wrote {', '.join(map(str, files.values()))} in {time.monotonic() - started:.0f}s")
    return 0


def format_summary(rows: list[dict]) -> str:
    """The summary as an aligned text table."""
    from lab.backtest import SUMMARY_COLUMNS

    cells = [list(SUMMARY_COLUMNS)] + [[str(row[c]) for c in SUMMARY_COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(SUMMARY_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def main_plot(argv: list[str] | None = None) -> int:
    """`recserve plot --dir DIR`: redraw DIR/backtest.png from a backtest's files."""
    from lab.backtest import BacktestOptions
    from lab.report import write_plot

    p = argparse.ArgumentParser(
        prog="recserve plot", description="Redraw backtest.png from a backtest directory."
    )
    p.add_argument("--dir", type=Path, required=True, help="directory a backtest wrote")
    p.add_argument("--out", type=Path, help="PNG to write (default DIR/backtest.png)")
    args = p.parse_args(argv)
    settings_path, summary_path = args.dir / "settings.json", args.dir / "summary.csv"
    for needed in (settings_path, summary_path, args.dir / "timeline.csv"):
        if not needed.is_file():
            return fail(f"{needed} is missing: run `recserve backtest --out {args.dir}` first")
    settings = json.loads(settings_path.read_text())
    fields = set(BacktestOptions.__dataclass_fields__)
    options = BacktestOptions(
        **{
            k: (Path(v) if k in ("trace", "out", "forecast_file") and v is not None else v)
            for k, v in settings.items()
            if k in fields
        }
    )
    with summary_path.open(newline="") as f:
        summary = [
            {k: (v if k == "strategy" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    out = args.out or args.dir / "backtest.png"
    write_plot(
        out,
        args.dir / "timeline.csv",
        summary,
        options,
        settings["capacity_rps_per_replica"],
        settings.get("mape_overall"),
    )
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------------
# gen-traces and the combined entry point
# --------------------------------------------------------------------------------------------------


def main_gen_traces(argv: list[str] | None = None) -> int:
    """`recserve gen-traces`: rewrite the bundled traces from their seeded generator."""
    from lab.tracegen import TRACES_DIR, regenerate

    p = argparse.ArgumentParser(
        prog="recserve gen-traces", description="Regenerate the bundled traffic traces."
    )
    p.add_argument("--out", type=Path, default=TRACES_DIR, help=f"directory (default {TRACES_DIR})")
    args = p.parse_args(argv)
    for path in regenerate(args.out):
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------------
# backtest-suite
# --------------------------------------------------------------------------------------------------


COMMANDS = {
    "fit": main_fit,
    "forecast": main_forecast,
    "backtest": main_backtest,
    "backtest-suite": main_backtest_suite,
    "plot": main_plot,
    "gen-traces": main_gen_traces,
}


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.commands COMMAND ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m lab.commands {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
