"""`recserve backtest-suite`: the robustness matrix's command line (lab/suite.py runs it,
lab/suite_report.py writes it)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lab.cli_common import add_forecast_arguments, fail, policy_setting
from lab.forecasts import PLAN_CHANGES_PER_DAY


def main_backtest_suite(argv: list[str] | None = None) -> int:
    """`recserve backtest-suite`: the robustness matrix (every trace x every per-replica capacity)
    as matrix.csv, matrix.md and matrix.png."""
    from lab.suite import (
        CAPACITIES,
        DEFAULT_HEADROOM,
        REPLAY_DAYS,
        SETS,
        SuiteOptions,
        run_suite,
    )
    from lab.suite_report import write_matrix

    p = argparse.ArgumentParser(
        prog="recserve backtest-suite",
        description="Backtest every trace of the matrix at every per-replica capacity and check "
        "the predictive strategy's goals in each cell.",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for matrix.csv/.md/.png")
    p.add_argument("--workers", type=int, default=2, help="cells replayed in parallel (default 2)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        choices=SETS,
        help="trace set to run (repeatable; default both: training and held-out)",
    )
    p.add_argument(
        "--capacity",
        dest="capacities",
        action="append",
        type=float,
        help=f"req/s per replica (repeatable; default {', '.join(f'{c:g}' for c in CAPACITIES)})",
    )
    p.add_argument(
        "--replay-days",
        type=int,
        default=REPLAY_DAYS,
        help=f"days replayed per cell after 7 of history (default {REPLAY_DAYS})",
    )
    p.add_argument(
        "--headroom",
        type=float,
        default=DEFAULT_HEADROOM,
        help=f"the replayed policy's headroom (default {DEFAULT_HEADROOM:g}, chosen on the "
        "training traces)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a policy_kwargs key of both replayed policies (dotted, value as YAML), e.g. "
        "predictive.follow_down=false (repeatable; for tuning runs)",
    )
    add_forecast_arguments(p, suite=True)
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        options = SuiteOptions(
            out=args.out,
            workers=args.workers,
            sets=tuple(args.sets or SETS),
            capacities=tuple(args.capacities or CAPACITIES),
            replay_days=args.replay_days,
            headroom=args.headroom,
            seed=args.seed,
            policy=tuple(policy_setting(text) for text in args.policy),
            forecast=args.forecast,
            plan_changes_per_day=args.plan_changes,
            refit_interval_s=args.refit_interval_s,
        )
        rows = run_suite(options)
    except ValueError as exc:
        return fail(str(exc))
    command = f"recserve backtest-suite --out {args.out} --workers {args.workers}"
    for name in args.sets or ():
        command += f" --set {name}"
    for capacity in args.capacities or ():
        command += f" --capacity {capacity:g}"
    if args.replay_days != REPLAY_DAYS:
        command += f" --replay-days {args.replay_days}"
    if args.headroom != DEFAULT_HEADROOM:
        command += f" --headroom {args.headroom:g}"
    if args.seed:
        command += f" --seed {args.seed}"
    for text in args.policy:
        command += f" --policy {text}"
    if args.forecast != "prophet":
        command += f" --forecast {args.forecast}"
    if args.plan_changes != PLAN_CHANGES_PER_DAY:
        command += f" --plan-changes {args.plan_changes or 'off'}"
    if args.refit_interval_s is not None:
        command += f" --refit-interval-s {args.refit_interval_s:g}"
    files = write_matrix(args.out, rows, command)
    print(files["markdown"].read_text())
    print(f"wrote {', '.join(map(str, files.values()))} in {time.monotonic() - started:.0f}s")
    return 0
