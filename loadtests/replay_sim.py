"""`recserve loadtest-sim DIR`: replay a recorded load test in the backtest's simulator and compare
replicas.

The question it answers: does the real service scale the way the simulator says it would? The
simulator gets what the real deployment got: the requests locust actually sent, second by second
(from `locust_stats_history.csv`), the policy settings of the deployment in the serve config, the
same wall-clock start (time windows such as `peak-hours` are read on the real clock) and the
measured replica start-up time. It writes, beside the load test's own report:

- `DIR/simulated.csv`: per second, the offered load, the simulated target and ready replicas and the
  simulated latency range;
- `DIR/replicas_vs_sim.png`: real running/target replicas over the simulated ones, with the load on top;
- `DIR/simulated.md`: replica-seconds, peaks, scale events and time to the first scale-up, real against
  simulated, and how often the two agree.

Parsing, simulation and comparison are pure functions; only `main` reads and writes files.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from loadtests.checks import INFER_NAME, PREDICT_NAME, SHED_NAME
from serve_app.config import AppConfig, recognizer_deployment_name

OFFERED_NAMES = (
    PREDICT_NAME,
    INFER_NAME,
    SHED_NAME,
)  # every request that reached (or was shed by) the model


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def offered_load(history: pd.DataFrame, run_start: float, duration_s: float) -> np.ndarray:
    """Recognition requests sent in each second of the run, from locust's full history (cumulative
    counts).

    Locust writes one row per request name and second with `Total Request Count` so far; the
    per-second difference of their sum is what arrived in that second. Seconds locust skipped get
    the average of the gap.
    """
    n = int(math.ceil(duration_s))
    rows = history[history["Name"].isin(OFFERED_NAMES)].copy()
    if rows.empty:
        raise ValueError(
            "locust's history has no recognition requests (was the run made with --csv-full-history?)"
        )
    rows["Timestamp"] = pd.to_numeric(rows["Timestamp"], errors="coerce")
    rows["Total Request Count"] = pd.to_numeric(rows["Total Request Count"], errors="coerce")
    rows = rows.dropna(subset=["Timestamp", "Total Request Count"])
    # Each name's count carried forward, so a name missing at some second does not look like a drop.
    wide = rows.pivot_table(
        index="Timestamp", columns="Name", values="Total Request Count", aggfunc="max"
    )
    wide = wide.sort_index().ffill().fillna(0.0)
    total = wide.sum(axis=1)
    seconds = np.arange(n + 1, dtype=float)
    cumulative = np.interp(
        run_start + seconds, total.index.to_numpy(float), total.to_numpy(float), left=0.0
    )
    return np.clip(np.diff(cumulative), 0.0, None)


def run_start_from(series: pd.DataFrame, history: pd.DataFrame) -> float:
    """The run's start (unix s): series.csv carries it as timestamp - elapsed_s; else locust's first
    second."""
    if len(series):
        return float((series["timestamp"] - series["elapsed_s"]).median())
    stamps = pd.to_numeric(history["Timestamp"], errors="coerce").dropna()
    if stamps.empty:
        raise ValueError("neither series.csv nor locust's history say when the run started")
    return float(stamps.min())


@dataclass(frozen=True)
class DeploymentSettings:
    """What the simulator needs from one deployment of the serve config."""

    deployment: str
    policy_kwargs: dict[str, Any]
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    max_batch_size: int
    batch_wait_ms: float


def deployment_settings(
    config: dict[str, Any], deployment: str | None = None
) -> DeploymentSettings:
    """The autoscaled model deployment named `deployment` (default: the first with a custom policy).

    The config goes through the service's own validation, so defaults the YAML leaves out are the
    service's.
    """
    candidates = []
    for app in config.get("applications") or []:
        for model in AppConfig.model_validate(app.get("args") or {}).models:
            scaling = model.autoscaling_config or {}
            policy = scaling.get("policy") or {}
            if not policy.get("policy_kwargs"):
                continue
            name = recognizer_deployment_name(model.name)
            candidates.append(name)
            if deployment in (None, name, model.name):
                return DeploymentSettings(
                    deployment=name,
                    policy_kwargs=dict(policy["policy_kwargs"]),
                    min_replicas=int(scaling.get("min_replicas", 1)),
                    max_replicas=int(scaling.get("max_replicas", 1)),
                    initial_replicas=int(
                        scaling.get("initial_replicas") or scaling.get("min_replicas", 1)
                    ),
                    max_batch_size=model.max_batch_size,
                    batch_wait_ms=1000.0 * model.batch_wait_timeout_s,
                )
    known = ", ".join(candidates) or "none"
    raise ValueError(
        f"no autoscaled deployment {deployment or ''} with policy_kwargs in the config (found: {known})"
    )


# --------------------------------------------------------------------------------------------------
# Simulation and comparison
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """How the simulated cluster is timed and sized."""

    startup_s: int = 15
    replica_rps: float | None = (
        None  # sustainable per-replica req/s at the SLO; None: the profile's own
    )
    profile: str = "cpu"
    slo_ms: float = 500.0
    scrape_interval_s: int = 15
    seed: int = 0


def simulate_replay(
    load: np.ndarray, settings: DeploymentSettings, run_start: float, options: ReplayOptions
) -> pd.DataFrame:
    """Per-second simulated replicas for this offered load (Poisson around each second's count)."""
    from lab.simulator import (
        ForecastPolicyController,
        LatencyCurve,
        SimConfig,
        quiet_policy_logs,
        service_for,
        simulate,
    )

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
    controller = ForecastPolicyController(
        config, settings.policy_kwargs
    )  # no forecast: see the doc
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


def real_replicas(series: pd.DataFrame, deployment: str, duration_s: float) -> pd.DataFrame:
    """Real running and target replicas of `deployment` per second of the run (each sample held
    until the next)."""
    seconds = np.arange(int(math.ceil(duration_s)))
    out = pd.DataFrame({"elapsed_s": seconds})
    for name, column in (("running_replicas", "real_running"), ("target_replicas", "real_target")):
        frame = series[(series["series"] == name) & (series["label"] == deployment)].sort_values(
            "elapsed_s"
        )
        if frame.empty:
            raise ValueError(f"series.csv has no {name} for {deployment}")
        index = np.searchsorted(frame["elapsed_s"].to_numpy(float), seconds, side="right") - 1
        values = frame["value"].to_numpy(float)
        out[column] = np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)
    return out


