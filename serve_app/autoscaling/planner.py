"""Capacity planning: how many replicas a forecast request rate needs, looked up ahead by the
start-up lead time.

Pure functions, no I/O: the forecaster and the autoscaling policy both call them so the service and
the backtest size replicas with the same arithmetic.
"""

from __future__ import annotations

import bisect
import math
from typing import Mapping, Sequence


def check_capacity(capacity_qps: float, headroom: float) -> None:
    """Raise ValueError unless capacity is positive and headroom is in (0, 1]."""
    if not math.isfinite(capacity_qps) or capacity_qps <= 0:
        raise ValueError(
            f"per-replica capacity must be a positive QPS, got {capacity_qps!r} (measure it with "
            "`recserve capacity`)"
        )
    if not math.isfinite(headroom) or not 0 < headroom <= 1:
        raise ValueError(
            "headroom must be in (0, 1] (0.8 keeps each replica at <= 80% of its capacity), got "
            f"{headroom!r}"
        )


def check_lead_time(lead_time_s: float, startup_s: float) -> None:
    """Raise ValueError when the lead time is shorter than a replica's start-up time (it would
    arrive late)."""
    if lead_time_s < startup_s:
        raise ValueError(
            f"lead time {lead_time_s:g}s is shorter than the replica start-up time {startup_s:g}s: "
            "replicas would be ready after the load they were planned for; set lead_time_s >= "
            f"{startup_s:g}"
        )


def replicas_for_rate(rate_qps: float, capacity_qps: float, headroom: float = 1.0) -> int:
    """Replicas needed to serve `rate_qps`: ceil(rate / (capacity x headroom)); 0 for no load."""
    check_capacity(capacity_qps, headroom)
    if not math.isfinite(rate_qps):
        raise ValueError(f"request rate must be a finite number, got {rate_qps!r}")
    if rate_qps <= 0:
        return 0
    # The tiny epsilon keeps 200 / (100 * 1.0) from becoming 3 through float noise.
    return math.ceil(rate_qps / (capacity_qps * headroom) - 1e-9)


def value_at(timestamps: Sequence[float], values: Sequence[float], when: float) -> float | None:
    """Linear interpolation of a forecast series at `when`; None outside the series (no
    extrapolation)."""
    if len(timestamps) != len(values):
        raise ValueError(
            f"timestamps ({len(timestamps)}) and values ({len(values)}) differ in length"
        )
    if not timestamps or when < timestamps[0] or when > timestamps[-1]:
        return None
    i = bisect.bisect_left(timestamps, when)
    if timestamps[i] == when:
        return float(values[i])
    t0, t1 = timestamps[i - 1], timestamps[i]
    v0, v1 = values[i - 1], values[i]
    return float(v0 + (v1 - v0) * (when - t0) / (t1 - t0))


def replica_floor(
    timestamps: Sequence[float],
    upper: Sequence[float],
    now: float,
    lead_time_s: float,
    capacity_qps: float,
    headroom: float,
) -> int | None:
    """Replicas the forecast upper bound needs at now + lead time; None when the forecast does not
    reach that far."""
    rate = value_at(timestamps, upper, now + lead_time_s)
    if rate is None:
        return None
    return replicas_for_rate(max(rate, 0.0), capacity_qps, headroom)


def replica_plan(
    timestamps: Sequence[float],
    upper: Sequence[float],
    lead_time_s: float,
    capacity_qps: float,
    headroom: float,
) -> list[tuple[float, int]]:
    """The floor at every forecast timestamp from which now + lead time is still inside the
    forecast."""
    if not timestamps:
        return []
    last = timestamps[-1]
    return [
        (t, floor)
        for t in timestamps
        if t + lead_time_s <= last
        and (floor := replica_floor(timestamps, upper, t, lead_time_s, capacity_qps, headroom))
        is not None
    ]


def check_fleet_table(table: Mapping[int, float]) -> None:
    """Raise ValueError unless the table maps fleet sizes (>= 1) to totals (> 0) that grow with
    the fleet."""
    if not table:
        raise ValueError("a fleet capacity table needs at least one measured fleet size")
    previous = 0.0
    for replicas in sorted(table):
        total = table[replicas]
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"fleet sizes must be whole numbers >= 1, got {replicas!r}")
        if not math.isfinite(total) or total <= 0:
            raise ValueError(
                f"the capacity of {replicas} replicas must be a positive QPS, got {total!r} "
                "(measure it with `recserve capacity --replicas N`)"
            )
        if total <= previous:
            raise ValueError(
                f"a larger fleet must sustain more: {replicas} replicas at {total:g} QPS is not "
                f"above the smaller fleet's {previous:g}"
            )
        previous = total


def fleet_capacity(table: Mapping[int, float], replicas: int) -> float:
    """Total QPS a fleet of `replicas` sustains per the measured table.

    Between two measured sizes the per-replica figure is interpolated linearly; below the smallest
    size it is the smallest size's, above the largest the largest's: never extrapolated upward,
    since what a fleet gains per replica flattens as it grows.
    """
    return _fleet_total(table, sorted(table), replicas)


def _fleet_total(table: Mapping[int, float], sizes: list[int], replicas: int) -> float:
    if replicas <= 0:
        return 0.0
    i = bisect.bisect_left(sizes, replicas)
    if i == 0:
        return replicas * table[sizes[0]] / sizes[0]
    if i == len(sizes):
        return replicas * table[sizes[-1]] / sizes[-1]
    n0, n1 = sizes[i - 1], sizes[i]
    if n1 == replicas:
        return float(table[n1])
    c0, c1 = table[n0] / n0, table[n1] / n1
    return replicas * (c0 + (c1 - c0) * (replicas - n0) / (n1 - n0))


def replicas_for_fleet_rate(rate_qps: float, table: Mapping[int, float], headroom: float) -> int:
    """The fewest replicas whose fleet, at `headroom` of its measured capacity, serves `rate_qps`
    (0 for no load)."""
    if not math.isfinite(rate_qps):
        raise ValueError(f"request rate must be a finite number, got {rate_qps!r}")
    if rate_qps <= 0:
        return 0
    sizes = sorted(table)
    # The epsilon keeps an exact fit from needing one more replica through float noise.
    wanted = rate_qps / headroom - 1e-9
    low = 1
    for size in sizes:
        if _fleet_total(table, sizes, size) >= wanted:
            # The first measured size that is enough: the answer lies in [low, size], where the
            # total grows with the fleet, so it is bisected (it runs every control period).
            high = size
            while low < high:
                mid = (low + high) // 2
                if _fleet_total(table, sizes, mid) >= wanted:
                    high = mid
                else:
                    low = mid + 1
            return high
        low = size + 1
    per_replica = table[sizes[-1]] / sizes[-1]
    return max(low, math.ceil(wanted / per_replica))
