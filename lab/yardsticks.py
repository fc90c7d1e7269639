"""Honest yardsticks for the backtest: the fewest fixed replicas and the cheapest clairvoyant
schedule that still keep the SLO target, both found with the simulator.

A yardstick that misses the SLO it is compared at flatters nothing but itself, so neither is
sized by arithmetic on one replica's capacity: `fleet_capacities` measures what n replicas sustain
at the SLO (a larger fleet absorbs Poisson bursts better), `fewest_meeting` searches the fixed
fleet, and `oracle_schedule` provisions the true future load at a load factor that
`smallest_factor_meeting` searches until the replay keeps the target; `budgeted_oracle_schedule`
does the same within a budget of scale events (`fewest_hours_within_budget`). `matched_oracle` is
the oracle searched again for another share within the SLO: the one a strategy actually kept, so
that strategy can be priced against clairvoyance at its own SLO point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lab.service_model import ServiceModel
from lab.simulator import SimConfig, capacity_at_slo, share_within, simulate
from serve_app.autoscaling.cover import cheapest_cover
from serve_app.autoscaling.rules import PolicyRules

DAY = 86400
# The replayed policy's budget of scale events a day, which `oracle_budget` is held to as well.
MAX_EVENTS_PER_DAY = PolicyRules.model_fields["max_scale_events_per_day"].default


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


def budgeted_oracle_schedule(
    rate: np.ndarray,
    capacities: np.ndarray,
    startup_s: int,
    min_replicas: int,
    load_factor: float,
    window: slice,
) -> tuple[np.ndarray, np.ndarray]:
    """(ready, allocated) of a clairvoyant fleet held to the policy's day budget in `window`: each
    replayed day's allocation replaced by its cheapest cover with `budget_changes` of that day.

    Day by day, like the policy's budget (at most MAX_EVENTS_PER_DAY in any 24 hours), rather than
    the whole window's total, which could spend two days' changes in one. A replica is ready
    `startup_s` after it is allocated, so ready is the least allocated over the last start-up; it
    still covers the need, since the allocation covers the need `startup_s` ahead.
    """
    _, allocated = oracle_schedule(rate, capacities, startup_s, min_replicas, load_factor)
    for start in range(window.start, window.stop, DAY):
        day = slice(start, min(start + DAY, window.stop))
        changes = budget_changes(day.stop - day.start)
        allocated[day] = fewest_hours_within_budget(allocated[day], changes)
    if startup_s <= 0:
        return allocated.copy(), allocated
    padded = np.concatenate([np.full(startup_s, allocated[0], dtype=np.int32), allocated])
    ready = sliding_window_view(padded, startup_s + 1).min(axis=1)
    return ready.astype(np.int32), allocated


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


def fewest_hours_within_budget(need: np.ndarray, max_changes: int, block_s: int = 60) -> np.ndarray:
    """The cheapest per-second fleet that is at least `need` everywhere and changes at most
    `max_changes` times, changing on `block_s` block edges only (serve_app/autoscaling/cover.py)."""
    seconds = len(need)
    if seconds == 0:
        return need.astype(np.int32)
    blocks = -(-seconds // block_s)
    padded = np.concatenate([need, np.full(blocks * block_s - seconds, need[-1])])
    level = padded.reshape(blocks, block_s).max(axis=1)
    weight = np.full(blocks, float(block_s))
    weight[-1] = seconds - (blocks - 1) * block_s
    cover = cheapest_cover(level, weight, max_changes)
    return np.repeat(cover.astype(np.int32), block_s)[:seconds]


def budget_changes(seconds: int) -> int:
    """Changes the budgeted oracle may make inside one replayed day of `seconds` (a last day may
    be shorter): the day budget pro rata, less the one its first second may spend (the change from
    the day before)."""
    return max(0, math.floor(MAX_EVENTS_PER_DAY * seconds / DAY) - 1)


@dataclass(frozen=True)
class Yardsticks:
    """The fixed fleet and the two clairvoyant schedules that keep the SLO target."""

    static_replicas: int
    oracle_factor: float | None  # None: no factor up to the search's top kept the target
    oracle_ready: np.ndarray
    oracle_allocated: np.ndarray
    budget_factor: float | None
    budget_ready: np.ndarray
    budget_allocated: np.ndarray


def find_yardsticks(
    rate: np.ndarray,
    arrivals: np.ndarray,
    model: ServiceModel,
    config: SimConfig,
    window: slice,
    capacities: np.ndarray,
    slo_target: float,
    largest: int,
) -> Yardsticks:
    """Search each yardstick with the simulator: the fewest fixed replicas, and the smallest load
    factor of each clairvoyant schedule, that keep `slo_target` over the window."""
    seconds = len(rate)
    startup, floor = config.startup_s, config.min_replicas
    meets = _meeting(rate, arrivals, model, config, window, slo_target)

    static_n = fewest_meeting(lambda n: meets(np.full(seconds, n, dtype=np.int32)), floor, largest)
    oracle_factor, ready, allocated = matched_oracle(
        rate, arrivals, model, config, window, capacities, slo_target
    )

    def budgeted(factor: float) -> tuple[np.ndarray, np.ndarray]:
        return budgeted_oracle_schedule(rate, capacities, startup, floor, factor, window)

    budget_factor = smallest_factor_meeting(lambda f: meets(budgeted(f)[0]))
    budget_ready, budget_allocated = budgeted(budget_factor or 2.0)
    return Yardsticks(
        largest if static_n is None else static_n,
        oracle_factor,
        ready,
        allocated,
        budget_factor,
        budget_ready,
        budget_allocated,
    )


def _meeting(
    rate: np.ndarray,
    arrivals: np.ndarray,
    model: ServiceModel,
    config: SimConfig,
    window: slice,
    share: float,
) -> Callable[[np.ndarray], bool]:
    """Whether a ready-replica schedule keeps `share` of the window's requests within the SLO."""

    def meets(schedule: np.ndarray) -> bool:
        return schedule_attainment(schedule, rate, arrivals, model, config, window) >= share

    return meets


def matched_oracle(
    rate: np.ndarray,
    arrivals: np.ndarray,
    model: ServiceModel,
    config: SimConfig,
    window: slice,
    capacities: np.ndarray,
    share: float,
) -> tuple[float | None, np.ndarray, np.ndarray]:
    """(load factor, ready, allocated) of the cheapest clairvoyant schedule that keeps at least
    `share` of the window's requests within the SLO.

    The oracle at the SLO target may spend the whole allowance of slow requests where that saves
    most, which no strategy that cannot see the load coming can plan; a strategy that kept more
    than the target is priced fairly against clairvoyance that keeps as much.
    """
    startup, floor = config.startup_s, config.min_replicas
    meets = _meeting(rate, arrivals, model, config, window, share)
    factor = smallest_factor_meeting(
        lambda f: meets(oracle_schedule(rate, capacities, startup, floor, f)[0])
    )
    ready, allocated = oracle_schedule(rate, capacities, startup, floor, factor or 2.0)
    return factor, ready, allocated