def _changes(seconds: np.ndarray, values: np.ndarray) -> list[tuple[int, float]]:
    """(second, new value) at every change of a step series, NaNs ignored."""
    out, last = [], None
    for t, value in zip(seconds, values):
        if np.isnan(value):
            continue
        if last is not None and value != last:
            out.append((int(t), float(value)))
        last = value
    return out


@dataclass(frozen=True)
class Comparison:
    """Real against simulated over the run."""

    replica_seconds_real: float
    replica_seconds_sim: float
    peak_real: int
    peak_sim: int
    scale_events_real: int
    scale_events_sim: int
    first_up_real_s: int | None
    first_up_sim_s: int | None
    last_down_real_s: int | None
    last_down_sim_s: int | None
    agreement: float  # share of seconds where real running == simulated ready
    within_one: float  # share of seconds where they differ by at most one replica


def compare(real: pd.DataFrame, simulated: pd.DataFrame) -> Comparison:
    """Replica figures side by side (targets for events and timings, running/ready for cost and
    agreement)."""
    both = real.merge(simulated, on="elapsed_s").dropna(subset=["real_running", "real_target"])
    if both.empty:
        raise ValueError("no second has both real and simulated replicas")
    running, ready = both["real_running"].to_numpy(float), both["simulated_ready"].to_numpy(float)
    seconds = both["elapsed_s"].to_numpy()
    real_events = _changes(seconds, both["real_target"].to_numpy(float))
    sim_events = _changes(seconds, both["simulated_target"].to_numpy(float))

    def first_up(events, start):
        return next((t for t, v in events if v > start), None)

    def last_down(events, start):
        downs, previous = [], start
        for t, value in events:
            if value < previous:
                downs.append(t)
            previous = value
        return downs[-1] if downs else None

    real_start = float(both["real_target"].iloc[0])
    sim_start = float(both["simulated_target"].iloc[0])
    return Comparison(
        replica_seconds_real=float(running.sum()),
        replica_seconds_sim=float(ready.sum()),
        peak_real=int(running.max()),
        peak_sim=int(ready.max()),
        scale_events_real=len(real_events),
        scale_events_sim=len(sim_events),
        first_up_real_s=first_up(real_events, real_start),
        first_up_sim_s=first_up(sim_events, sim_start),
        last_down_real_s=last_down(real_events, real_start),
        last_down_sim_s=last_down(sim_events, sim_start),
        agreement=float(np.mean(running == ready)),
        within_one=float(np.mean(np.abs(running - ready) <= 1)),
    )


