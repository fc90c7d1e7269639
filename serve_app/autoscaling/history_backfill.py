"""Giving the Forecaster history: a `timestamp,rps` trace written into our Prometheus as the
service's own request counters, so Prophet fits on the first day instead of after two
(`recserve backfill`, `recserve up --history`).

The trace is moved by whole days so that its end falls within the last day before now: the time of
day of every rate is kept (the daily pattern Prophet learns), and the history reaches up to today.
Each model the Forecaster forecasts gets the trace as its successful requests, labelled as the
Ingress labels its own series.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import yaml

from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.rate_history import RateHistory, read_csv
from serve_app.config import AppConfig, load_config
from serve_app.monitoring.backfill import (
    BackfillResult,
    CounterSeries,
    backfill,
    counter_samples,
    request_counter_labels,
)
from serve_app.monitoring.stack_config import DEFAULT_STATE_DIR, StackConfig, StackError

DAY_S = 86400.0
# The deployment that records the request counters (serve_app.app names the Ingress so).
INGRESS_DEPLOYMENT = "Ingress"
# Prometheus's default scrape interval in our stack: rate() windows of 1 m see four samples.
SAMPLE_INTERVAL_S = 15.0


def shift_to_recent(history: RateHistory, now: float) -> RateHistory:
    """The history moved by whole days so that its end (last row plus one step) is in (now - 1 day,
    now]."""
    end = float(history.timestamps[-1]) + history.step_s()
    days = math.floor((now - end) / DAY_S)
    return RateHistory(history.timestamps + days * DAY_S, history.rps)


def application_name(config_path: Path) -> str:
    """The name of the first application in a Serve config (the `application` label)."""
    doc = yaml.safe_load(Path(config_path).read_text()) or {}
    apps = doc.get("applications") or [{}]
    return str(apps[0].get("name") or "default")


def forecast_models(cfg: AppConfig) -> list[str]:
    """The models the Forecaster forecasts, or every model when the config runs no Forecaster."""
    if cfg.forecaster:
        return ForecasterConfig.from_dict(cfg.forecaster).models
    return [m.name for m in cfg.models]


def trace_series(
    history: RateHistory, cfg: AppConfig, application: str, models: list[str], interval_s: float
) -> list[CounterSeries]:
    """One request-counter series per model, each carrying the whole trace."""
    timestamps, values = counter_samples(history.timestamps, history.rps, interval_s)
    known = {m.name: m.version for m in cfg.models}
    unknown = [name for name in models if name not in known]
    if unknown:
        raise ValueError(f"models {unknown} are not in the config; known: {sorted(known)}")
    return [
        CounterSeries(
            request_counter_labels(name, known[name], application, INGRESS_DEPLOYMENT),
            timestamps,
            values,
        )
        for name in models
    ]


def backfill_trace(
    trace: Path,
    data_dir: Path,
    config_path: Path,
    models: list[str] | None = None,
    shift: bool = True,
    now: float | None = None,
    interval_s: float = SAMPLE_INTERVAL_S,
) -> BackfillResult:
    """Write `trace` into the Prometheus data folder `data_dir` for `models` (default: those the
    Forecaster forecasts)."""
    cfg = load_config(config_path)
    timezone = ForecasterConfig.from_dict(cfg.forecaster).timezone if cfg.forecaster else "UTC"
    history = read_csv(trace, timezone)
    if len(history) < 2:
        raise ValueError(f"{trace}: a trace needs at least two rows")
    history.require_regular()
    if shift:
        history = shift_to_recent(history, time.time() if now is None else now)
    series = trace_series(
        history, cfg, application_name(config_path), models or forecast_models(cfg), interval_s
    )
    return backfill(series, data_dir)


def describe(result: BackfillResult) -> str:
    """One line for people: what went where."""
    span_h = (result.end - result.start) / 3600
    start = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.start))
    end = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.end))
    folder = result.blocks[0].parent if result.blocks else "?"
    return (
        f"backfilled {result.series} series, {result.samples} samples, {span_h:.1f} h "
        f"({start} .. {end}) as {len(result.blocks)} blocks into {folder}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve backfill`."""
    parser = argparse.ArgumentParser(
        prog="recserve backfill",
        description="Write a request-rate trace into our Prometheus as request-counter history.",
    )
    parser.add_argument("trace", type=Path, help="CSV `timestamp,rps` (e.g. lab/traces/*.csv)")
    parser.add_argument("--config", type=Path, default=Path("configs/serve_config.yaml"))
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model_name to backfill (repeatable; default: forecaster.models)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("RECSERVE_STACK_DIR", DEFAULT_STATE_DIR)),
        help="the stack's state dir; data goes to <it>/prometheus/data (default %(default)s)",
    )
    parser.add_argument(
        "--no-shift",
        action="store_true",
        help="keep the trace's own dates (default: move it by whole days to end today)",
    )
    args = parser.parse_args(argv)
    try:
        result = backfill_trace(
            args.trace,
            StackConfig(state_dir=args.state_dir).prometheus_data_dir,
            args.config,
            args.model,
            shift=not args.no_shift,
        )
    except (ValueError, StackError, OSError) as exc:
        print(f"recserve backfill: {exc}", file=sys.stderr)
        return 2
    print(describe(result))
    print("A running Prometheus loads the new blocks within about a minute.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
