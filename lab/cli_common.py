"""What the lab's commands share: the error exit, reading a `--policy KEY=VALUE`, and the
forecast's arguments of `backtest` and `backtest-suite`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lab.forecasts import FORECAST_HELP, FORECASTS, PLAN_CHANGES_PER_DAY, SUITE_FORECASTS


def fail(message: str) -> int:
    """Print the error, return the exit status of a usage error."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def policy_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` as (key, value), the value read as YAML (true, 0.9, a list)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--policy takes KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


PLAN_CHANGES_HELP = (
    "changes a day of the planned forecast predictive reads, as the forecaster's "
    "plan_changes_per_day (default: the forecaster's default); off: the bound as forecast, and the "
    "policy's target_fill band"
)


def plan_changes(text: str) -> int | None:
    """`--plan-changes N` or `off`."""
    if text.strip().lower() in ("off", "none", "null"):
        return None
    value = int(text)
    if value < 1:
        raise ValueError(f"--plan-changes must be >= 1 or off, got {text!r}")
    return value


SUITE_FORECAST_HELP = (
    "what predictive plans with: Prophet walk-forward (default); exact, the replayed day itself; "
    "expected, each generated trace's expected rate with its noise's interval (the best day-ahead "
    "forecast its history allows; cells of traces no generator made are left out)"
)


def add_forecast_arguments(parser: argparse.ArgumentParser, suite: bool = False) -> None:
    """`--forecast`, `--plan-changes` and `--refit-interval-s` (and `backtest`'s
    `--forecast-file`, `--forecast-upper-factor`): what the predictive strategy plans with."""
    if suite:
        choices, words = SUITE_FORECASTS, SUITE_FORECAST_HELP
    else:
        choices, words = FORECASTS, FORECAST_HELP
    parser.add_argument("--forecast", choices=choices, default="prophet", help=words)
    if not suite:
        parser.add_argument(
            "--forecast-file",
            type=Path,
            metavar="CSV",
            help="with --forecast given: a `timestamp,rps` trace whose rate predictive plans with",
        )
        parser.add_argument(
            "--forecast-upper-factor",
            type=float,
            default=1.0,
            metavar="F",
            help="with --forecast given: predictive's upper bound, F x the rate (default 1)",
        )
    parser.add_argument(
        "--plan-changes",
        type=plan_changes,
        default=PLAN_CHANGES_PER_DAY,
        metavar="N|off",
        help=PLAN_CHANGES_HELP,
    )
    parser.add_argument(
        "--refit-interval-s",
        type=float,
        default=None,
        metavar="S",
        help="refit Prophet every S seconds of the replay, as the forecaster's refit_interval_s "
        "(3600 on the service), each fit planned anew (default: one fit per replayed day)",
    )