def render_comparison(
    deployment: str, comparison: Comparison, options: ReplayOptions, simulated: pd.DataFrame
) -> str:
    """simulated.md."""
    offered = simulated["offered_rps"].to_numpy()
    changes = simulated[simulated["simulated_reason"].astype(str) != ""]
    decisions = (
        "; ".join(
            f"{row.elapsed_s} s: {row.simulated_reason} → {row.simulated_target}"
            for row in changes.itertuples()
        )
        or "none"
    )

    def seconds(value):
        return "–" if value is None else f"{value} s"

    c = comparison
    capacity = (
        f"{options.replica_rps:g} req/s per replica"
        if options.replica_rps
        else f"the `{options.profile}` profile"
    )
    return "\n".join(
        [
            f"# Real against simulated replicas: {deployment}",
            "",
            f"Simulator fed the {int(offered.sum())} recognition requests locust sent ({offered.max():.0f} req/s at the "
            f"busiest second), the deployment's policy_kwargs, replica start-up {options.startup_s} s, capacity from "
            f"{capacity}, SLO {options.slo_ms:g} ms, Prometheus scrape {options.scrape_interval_s} s.",
            "",
            "| | real | simulated |",
            "|---|---|---|",
            f"| replica-seconds (running / ready) | {c.replica_seconds_real:.0f} | {c.replica_seconds_sim:.0f} |",
            f"| peak replicas | {c.peak_real} | {c.peak_sim} |",
            f"| scale events (target changes) | {c.scale_events_real} | {c.scale_events_sim} |",
            f"| first scale-up (target) | {seconds(c.first_up_real_s)} | {seconds(c.first_up_sim_s)} |",
            f"| last scale-down (target) | {seconds(c.last_down_real_s)} | {seconds(c.last_down_sim_s)} |",
            "",
            f"Running replicas equal to the simulated ready replicas {100 * c.agreement:.0f}% of the seconds; within one "
            f"replica {100 * c.within_one:.0f}%.",
            "",
            f"Simulated decisions (policy reason code → target): {decisions}.",
            "",
        ]
    )


def plot_replay(real: pd.DataFrame, simulated: pd.DataFrame, deployment: str, path: Path) -> Path:
    """Load on top; real running/target and simulated ready/target replicas below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load, replicas) = plt.subplots(
        2,
        1,
        figsize=(11, 6.5),
        sharex=True,
        constrained_layout=True,
        gridspec_kw={"height_ratios": [1, 1.3]},
    )
    fig.suptitle(f"{deployment}: real replicas against the simulator replaying the same requests")
    smooth = pd.Series(simulated["arrivals"]).rolling(10, min_periods=1).mean()
    load.plot(
        simulated["elapsed_s"],
        smooth,
        color="0.4",
        lw=1.2,
        label="recognition requests sent (10 s mean)",
    )
    load.set_ylabel("requests / s")
    load.set_ylim(bottom=0)
    load.legend(loc="upper left", fontsize=8)
    replicas.step(
        real["elapsed_s"],
        real["real_running"],
        where="post",
        color="C0",
        lw=4,
        alpha=0.45,
        label="real running",
    )
    replicas.step(
        real["elapsed_s"],
        real["real_target"],
        where="post",
        color="C0",
        ls="--",
        lw=1.5,
        label="real target",
    )
    replicas.step(
        simulated["elapsed_s"],
        simulated["simulated_ready"],
        where="post",
        color="C3",
        lw=4,
        alpha=0.35,
        label="simulated ready",
    )
    replicas.step(
        simulated["elapsed_s"],
        simulated["simulated_target"],
        where="post",
        color="C3",
        ls=":",
        lw=1.8,
        label="simulated target",
    )
    replicas.set_ylabel("replicas")
    top = max(
        float(np.nanmax(real[["real_running", "real_target"]].to_numpy())),
        float(simulated["simulated_target"].max()),
    )
    replicas.set_ylim(0, top + 0.7)
    replicas.yaxis.get_major_locator().set_params(integer=True)
    replicas.set_xlabel("seconds since the load test started")
    replicas.legend(loc="upper left", fontsize=8, ncol=2)
    for axis in (load, replicas):
        axis.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recserve loadtest-sim",
        description="Replay a recorded load test (a `recserve loadtest` folder) in the autoscaling simulator "
        "and compare real and simulated replicas.",
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
