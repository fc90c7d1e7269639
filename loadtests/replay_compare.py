"""Real against simulated replicas of a replayed load test: the figures side by side
(`simulated.md`) and the plot (`replicas_vs_sim.png`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loadtests.replay_inputs import ReplayOptions


def _changes(seconds: np.ndarray, values: np.ndarray) -> list[tuple[int, float]]:
    """(second, new value) at every change of a step series, NaNs ignored."""
    out, last = [], None
    for t, value in zip(seconds, values, strict=True):
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
            f"Simulator fed the {int(offered.sum())} recognition requests locust sent "
            f"({offered.max():.0f} req/s at the busiest second), the deployment's policy_kwargs, "
            f"replica start-up {options.startup_s} s, capacity from {capacity}, "
            f"SLO {options.slo_ms:g} ms, Prometheus scrape {options.scrape_interval_s} s.",
            "",
            "| | real | simulated |",
            "|---|---|---|",
            f"| replica-seconds (running / ready) | {c.replica_seconds_real:.0f} "
            f"| {c.replica_seconds_sim:.0f} |",
            f"| peak replicas | {c.peak_real} | {c.peak_sim} |",
            f"| scale events (target changes) | {c.scale_events_real} | {c.scale_events_sim} |",
            f"| first scale-up (target) | {seconds(c.first_up_real_s)} "
            f"| {seconds(c.first_up_sim_s)} |",
            f"| last scale-down (target) | {seconds(c.last_down_real_s)} "
            f"| {seconds(c.last_down_sim_s)} |",
            "",
            "Running replicas equal to the simulated ready replicas "
            f"{100 * c.agreement:.0f}% of the seconds; within one replica "
            f"{100 * c.within_one:.0f}%.",
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
    # Running/ready replicas as wide translucent bands, targets as thin lines over them.
    lines = (
        (real, "real_running", "real running", {"color": "C0", "lw": 4, "alpha": 0.45}),
        (real, "real_target", "real target", {"color": "C0", "ls": "--", "lw": 1.5}),
        (simulated, "simulated_ready", "simulated ready", {"color": "C3", "lw": 4, "alpha": 0.35}),
        (simulated, "simulated_target", "simulated target", {"color": "C3", "ls": ":", "lw": 1.8}),
    )
    for frame, column, label, style in lines:
        replicas.step(frame["elapsed_s"], frame[column], where="post", label=label, **style)
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
