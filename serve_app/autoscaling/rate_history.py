"""Request-rate history: from Prometheus range queries, or from a `timestamp,rps` CSV.

Prometheus history is read through `PrometheusClient` as the raw request counters, series by series,
so this module (and its tests) decide what a counter reset, a replica restart or a gap means rather
than leaving it to a PromQL expression:

- a counter that goes down was reset (its process restarted): the increase is its new value, as
  Prometheus's own rate() counts it;
- a series that appears (a new replica or a new status label) contributes from its second sample
  on;
- a step at which no series has a sample is a gap: it stays out of the history (unknown is not
  zero), and no increase is attributed across a gap longer than `max_gap_s`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, tzinfo
from itertools import pairwise
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from serve_app.autoscaling.zones import zone_of
from serve_app.monitoring.prometheus_api import PrometheusClient
from serve_app.monitoring.promql import REQUESTS, matchers


@dataclass(frozen=True)
class RateHistory:
    """Requests per second at increasing unix timestamps (gaps are simply absent)."""

    timestamps: np.ndarray
    rps: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    def step_s(self) -> float:
        """The most common spacing between points."""
        if len(self.timestamps) < 2:
            raise ValueError("a history of fewer than two points has no step")
        steps = np.diff(self.timestamps)
        values, counts = np.unique(np.round(steps, 3), return_counts=True)
        return float(values[np.argmax(counts)])

    def require_regular(self) -> float:
        """The step, or a ValueError naming the first gap (a replay needs every step)."""
        step = self.step_s()
        steps = np.diff(self.timestamps)
        irregular = np.flatnonzero(np.abs(steps - step) > 1e-6)
        if irregular.size:
            i = int(irregular[0])
            raise ValueError(
                f"the trace must have a regular step ({step:g}s) but rows {i + 2} and {i + 3} are "
                f"{steps[i]:g}s apart; fill the gap (e.g. with the neighbouring rates) before "
                "replaying"
            )
        return step

    def between(self, start: float, end: float) -> "RateHistory":
        """Points with start <= t < end."""
        keep = (self.timestamps >= start) & (self.timestamps < end)
        return RateHistory(self.timestamps[keep], self.rps[keep])


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def parse_timestamp(text: str, zone: tzinfo) -> float:
    """Unix seconds from unix seconds or ISO 8601; an ISO time without offset is read in `zone`."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"timestamp {text!r} is neither unix seconds nor ISO 8601 (e.g. "
            "2024-06-03T09:00:00+08:00)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.timestamp()


def read_csv(path: str | Path, timezone: str = "UTC") -> RateHistory:
    """A `timestamp,rps` CSV; every bad row is an error naming its line, nothing is silently
    dropped.

    Timestamps without a UTC offset are read in `timezone` (IANA name or +HH:MM).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace file {str(path)!r} does not exist")
    zone = zone_of(timezone)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["timestamp", "rps"]:
            raise ValueError(
                f"{path}: the first line must be the header `timestamp,rps`, got {header!r}"
            )
        times, rates = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected `timestamp,rps`, got {row!r}")
            try:
                t = parse_timestamp(row[0], zone)
                r = float(row[1])
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from None
            if not math.isfinite(r) or r < 0:
                raise ValueError(
                    f"{path}:{line_no}: rps must be a non-negative number, got {row[1]!r}"
                )
            times.append(t)
            rates.append(r)
    if not times:
        raise ValueError(f"{path}: no rows after the header")
    ts = np.asarray(times)
    order = np.argsort(ts, kind="stable")
    ts, rs = ts[order], np.asarray(rates)[order]
    duplicate = np.flatnonzero(np.diff(ts) == 0)
    if duplicate.size:
        when = datetime.fromtimestamp(ts[duplicate[0]], zone).isoformat()
        raise ValueError(f"{path}: timestamp {when} appears more than once; keep one rate per time")
    return RateHistory(ts, rs)


def trace_utc_offset(path: str | Path) -> str | None:
    """The UTC offset (`+08:00`) written on the first row's ISO timestamp, None for unix or naive
    times."""
    with Path(path).open(newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        first = next(rows, None)
    if not first:
        return None
    try:
        float(first[0])
        return None
    except ValueError:
        pass
    try:
        offset = datetime.fromisoformat(first[0].strip().replace("Z", "+00:00")).utcoffset()
    except ValueError:
        return None
    if offset is None:
        return None
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def write_csv(path: str | Path, history: RateHistory, timezone: str = "UTC") -> Path:
    """Write a history as `timestamp,rps` with ISO 8601 timestamps in `timezone`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    zone = zone_of(timezone)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "rps"])
        for t, r in zip(history.timestamps, history.rps, strict=True):
            writer.writerow([datetime.fromtimestamp(float(t), zone).isoformat(), f"{float(r):.6g}"])
    return path


# --------------------------------------------------------------------------------------------------
# Counters -> rates (pure)
# --------------------------------------------------------------------------------------------------


def counter_increases(
    timestamps: Sequence[float], values: Sequence[float], step_s: float, max_gap_s: float
) -> dict[float, float]:
    """Increase of one counter per step (keyed by the step's end), with resets and gaps handled
    (module doc)."""
    out: dict[float, float] = {}
    samples = zip(timestamps, values, strict=False)
    for (t0, v0), (t1, v1) in pairwise(samples):
        span = t1 - t0
        if span <= 0 or span > max_gap_s or not (math.isfinite(v0) and math.isfinite(v1)):
            continue
        increase = v1 - v0 if v1 >= v0 else v1  # a drop is a reset: everything since counts
        # A few missing samples inside max_gap_s: spread the increase over the steps it covers.
        steps = max(1, round(span / step_s))
        for k in range(1, steps + 1):
            t = float(t0 + k * step_s) if k < steps else float(t1)
            out[t] = out.get(t, 0.0) + increase / steps
    return out


def rates_from_counters(
    series: Iterable[tuple[Sequence[float], Sequence[float]]], step_s: float, max_gap_s: float
) -> RateHistory:
    """Total requests per second per step from many counter series sampled on a common step grid."""
    totals: dict[float, float] = {}
    for timestamps, values in series:
        for t, inc in counter_increases(timestamps, values, step_s, max_gap_s).items():
            totals[t] = totals.get(t, 0.0) + inc
    if not totals:
        return RateHistory(np.array([]), np.array([]))
    ts = np.array(sorted(totals))
    return RateHistory(ts, np.array([totals[t] for t in ts]) / step_s)


# --------------------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------------------


def prometheus_rate_history(
    address: str,
    model_name: str,
    start: float,
    end: float,
    step_s: float = 60.0,
    max_gap_s: float | None = None,
    timeout_s: float = 30.0,
) -> RateHistory:
    """Requests per second of one model from its request counters, resets and gaps handled.

    Raises PrometheusUnavailable when Prometheus cannot answer.
    """
    client = PrometheusClient(address, timeout_s=timeout_s)
    try:
        result = client.query_range_chunked(
            REQUESTS + matchers(model_name=model_name), start, end, step_s
        )
    finally:
        client.close()
    series = []
    for item in result:
        points = sorted((float(t), float(v)) for t, v in item["values"])
        series.append(([p[0] for p in points], [p[1] for p in points]))
    return rates_from_counters(series, step_s, max_gap_s if max_gap_s is not None else 5 * step_s)
