"""`recserve loadtest-sim DIR`: replay a recorded load test in the backtest's simulator and compare
replicas.

The question it answers: does the real service scale the way the simulator says it would? The
simulator gets what the real deployment got: the requests locust actually sent, second by second
(from `locust_stats_history.csv`), the policy settings of the deployment in the serve config, the
same wall-clock start (time windows such as `peak-hours` are read on the real clock) and the
measured replica start-up time. It writes, beside the load test's own report:

- `DIR/simulated.csv`: per second, the offered load, the simulated target and ready replicas and
  the simulated latency range;
- `DIR/replicas_vs_sim.png`: real running/target replicas over the simulated ones, with the load
  on top;
- `DIR/simulated.md`: replica-seconds, peaks, scale events and time to the first scale-up, real
  against simulated, and how often the two agree.

Parsing (loadtests/replay_inputs.py), simulation (here) and comparison
(loadtests/replay_compare.py) are pure functions; only `main` reads and writes files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lab.service_model import LatencyCurve
from lab.simulator import SimConfig, service_for, simulate
from loadtests.replay_compare import compare, plot_replay, render_comparison
from loadtests.replay_inputs import (
    DeploymentSettings,
    ReplayOptions,
    deployment_settings,
    offered_load,
    real_replicas,
    run_start_from,
)


def simulate_replay(
    load: np.ndarray, settings: DeploymentSettings, run_start: float, options: ReplayOptions
) -> pd.DataFrame:
    """Per-second simulated replicas for this offered load (Poisson around each second's count)."""
    # The controllers bring Ray in: only a replay pays for importing it, not `--help`.
    from lab.controllers import ForecastPolicyController, quiet_policy_logs

    quiet_policy_logs()
    curve = LatencyCurve.profile(options.profile)
    max_batch = min(float(settings.max_batch_size), curve.batch_sizes[-1])
    model, _ = service_for(
        curve,
        options.slo_ms,
        options.replica_rps or None,
        batch_wait_ms=settings.batch_wait_ms,
        max_batch=max_batch,
    )
    config = SimConfig(
        slo_ms=options.slo_ms,
        startup_s=options.startup_s,
        scrape_interval_s=options.scrape_interval_s,
        min_replicas=settings.min_replicas,
        max_replicas=settings.max_replicas,
    )
    arrivals = np.random.default_rng(options.seed).poisson(load)
    # No forecast: a fresh service has no history to forecast from (docs/LOADTESTS.md).
    controller = ForecastPolicyController(config, settings.policy_kwargs)
    run = simulate(
        "simulated",
        load,
        arrivals,
        model,
        config,
        run_start,
        controller=controller,
        initial_replicas=settings.initial_replicas,
    )
    target = np.full(len(load), settings.initial_replicas, dtype=int)
    reason = np.full(len(load), "", dtype=object)
    for when, value, code in controller.changes:
        second = int(round(when - run_start))
        target[second:] = value
        reason[second] = code
    return pd.DataFrame(
        {
            "elapsed_s": np.arange(len(load)),
            "offered_rps": load,
            "arrivals": arrivals,
            "simulated_target": target,
            "simulated_ready": run.ready,
            "simulated_reason": reason,
            "simulated_latency_lo_ms": run.lat_lo_ms,
            "simulated_latency_hi_ms": run.lat_hi_ms,
        }
    )


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `recserve loadtest-sim`."""
    parser = argparse.ArgumentParser(
        prog="recserve loadtest-sim",
        description="Replay a recorded load test (a `recserve loadtest` folder) in the "
        "autoscaling simulator and compare real and simulated replicas.",
    )
    parser.add_argument("dir", type=Path, help="the load test's --out folder")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/serve_config.yaml"),
        help="serve config the run used",
    )
    parser.add_argument(
        "--deployment", help="deployment or model name (default: the first with a custom policy)"
    )
    parser.add_argument(
        "--startup-s",
        type=int,
        default=15,
        help="measured replica start-up time in seconds (default 15)",
    )
    parser.add_argument(
        "--replica-rps",
        type=float,
        help="per-replica req/s at the SLO (default: the policy's predictive.replica_capacity_qps)",
    )
    parser.add_argument(
        "--profile", default="cpu", help="batch-latency profile: cpu, gpu or a CSV path"
    )
    parser.add_argument("--slo-ms", type=float, default=500.0, help="latency SLO in ms")
    parser.add_argument(
        "--scrape-interval-s", type=int, default=15, help="Prometheus scrape interval of the run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve loadtest-sim`: 0 when the three files are written, 2 when an input
    is missing or wrong."""
    args = build_parser().parse_args(argv)
    folder: Path = args.dir
    try:
        history = pd.read_csv(folder / "locust_stats_history.csv", keep_default_na=False)
        series = pd.read_csv(folder / "series.csv")
        settings = deployment_settings(yaml.safe_load(args.config.read_text()), args.deployment)
        run_start = run_start_from(series, history)
        duration = float(pd.to_numeric(history["Timestamp"], errors="coerce").max() - run_start)
        replica_rps = args.replica_rps or (settings.policy_kwargs.get("predictive") or {}).get(
            "replica_capacity_qps"
        )
        options = ReplayOptions(
            args.startup_s,
            replica_rps,
            args.profile,
            args.slo_ms,
            args.scrape_interval_s,
            args.seed,
        )
        load = offered_load(history, run_start, duration)
        real = real_replicas(series, settings.deployment, duration)
        simulated = simulate_replay(load, settings, run_start, options)
        comparison = compare(real, simulated)
    except (OSError, ValueError, KeyError) as exc:
        print(f"recserve loadtest-sim: {exc}", file=sys.stderr)
        return 2
    simulated.merge(real, on="elapsed_s", how="left").to_csv(folder / "simulated.csv", index=False)
    plot_replay(real, simulated, settings.deployment, folder / "replicas_vs_sim.png")
    text = render_comparison(settings.deployment, comparison, options, simulated)
    (folder / "simulated.md").write_text(text)
    print(text)
    print(f"Wrote {folder}/simulated.csv, {folder}/replicas_vs_sim.png, {folder}/simulated.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
