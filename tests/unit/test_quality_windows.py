"""Confusion counts and sliding windows of labelled predictions, with hand arithmetic."""

from __future__ import annotations

import pytest

from serve_app.quality.windows import (
    ConfusionCounts,
    Outcome,
    SlidingWindow,
    WindowSpec,
    duration_name,
    window_specs,
)

# --- confusion arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pairs, accuracy, precision, recall, f1, classes",
    [
        # (truth, predicted) pairs
        ([(0, 0), (1, 1)], 1.0, 1.0, 1.0, 1.0, 2),
        # class 0: tp=1 fn=1 -> p=1, r=1/2, f1=2/3; class 5 only predicted: tp=0 fp=1 -> 0, 0, 0
        # macro p = (1+0)/2 = 0.5, r = (0.5+0)/2 = 0.25, f1 = (2/3+0)/2 = 1/3; accuracy 1/2
        ([(0, 0), (0, 5)], 0.5, 0.5, 0.25, 1 / 3, 2),
        # t0p0 x3, t0p1, t1p1, t1p0, t2p0, t3p3: 5 of 8 correct -> accuracy 0.625
        # class 0: tp=3 fp=2 (t1p0, t2p0) fn=1 (t0p1) -> p=3/5, r=3/4, f1=2*.6*.75/1.35=2/3
        # class 1: tp=1 fp=1 fn=1 -> 1/2, 1/2, 1/2
        # class 2 only as truth: tp=0 fn=1 -> 0, 0, 0
        # class 3: tp=1 -> 1, 1, 1
        # macro p = (.6+.5+0+1)/4 = .525; r = (.75+.5+0+1)/4 = .5625; f1 = (2/3+.5+0+1)/4 = 13/24
        ([(0, 0)] * 3 + [(0, 1), (1, 1), (1, 0), (2, 0), (3, 3)], 0.625, 0.525, 0.5625, 13 / 24, 4),
        ([(4, 2)], 0.0, 0.0, 0.0, 0.0, 2),  # all wrong: both classes score 0
    ],
)
def test_accuracy_and_macro_scores(pairs, accuracy, precision, recall, f1, classes):
    counts = ConfusionCounts()
    for truth, predicted in pairs:
        counts.add(truth, predicted)
    s = counts.scores()
    assert s.labelled == len(pairs)
    assert s.accuracy == pytest.approx(accuracy)
    assert s.precision == pytest.approx(precision)
    assert s.recall == pytest.approx(recall)
    assert s.f1 == pytest.approx(f1)
    assert s.classes == classes


def test_removing_outcomes_restores_the_counts_exactly():
    counts = ConfusionCounts()
    for t, p in [(0, 0), (0, 1), (2, 2)]:
        counts.add(t, p)
    counts.add(0, 1, -1)
    counts.add(2, 2, -1)
    # only (0, 0) left: class 1 and 2 are no longer present
    assert counts.scores().classes == 1 and counts.scores().f1 == 1.0
    counts.add(0, 0, -1)
    assert counts.scores().accuracy is None and counts.scores().labelled == 0


# --- sliding windows -----------------------------------------------------------------------------


def test_count_window_keeps_the_last_n():
    w = SlidingWindow(WindowSpec("last_3", size=3))
    for i, (t, p) in enumerate([(0, 1), (0, 1), (0, 0), (1, 1), (2, 2)]):
        w.add(Outcome(float(i), t, p))
    s = w.scores(now=5.0)
    # the two wrong (0 -> 1) left; (0,0), (1,1), (2,2) remain: accuracy 3/3, 3 classes
    assert (s.labelled, s.accuracy, s.classes) == (3, 1.0, 3)


def test_time_window_drops_outcomes_as_they_age():
    w = SlidingWindow(WindowSpec("last_1m", seconds=60))
    for at, (t, p) in [(0.0, (0, 1)), (30.0, (0, 0)), (59.0, (1, 1))]:
        w.add(Outcome(at, t, p))
    assert w.scores(59.0).labelled == 3  # accuracy 2/3
    assert w.scores(59.0).accuracy == pytest.approx(2 / 3)
    assert w.scores(60.0).labelled == 2  # the outcome at t=0 is 60 s old: out
    assert w.scores(60.0).accuracy == 1.0
    assert w.scores(89.9).labelled == 2
    assert w.scores(90.0).labelled == 1  # t=30 out
    assert w.scores(1000.0).labelled == 0 and w.scores(1000.0).accuracy is None


# --- window names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, name",
    [(3600, "1h"), (86400, "1d"), (300, "5m"), (90, "90s"), (5400, "90m"), (0.5, "0.5s")],
)
def test_window_names(seconds, name):
    assert duration_name(seconds) == name


def test_the_count_and_the_time_window_are_named_after_their_bounds():
    specs = window_specs(500, 1800)
    assert [w.name for w in specs] == ["last_500", "last_30m"]
    assert (specs[0].size, specs[1].seconds) == (500, 1800.0)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"name": ""}, "non-empty"),
        ({"name": "w"}, "exactly one of size"),
        ({"name": "w", "size": 10, "seconds": 60}, "exactly one of size"),
        ({"name": "w", "size": 0}, "size must be an int >= 1"),
        ({"name": "w", "seconds": 0}, "seconds must be > 0"),
    ],
)
def test_window_specs_say_what_is_wrong(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        WindowSpec(**kwargs)
