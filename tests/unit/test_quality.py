"""Quality windows, drift, prediction store and feedback join, with a fake clock and hand
arithmetic."""

from __future__ import annotations

import math

import pytest

from serve_app.quality.tracker import (
    ConfusionCounts,
    DriftTracker,
    Outcome,
    QualityConfig,
    QualityTracker,
    SlidingWindow,
    WindowSpec,
    duration_name,
    predictions_from_response,
    psi,
)

MODEL = "efficientnet_lite0"
LABELS = ["cat", "dog", "fox", "crane", "crane"]  # ImageNet also names two classes "crane"


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tracker(clock=None, **config) -> QualityTracker:
    config.setdefault("labels", {MODEL: LABELS})
    return QualityTracker(QualityConfig.from_dict(config), clock=clock or FakeClock())


def pred(request_id, class_id, index=0, score=0.9, model=MODEL, version="1"):
    return {
        "request_id": request_id,
        "index": index,
        "model_name": model,
        "model_version": version,
        "class_id": class_id,
        "score": score,
    }


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


def test_time_window_with_fake_clock():
    clock = FakeClock(0.0)
    w = SlidingWindow(WindowSpec("last_1m", seconds=60))
    for at, (t, p) in [(0.0, (0, 1)), (30.0, (0, 0)), (59.0, (1, 1))]:
        clock.now = at
        w.add(Outcome(clock(), t, p))
    assert w.scores(59.0).labelled == 3  # accuracy 2/3
    assert w.scores(59.0).accuracy == pytest.approx(2 / 3)
    assert w.scores(60.0).labelled == 2  # the outcome at t=0 is 60 s old: out
    assert w.scores(60.0).accuracy == 1.0
    assert w.scores(89.9).labelled == 2
    assert w.scores(90.0).labelled == 1  # t=30 out
    assert w.scores(1000.0).labelled == 0 and w.scores(1000.0).accuracy is None


def test_count_and_time_windows_through_the_tracker():
    clock = FakeClock(0.0)
    t = tracker(clock, window_size=2, window_seconds=100)
    t.record([pred("a", 0), pred("b", 1), pred("c", 2)])
    t.feedback("a", 0, 1)  # wrong, at t=0
    clock.advance(50)
    t.feedback("b", 0, 1)  # right, at t=50
    t.feedback("c", 0, 2)  # right, at t=50
    scores = t.window_scores(MODEL, "1")
    assert (
        scores["last_2"].labelled == 2 and scores["last_2"].accuracy == 1.0
    )  # a fell out by count
    assert scores["last_100s"].labelled == 3
    assert scores["last_100s"].accuracy == pytest.approx(2 / 3)
    clock.advance(50)  # t=100: a is 100 s old
    assert t.window_scores(MODEL, "1")["last_100s"].accuracy == 1.0
    clock.advance(50)  # t=150: everything is 100 s old
    assert t.window_scores(MODEL, "1")["last_100s"].labelled == 0


def test_corrected_label_replaces_the_first_one():
    t = tracker()
    t.record([pred("a", 0), pred("b", 1)])
    assert t.feedback("a", 0, "dog").correct is False  # predicted cat (0)
    assert t.feedback("b", 0, 1).correct is True
    again = t.feedback("a", 0, "cat")
    assert again.status == "joined" and again.replaced and again.correct
    s = t.window_scores(MODEL, "1")["last_1000"]
    assert (s.labelled, s.accuracy) == (2, 1.0)  # counted once, with the corrected label


def test_retracted_outcomes_do_not_pile_up_in_a_count_window():
    t = tracker(window_size=5)
    t.record([pred("a", 0)])
    for i in range(500):
        t.feedback("a", 0, i % 2)
    window = t.windows._for((MODEL, "1"))[0]
    assert window.live == 1 and len(window._queue) <= 2 * window.live + 65


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


