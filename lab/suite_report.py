"""The robustness matrix's files: matrix.csv (every figure), matrix.md (the table a person reads,
training and held-out apart) and matrix.png (one square per cell, coloured by goals met)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lab.suite import (
    GOALS,
    MAX_EVENTS_PER_DAY,
    MAX_OF_FIXED_HEADROOM,
    MAX_OVER_ORACLE,
    SETS,
    TRACES,
)

GOAL_WORDS = {
    "in_slo": "predictive >= 99% of requests within the SLO",
    "events": f"<= {MAX_EVENTS_PER_DAY} scale events per day",
    "vs_oracle": f"replica-hours <= {MAX_OVER_ORACLE}x the clairvoyant bound (oracle)",
    "vs_fixed": f"replica-hours <= {MAX_OF_FIXED_HEADROOM}x a fixed fleet with 20% headroom",
    "under_vs_reactive": "under-provisioned minutes <= reactive's",
}


def write_matrix(out: Path, rows: list[dict[str, Any]], command: str) -> dict[str, Path]:
    """Write matrix.csv, matrix.md and matrix.png into `out`; returns {what: path}."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        "csv": write_csv(out / "matrix.csv", rows),
        "markdown": write_markdown(out / "matrix.md", rows, command),
        "plot": write_plot(out / "matrix.png", rows, command),
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """matrix.csv: one line per cell, every figure and every goal's verdict."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _mark(met: bool) -> str:
    return "yes" if met else "**no**"


def write_markdown(path: Path, rows: list[dict[str, Any]], command: str) -> Path:
    """matrix.md: the goals, then one table per trace set (training, held-out)."""
    lines = [
        "# Autoscaling robustness matrix",
        "",
        f"Made by `{command}`. Every strategy is judged at the same SLO point: 99% of requests "
        "within 500 ms; `static_peak` and `oracle` are the fewest fixed replicas and the cheapest "
        "clairvoyant schedule that keep it (lab/yardsticks.py); `oracle_budget` is that schedule "
        f"held to the policy's {MAX_EVENTS_PER_DAY} scale events a day, `oracle_matched` the "
        "cheapest clairvoyant schedule that keeps at least the share predictive kept (both "
        "shown, not goals).",
        "",
        "Goals of the predictive strategy in every cell:",
        "",
        *[f"- `{name}`: {words}" for name, words in GOAL_WORDS.items()],
        "",
        "Traces:",
        "",
        *[f"- `{t.name}` ({t.set}): {t.description}" for t in TRACES],
        "",
    ]
    header = (
        "| trace | req/s per replica | peak req/s | predictive in SLO | events/day | "
        "replica-h: predictive / oracle (x) | x oracle_budget | x oracle_matched | x fixed+20% | "
        "under-prov. min: predictive / reactive | goals met |"
    )
    for name in SETS:
        part = [r for r in rows if r["set"] == name]
        if not part:
            continue
        lines += [f"## {name} traces", "", header, "|" + "---|" * 11]
        for r in part:
            lines.append(
                f"| {r['trace']} | {r['replica_rps']:g} | {r['peak_rps']:g} | "
                f"{r['predictive_slo'] * 100:.2f}% {_mark(r['goal_in_slo'])} | "
                f"{r['predictive_events_per_day']:g} {_mark(r['goal_events'])} | "
                f"{r['predictive_replica_hours']:g} / {r['oracle_replica_hours']:g} "
                f"({r['over_oracle']:.2f}) {_mark(r['goal_vs_oracle'])} | "
                f"{r['over_oracle_budget']:.2f} | "
                f"{r['over_oracle_matched']:.2f} | "
                f"{r['of_fixed_headroom']:.2f} {_mark(r['goal_vs_fixed'])} | "
                f"{r['predictive_under_min']:g} / {r['reactive_under_min']:g} "
                f"{_mark(r['goal_under_vs_reactive'])} | {r['goals_met']}/{len(GOALS)} |"
            )
        met = sum(r["goals_met"] for r in part)
        lines += ["", f"{name}: {met} of {len(GOALS) * len(part)} goals met.", ""]
    path.write_text("\n".join(lines))
    return path


def write_plot(path: Path, rows: list[dict[str, Any]], command: str) -> Path:
    """matrix.png: traces down, capacities across; colour = goals met, text = the key figures;
    the title names the command that made it (an exact-forecast run looks alike)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r["trace"] for r in rows))
    capacities = sorted({r["replica_rps"] for r in rows})
    by_cell = {(r["trace"], r["replica_rps"]): r for r in rows}
    sets = {r["trace"]: r["set"] for r in rows}
    fig, ax = plt.subplots(figsize=(3.2 * len(capacities) + 2, 1.45 * len(traces) + 1.4))
    cmap = plt.get_cmap("RdYlGn")
    for i, trace in enumerate(traces):
        for j, capacity in enumerate(capacities):
            r = by_cell.get((trace, capacity))
            if r is None:
                continue
            ax.add_patch(
                plt.Rectangle(
                    (j, i), 1, 1, color=cmap(r["goals_met"] / len(GOALS)), alpha=0.75, ec="white"
                )
            )
            text = (
                f"{r['goals_met']}/{len(GOALS)} goals\n"
                f"{r['predictive_slo'] * 100:.2f}% in SLO, "
                f"{r['predictive_events_per_day']:g} ev/day\n"
                f"{r['over_oracle']:.2f}x oracle, {r['of_fixed_headroom']:.2f}x fixed+20%\n"
                f"short {r['predictive_under_min']:g} min (reactive {r['reactive_under_min']:g})"
            )
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5)
    ax.set_xlim(0, len(capacities))
    ax.set_ylim(len(traces), 0)
    ax.set_xticks([j + 0.5 for j in range(len(capacities))])
    ax.set_xticklabels([f"{c:g} req/s per replica" for c in capacities])
    ax.set_yticks([i + 0.5 for i in range(len(traces))])
    ax.set_yticklabels([f"{t}\n({sets[t]})" for t in traces])
    ax.tick_params(length=0)
    ax.set_title(
        "predictive autoscaling against its goals, every strategy at 99% of requests within "
        f"500 ms\n(green: all 5 goals met; red: none)\n{command}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
