"""Drift (PSI of the predicted-class distribution) by hand."""

from __future__ import annotations

import math

import pytest

from serve_app.quality.drift import ConfidenceHistogram, DriftTracker, psi

# --- drift ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "current, reference, epsilon, expected",
    [
        ([5, 5], [5, 5], 0.5, 0.0),
        # no smoothing: p=(.2,.8), q=(.8,.2): (-.6)ln(.25) + (.6)ln(4) = 1.2 ln 4
        ([2, 8], [8, 2], 0.0, 1.2 * math.log(4)),
        # empty bin: p=(10.5/11, .5/11), q=(5.5/11, 5.5/11): (5/11)(ln(10.5/5.5) + ln(11))
        ([10, 0], [5, 5], 0.5, (5 / 11) * (math.log(10.5 / 5.5) + math.log(11))),
    ],
)
def test_psi_by_hand(current, reference, epsilon, expected):
    assert psi(current, reference, epsilon) == pytest.approx(expected)


def test_drift_against_the_first_predictions():
    d = DriftTracker(reference_size=100, window_size=100, bins=4, epsilon=0.5)
    reference = [0] * 50 + [1] * 30 + [2] * 20
    for c in reference[:-1]:
        d.add(c)
    assert d.psi() is None  # reference incomplete
    d.add(reference[-1])
    assert d.psi() == pytest.approx(0.0)  # the current window is the reference itself
    for c in [0] * 30 + [1] * 30 + [2] * 40:
        d.add(c)
    # bins: classes 0, 1, 2 (the reference's top 3) + other; both sides N=100, +0.5 each, /102
    # q = (50.5, 30.5, 20.5, .5)/102, p = (30.5, 30.5, 40.5, .5)/102
    # PSI = (20/102)(ln(40.5/20.5) + ln(50.5/30.5)) = 0.232377
    assert d.psi() == pytest.approx((20 / 102) * (math.log(40.5 / 20.5) + math.log(50.5 / 30.5)))
    assert d.psi() == pytest.approx(0.232377, abs=1e-6)


def test_unseen_classes_share_the_other_bin():
    d = DriftTracker(reference_size=4, window_size=4, bins=2, epsilon=0.5)
    for c in [7, 7, 7, 3]:  # bins: class 7, other (class 3 already falls in "other")
        d.add(c)
    for c in [9, 8, 3, 7]:  # 9 and 8 never seen: "other"
        d.add(c)
    # reference (7: 3, other: 1), current (7: 1, other: 3); +0.5, /5
    # PSI = (-2/5) ln(1.5/3.5) + (2/5) ln(3.5/1.5) = (4/5) ln(7/3)
    assert d.psi() == pytest.approx(0.8 * math.log(7 / 3))


def test_configured_reference_waits_for_a_full_current_window():
    d = DriftTracker(
        reference_size=1000, window_size=3, bins=3, epsilon=0.5, reference={0: 10, 1: 10}
    )
    d.add(0)
    d.add(1)
    assert d.psi() is None
    d.add(0)
    assert d.psi() is not None and d.state()["reference"] == "configured"


def test_confidence_histogram_is_cumulative_with_upper_bounds_inclusive():
    h = ConfidenceHistogram([0.5, 0.9])
    for score in (0.2, 0.5, 0.7, 0.95):
        h.observe(score)
    # <= 0.5: 0.2 and 0.5; <= 0.9: plus 0.7; +Inf: plus 0.95
    assert [b["count"] for b in h.state()["buckets"]] == [2, 3, 4]
    assert h.state()["mean"] == pytest.approx((0.2 + 0.5 + 0.7 + 0.95) / 4)