def test_confidence_histogram_in_snapshot():
    t = tracker()
    t.record([pred("a", 0, score=0.05), pred("b", 0, score=0.95), pred("c", 0, score=1.0)])
    conf = t.snapshot(MODEL)["versions"]["1"]["confidence"]
    cumulative = {b["le"]: b["count"] for b in conf["buckets"]}
    assert cumulative[0.1] == 1 and cumulative[0.9] == 1 and cumulative[0.95] == 2
    assert cumulative[1.0] == 3 and cumulative["+Inf"] == 3
    assert conf["mean"] == pytest.approx((0.05 + 0.95 + 1.0) / 3)


# --- store bounds and feedback results -----------------------------------------------------------


def test_size_bound_evicts_oldest_and_says_expired():
    t = tracker(store_max_items=3)
    t.record([pred("r1", 0)])
    t.record([pred("r2", 1, index=0), pred("r2", 2, index=1)])
    t.record([pred("r3", 0)])  # 4 images > 3: r1 (oldest) is evicted
    result = t.feedback("r1", 0, "cat")
    assert (result.status, result.http_status, result.model_name) == ("expired", 410, MODEL)
    assert "size" in result.message
    assert t.feedback("never-sent", 0, "cat").http_status == 404
    assert t.feedback("r2", 1, "fox").status == "joined"
    stats = t.store.stats()
    assert stats["predictions"] == 3 and stats["evicted_predictions"] == {"age": 0, "size": 1}


def test_age_bound_with_fake_clock():
    clock = FakeClock()
    t = tracker(clock, store_max_age_s=100)
    t.record([pred("old", 0)])
    clock.advance(99.9)
    assert t.feedback("old", 0, "cat").status == "joined"
    clock.advance(0.1)  # 100 s old: evicted
    assert t.feedback("old", 0, "cat").status == "expired"
    assert t.store.stats()["evicted_predictions"]["age"] == 1


def test_evicted_ids_past_their_bound_become_unknown():
    t = tracker(store_max_items=1, store_evicted_ids_max=1)
    t.record([pred("r1", 0)])
    t.record([pred("r2", 0)])  # r1 evicted, remembered
    assert t.feedback("r1", 0, 0).status == "expired"
    t.record([pred("r3", 0)])  # r2 evicted; the record of r1 is dropped (bound 1)
    assert t.feedback("r2", 0, 0).status == "expired"
    assert t.feedback("r1", 0, 0).status == "unknown_id"
    assert t.store.stats()["evicted_ids_forgotten"] == 1


def test_eviction_callback_is_told():
    seen = []
    t = QualityTracker(
        QualityConfig(store_max_items=1),
        clock=FakeClock(),
        on_evict=lambda reason, model, n: seen.append((reason, model, n)),
    )
    t.record([pred("r1", 0)])
    t.record([pred("r2", 0)])
    assert seen == [("size", MODEL, 1)]


@pytest.mark.parametrize(
    "label, status, detail",
    [
        ("zebra", "unknown_label", "not a class"),
        (5, "unknown_label", "ids 0..4"),  # 5 labels: ids 0..4
        (-1, "unknown_label", "negative"),
        ("crane", "unknown_label", "[3, 4]"),  # ambiguous name: ask for the class id
        (3.0, "unknown_label", "class name or class id"),
        (True, "unknown_label", "class name or class id"),
        ("fox", "joined", "joined"),
        (4, "joined", "joined"),
    ],
)
def test_labels_are_resolved_or_refused(label, status, detail):
    t = tracker()
    t.record([pred("r", 2)])
    result = t.feedback("r", 0, label)
    assert result.status == status and detail in result.message
    assert result.http_status == (200 if status == "joined" else 422)


def test_models_without_label_names_take_class_ids_only():
    t = tracker(labels={})
    t.record([pred("r", 7)])
    assert t.feedback("r", 0, "tabby").status == "unknown_label"
    assert t.feedback("r", 0, 7).correct is True


@pytest.mark.parametrize(
    "request_id, index, status",
    [
        ("r", 1, "unknown_id"),  # the request had one image
        ("", 0, "invalid"),
        (None, 0, "invalid"),
        ("r", -1, "invalid"),
        ("r", "0", "invalid"),
    ],
)
def test_bad_ids_and_indices(request_id, index, status):
    t = tracker()
    t.record([pred("r", 0)])
    result = t.feedback(request_id, index, "cat")
    assert result.status == status
    assert result.http_status == (404 if status == "unknown_id" else 422)


