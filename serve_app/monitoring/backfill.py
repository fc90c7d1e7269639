"""History written into Prometheus after the fact: request counters rebuilt from a rate trace.

A fresh Prometheus has no history, so the Forecaster has nothing to fit. This module turns request
rates into the counter series the service itself exports (`ray_model_request_total` with the
labels its own series carry), writes them as OpenMetrics, has `promtool tsdb create-blocks-from
openmetrics` turn them into TSDB blocks, and moves the blocks into our Prometheus's data folder.
A Prometheus that is not running loads them when it starts; a running one picks up new blocks on
its next block reload (about a minute).

The counter between two trace rows grows at the earlier row's rate (each rate holds until the next
row; the last one for one trace step), sampled every `sample_interval_s`, so `rate()` over the
dashboards' windows and the Forecaster's counter reading both see the trace's rates.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from serve_app.monitoring import metrics as m
from serve_app.monitoring.promql import REQUESTS, quote_label
from serve_app.monitoring.stack import find_binary
from serve_app.monitoring.stack_config import StackError

PROMTOOL_BINARIES = ("promtool",)
PROMTOOL_TIMEOUT_S = 600.0


class BackfillError(StackError):
    """History could not be written into Prometheus; the message says what to do."""


@dataclass(frozen=True)
class CounterSeries:
    """One counter series: its labels and its (unix seconds, cumulative value) samples."""

    labels: dict[str, str]
    timestamps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class BackfillResult:
    """What was written: the block folders moved into the data folder and the samples' span."""

    blocks: list[Path]
    series: int
    samples: int
    start: float
    end: float


def counter_samples(
    timestamps: Sequence[float], rps: Sequence[float], sample_interval_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """A counter growing at the trace's rates, sampled every `sample_interval_s` (module doc)."""
    ts = np.asarray(timestamps, dtype=float)
    rates = np.asarray(rps, dtype=float)
    if len(ts) < 2:
        raise ValueError("a trace of fewer than two rows has no step to hold its rates over")
    if sample_interval_s <= 0:
        raise ValueError(f"sample_interval_s must be positive, got {sample_interval_s!r}")
    if (np.diff(ts) <= 0).any() or (rates < 0).any() or not np.isfinite(rates).all():
        raise ValueError("the trace needs increasing timestamps and finite, non-negative rates")
    end = ts[-1] + float(np.median(np.diff(ts)))
    edges = np.append(ts, end)
    # requests counted by each row's start: 0, r0*(t1-t0), r0*(t1-t0) + r1*(t2-t1), ...
    at_rows = np.concatenate(([0.0], np.cumsum(rates * np.diff(edges))))
    # counted in integers: at unix-time magnitudes a float `stop` would lose the closing sample
    count = int(math.floor((end - ts[0]) / sample_interval_s + 1e-9)) + 1
    grid = ts[0] + sample_interval_s * np.arange(count)
    row = np.clip(np.searchsorted(edges, grid, side="right") - 1, 0, len(ts) - 1)
    values = at_rows[row] + rates[row] * (grid - edges[row])
    return grid, values


def request_counter_labels(
    model_name: str, model_version: str, application: str, deployment: str
) -> dict[str, str]:
    """The labels of one of the service's own request-counter series (successful requests)."""
    labels = {"model_name": model_name, "model_version": model_version, "status": "success"}
    # Serve adds these to every application metric; Prometheus adds `job` from the scrape.
    return {
        **labels,
        "application": application,
        "deployment": deployment,
        "replica": "backfill",
        "job": "ray",
    }


def openmetrics_text(series: Iterable[CounterSeries], family: str = REQUESTS) -> str:
    """The series as one OpenMetrics counter family, each series' samples in time order."""
    name = family.removesuffix("_total")
    lines = [f"# HELP {name} {m.REQUEST_TOTAL.description}", f"# TYPE {name} counter"]
    for s in series:
        labels = ",".join(f"{k}={quote_label(v)}" for k, v in sorted(s.labels.items()))
        lines += [
            f"{name}_total{{{labels}}} {v:.6f} {t:.3f}"
            for t, v in zip(s.timestamps, s.values, strict=True)
        ]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def create_blocks(openmetrics: Path, out_dir: Path, promtool: str | None = None) -> list[Path]:
    """TSDB blocks from an OpenMetrics file (promtool); the block folders written in `out_dir`."""
    binary = promtool or find_binary(PROMTOOL_BINARIES, "RECSERVE_PROMTOOL_BIN")
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [binary, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(out_dir)],
            capture_output=True,
            text=True,
            timeout=PROMTOOL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BackfillError(f"promtool did not finish within {PROMTOOL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise BackfillError(
            f"promtool tsdb create-blocks-from openmetrics failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return sorted(p for p in out_dir.iterdir() if (p / "meta.json").is_file())


def backfill(
    series: Sequence[CounterSeries], data_dir: Path, promtool: str | None = None
) -> BackfillResult:
    """Write `series` into the Prometheus data folder `data_dir` as new TSDB blocks."""
    if not series or not any(len(s.timestamps) for s in series):
        raise BackfillError("nothing to backfill: no samples")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # Built next to the data folder: the final move is a rename on the same file system.
    with tempfile.TemporaryDirectory(prefix=".backfill-", dir=data_dir.parent) as work:
        text_file = Path(work) / "history.om.txt"
        text_file.write_text(openmetrics_text(series))
        blocks = create_blocks(text_file, Path(work) / "blocks", promtool)
        moved = []
        for block in blocks:
            target = data_dir / block.name
            shutil.move(str(block), str(target))
            moved.append(target)
    return BackfillResult(
        blocks=moved,
        series=len(series),
        samples=sum(len(s.timestamps) for s in series),
        start=min(float(s.timestamps[0]) for s in series if len(s.timestamps)),
        end=max(float(s.timestamps[-1]) for s in series if len(s.timestamps)),
    )
