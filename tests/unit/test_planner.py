"""Capacity planning arithmetic."""

from __future__ import annotations

import math

import pytest

from serve_app.autoscaling.planner import (
    check_lead_time,
    replica_floor,
    replica_plan,
    replicas_for_rate,
    value_at,
)


@pytest.mark.parametrize(
    "rate, capacity, headroom, expected",
    [
        (0, 40, 0.8, 0),  # no load, no replicas (min_replicas is the policy's business)
        (1, 40, 0.8, 1),  # ceil(1 / 32) = 1
        (32, 40, 0.8, 1),  # 32 / (40 * 0.8) = 1.0 exactly -> 1, not 2
        (33, 40, 0.8, 2),  # ceil(33 / 32) = 2
        (200, 100, 1.0, 2),  # 200 / 100 = 2.0 exactly
        (700, 100, 0.8, 9),  # ceil(700 / 80) = ceil(8.75) = 9
        (-5, 40, 0.8, 0),  # a negative forecast lower bound means no load
    ],
)
def test_replicas_for_rate(rate, capacity, headroom, expected):
    assert replicas_for_rate(rate, capacity, headroom) == expected


@pytest.mark.parametrize(
    "rate, capacity, headroom, message",
    [
        (10, 0, 0.8, "per-replica capacity must be a positive QPS"),
        (10, 40, 0, "headroom must be in (0, 1]"),
        (10, 40, 1.5, "headroom must be in (0, 1]"),
        (math.nan, 40, 0.8, "request rate must be a finite number"),
    ],
)
def test_bad_inputs_are_refused(rate, capacity, headroom, message):
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")
    ):
        replicas_for_rate(rate, capacity, headroom)


def test_lead_time_must_cover_startup():
    check_lead_time(120, 120)
    with pytest.raises(ValueError, match="set lead_time_s >= 90"):
        check_lead_time(60, 90)


TS = [0.0, 300.0, 600.0, 900.0]
UPPER = [100.0, 400.0, 700.0, 100.0]


@pytest.mark.parametrize(
    "when, expected",
    [
        (0.0, 100.0),
        (150.0, 250.0),  # halfway 100 -> 400
        (600.0, 700.0),
        (750.0, 400.0),  # halfway 700 -> 100
        (-1.0, None),  # before the forecast: no extrapolation
        (901.0, None),  # after it
    ],
)
def test_value_at_interpolates_inside_only(when, expected):
    assert value_at(TS, UPPER, when) == expected


def test_floor_looks_ahead_by_the_lead_time():
    # now = 180, lead 120 -> upper at 300 = 400 -> ceil(400 / (100 * 0.8)) = 5.
    assert replica_floor(TS, UPPER, 180.0, 120.0, 100.0, 0.8) == 5
    # now = 850 + 120 = 970 is past the forecast: no floor rather than a guess.
    assert replica_floor(TS, UPPER, 850.0, 120.0, 100.0, 0.8) is None


def test_plan_covers_only_timestamps_whose_lookahead_is_known():
    # lead 300: t=0 reads 300 (400 -> 5), t=300 reads 600 (700 -> 9), t=600 reads 900 (100 -> 2).
    assert replica_plan(TS, UPPER, 300.0, 100.0, 0.8) == [(0.0, 5), (300.0, 9), (600.0, 2)]