def test_feedback_results_are_counted_per_model():
    t = tracker(store_max_items=1)
    t.record([pred("a", 0)])
    t.feedback("a", 0, "cat")
    t.feedback("a", 0, "zebra")
    t.feedback("nope", 0, "cat")
    t.record([pred("b", 0)])  # evicts a
    t.feedback("a", 0, "cat")
    assert t.snapshot(MODEL)["feedback"] == {
        "joined": 1,
        "unknown_id": 0,
        "expired": 1,
        "unknown_label": 1,
    }
    assert t.snapshot("unknown")["feedback"]["unknown_id"] == 1


def test_record_keeps_good_predictions_and_reports_bad_ones():
    t = tracker()
    result = t.record(
        [
            pred("a", 0),
            {
                "request_id": "b",
                "index": 0,
                "model_name": MODEL,
                "model_version": "1",
                "class_id": 1,
            },  # no score
            pred("c", 1, score=1.5),
            pred("a", 2, index=0),  # index 0 of a twice
            pred("a", 3, index=1, model="other"),  # a mixes two models
            "garbage",
            pred("d", 2),
        ]
    )
    assert result.stored == 2 and result.accepted == [0, 6]
    assert len(result.rejected) == 5
    assert (
        "score" in result.rejected[0]
        and "twice" in result.rejected[2]
        and "already has" in result.rejected[3]
    )


def test_same_request_id_recorded_again_replaces_the_prediction():
    t = tracker()
    t.record([pred("dup", 0)])
    t.record([pred("dup", 1)])
    assert t.feedback("dup", 0, 1).correct is True
    assert t.store.stats()["replaced_requests"] == 1


def test_versions_are_tracked_apart():
    t = tracker()
    t.record([pred("a", 0, version="1")])
    t.record([pred("b", 0, version="2")])
    t.feedback("a", 0, 0)
    t.feedback("b", 0, 1)
    snap = t.snapshot(MODEL)
    assert snap["versions"]["1"]["windows"]["last_1000"]["accuracy"] == 1.0
    assert snap["versions"]["2"]["windows"]["last_1000"]["accuracy"] == 0.0


def test_snapshot_of_a_model_without_data():
    snap = tracker().snapshot("resnet50")
    assert snap["versions"] == {} and snap["feedback"]["joined"] == 0
    assert [w["name"] for w in snap["windows"]] == ["last_1000", "last_1h"]


def test_predictions_from_a_rest_response():
    response = {
        "request_id": "abc",
        "model_name": MODEL,
        "model_version": 1,
        "predictions": [
            {"index": 0, "top_k": [{"label": "cat", "class_id": 0, "score": 0.61}]},
            {"index": 1, "top_k": [{"label": "fox", "class_id": 2, "score": 0.4}]},
        ],
    }
    records = predictions_from_response(response)
    assert records[1] == pred("abc", 2, index=1, score=0.4)
    assert tracker().record(records).stored == 2


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, name",
    [(3600, "1h"), (86400, "1d"), (300, "5m"), (90, "90s"), (5400, "90m"), (0.5, "0.5s")],
)
def test_window_names(seconds, name):
    assert duration_name(seconds) == name


def test_config_errors_show_the_fix():
    with pytest.raises(ValueError, match="unknown quality config key.*allowed"):
        QualityConfig.from_dict({"store_max_itmes": 10})
    with pytest.raises(ValueError, match="window_size must be an int >= 1"):
        QualityConfig.from_dict({"window_size": 0})
    with pytest.raises(ValueError, match="drift_bins"):
        QualityConfig.from_dict({"drift_bins": 1})
    cfg = QualityConfig.from_dict({"window_size": 500, "window_seconds": 1800})
    assert [w.name for w in cfg.windows] == ["last_500", "last_30m"]
