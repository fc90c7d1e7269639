"""Honest yardsticks for the backtest: the fewest fixed replicas and the cheapest clairvoyant
schedule that still keep the SLO target, both found with the simulator.

A yardstick that misses the SLO it is compared at flatters nothing but itself, so neither is
sized by arithmetic on one replica's capacity: `fleet_capacities` measures what n replicas sustain
at the SLO (a larger fleet absorbs Poisson bursts better), `fewest_meeting` searches the fixed
fleet, and `oracle_schedule` provisions the true future load at a load factor that
`smallest_factor_meeting` searches until the replay keeps the target.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lab.service_model import ServiceModel
from lab.simulator import SimConfig, capacity_at_slo, share_within, simulate


def fleet_capacities(model: ServiceModel, slo_ms: float, max_replicas: int) -> np.ndarray:
    """Total req/s that n replicas sustain at the SLO, for n = 0..max_replicas (index n).

    Measured at powers of two; between two measured sizes the smaller size's per-replica figure is
    used, which never overstates (per-replica capacity grows with the fleet).
    """
    measured: dict[int, float] = {}
    size = 1
    while True:
        measured[size] = capacity_at_slo(model, slo_ms, replicas=size)
        if size >= max_replicas:
            break
        size *= 2
    sizes = sorted(measured)
    per_replica = np.array(
        [measured[max(s for s in sizes if s <= n)] for n in range(1, max_replicas + 1)]
    )
    return np.concatenate([[0.0], per_replica * np.arange(1, max_replicas + 1)])


def replicas_for_load(load: np.ndarray, capacities: np.ndarray, min_replicas: int) -> np.ndarray:
    """Per second, the fewest replicas whose fleet capacity covers the load (capped at the table's
    largest fleet)."""
    need = np.searchsorted(capacities, load, side="left")
    return np.clip(need, min_replicas, len(capacities) - 1).astype(np.int32)


def oracle_schedule(
    rate: np.ndarray,
    capacities: np.ndarray,
    startup_s: int,
    min_replicas: int,
    load_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ready, allocated) of a clairvoyant fleet sized for load_factor x the true load.

    ready: what the load needs at each second; allocated also pays for replicas started
    `startup_s` ahead of need (allocated = max of ready over [t, t + startup]).
    """
    ready = replicas_for_load(rate * load_factor, capacities, min_replicas)
    if startup_s <= 0:
        return ready, ready.copy()
    padded = np.concatenate([ready, np.full(startup_s, ready[-1], dtype=np.int32)])
    allocated = sliding_window_view(padded, startup_s + 1).max(axis=1)[: len(ready)]
    return ready, allocated.astype(np.int32)


def fewest_meeting(meets: Callable[[int], bool], low: int, high: int) -> int | None:
    """The smallest n in [low, high] for which `meets(n)` holds (meets rises with n); None if even
    high fails."""
    if not meets(high):
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if meets(mid) else (mid + 1, high)
    return low


def smallest_factor_meeting(
    meets: Callable[[float], bool],
    low: float = 0.5,
    high: float = 2.0,
    steps: int = 10,
) -> float | None:
    """The smallest load factor in [low, high] (to within (high - low) / 2**steps) for which
    `meets(factor)` holds; None if even high fails."""
    if not meets(high):
        return None
    if meets(low):
        return low
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high


def headroom_fleet(peak_rps: float, capacity_rps: float, headroom: float = 0.2) -> int:
    """A fixed fleet sized the usual way: the peak plus `headroom` over one replica's capacity."""
    return max(1, math.ceil(peak_rps * (1 + headroom) / capacity_rps - 1e-9))


def schedule_attainment(
    schedule: np.ndarray,
    rate: np.ndarray,
    arrivals: np.ndarray,
    model: ServiceModel,
    config: SimConfig,
    window: slice,
) -> float:
    """Share of the replayed window's requests within the SLO under a fixed ready-replica
    schedule."""
    run = simulate("yardstick", rate, arrivals, model, config, 0.0, schedule=schedule)
    return share_within(
        run.arrivals[window], run.lat_lo_ms[window], run.lat_hi_ms[window], config.slo_ms
    )
