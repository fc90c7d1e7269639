"""The honest yardsticks (lab/yardsticks.py): searches, fleet capacity, the clairvoyant schedule."""

from __future__ import annotations

import numpy as np
import pytest

from lab.service_model import LatencyCurve, ServiceModel
from lab.simulator import capacity_at_slo
from lab.yardsticks import (
    MAX_EVENTS_PER_DAY,
    budget_changes,
    budgeted_oracle_schedule,
    fewest_meeting,
    fleet_capacities,
    headroom_fleet,
    oracle_schedule,
    replicas_for_load,
    smallest_factor_meeting,
)

# max throughput 8 / 0.040 s = 200 req/s per replica
MODEL = ServiceModel(LatencyCurve((1.0, 8.0), (10.0, 40.0)))


@pytest.mark.parametrize(
    "threshold, low, high, expected",
    [
        (7, 1, 20, 7),  # the first n >= 7
        (1, 1, 20, 1),  # already the lowest
        (20, 1, 20, 20),  # only the top
        (21, 1, 20, None),  # even the top fails: no answer rather than a wrong one
    ],
)
def test_fewest_meeting(threshold, low, high, expected):
    asked = []

    def meets(n):
        asked.append(n)
        return n >= threshold

    assert fewest_meeting(meets, low, high) == expected
    assert len(asked) <= 6  # a bisection: log2(20) + the top, not a scan


@pytest.mark.parametrize(
    "threshold, expected",
    [
        (0.93, 0.93),  # found to within 1.5 / 2**10 = 0.0015
        (0.4, 0.5),  # the bottom already meets
        (2.5, None),  # nothing up to 2.0 meets
    ],
)
def test_smallest_factor_meeting(threshold, expected):
    found = smallest_factor_meeting(lambda f: f >= threshold)
    if expected is None:
        assert found is None
    else:
        assert found >= threshold and found == pytest.approx(expected, abs=0.0015)


def test_a_fleet_sustains_more_per_replica_than_one_replica():
    capacities = fleet_capacities(MODEL, 200.0, 8)
    single = capacity_at_slo(MODEL, 200.0)
    assert capacities[0] == 0 and capacities[1] == pytest.approx(single)
    per_replica = capacities[1:] / np.arange(1, 9)
    assert np.all(np.diff(capacities) > 0)
    assert np.all(np.diff(per_replica) >= 0)  # pooling never loses capacity per replica
    assert per_replica[-1] > single  # 8 replicas absorb bursts better than one
    # Between measured sizes (4 and 8) the smaller size's per-replica figure is used.
    assert capacities[6] == pytest.approx(6 * capacities[4] / 4)


def test_replicas_for_load_reads_the_fleet_table():
    capacities = np.array([0.0, 10.0, 25.0, 40.0])
    # 0 -> min 1; 10 -> 1; 10.5 -> 2 (25 covers it); 39 -> 3; 100 -> capped at the table's 3
    need = replicas_for_load(np.array([0.0, 10.0, 10.5, 39.0, 100.0]), capacities, 1)
    assert need.tolist() == [1, 1, 2, 3, 3]


def test_oracle_at_a_load_factor_sizes_for_that_share_of_the_load():
    capacities = np.array([0.0, 100.0, 200.0, 300.0])
    rate = np.array([150.0, 150.0])
    assert oracle_schedule(rate, capacities, 0, 1, 1.0)[0].tolist() == [2, 2]  # 150 needs 2
    assert oracle_schedule(rate, capacities, 0, 1, 0.6)[0].tolist() == [1, 1]  # 90 needs 1


@pytest.mark.parametrize(
    "peak, capacity, expected",
    [
        (1000.0, 92.0, 14),  # 1000 * 1.2 / 92 = 13.04 -> 14
        (100.0, 10.0, 12),  # 120 / 10 = 12 exactly, no float noise
        (1.0, 92.0, 1),  # never zero
    ],
)
def test_headroom_fleet(peak, capacity, expected):
    assert headroom_fleet(peak, capacity) == expected


def test_the_budgeted_oracle_covers_the_need_within_its_changes():
    rng = np.random.default_rng(3)
    rate = np.repeat(rng.uniform(100, 1500, size=48), 600).astype(float)  # 8 h, 10-minute steps
    capacities = fleet_capacities(MODEL, 500.0, 16)
    window = slice(3600, len(rate))
    ready, allocated = budgeted_oracle_schedule(rate, capacities, 120, 1, 1.0, window)
    need = replicas_for_load(rate, capacities, 1)
    assert np.all(ready >= need)
    assert np.all(allocated >= ready)
    # 7 replayed hours: 48 a day pro rata (14), less the one at the window's first second.
    assert np.count_nonzero(np.diff(allocated[window])) <= 13
    _, unbounded = oracle_schedule(rate, capacities, 120, 1)
    # Fewer changes can only cost more replica-seconds, never fewer.
    assert allocated[window].sum() >= unbounded[window].sum()


def test_the_budget_is_the_policys_day_budget_day_by_day():
    assert MAX_EVENTS_PER_DAY == 48
    assert budget_changes(86400) == 47  # 48, less the one the day's first second may spend
    assert budget_changes(43200) == 23  # a half day at the end of a replay: pro rata
    rate = np.repeat(np.tile([200.0, 1500.0], 80), 1800)  # 80 h of swings every 30 minutes
    capacities = fleet_capacities(MODEL, 500.0, 16)
    window = slice(3600, len(rate))
    _, allocated = budgeted_oracle_schedule(rate, capacities, 120, 1, 1.0, window)
    for start in range(window.start, window.stop, 86400):
        day = allocated[max(start - 1, 0) : min(start + 86400, window.stop)]
        assert np.count_nonzero(np.diff(day)) <= 48
