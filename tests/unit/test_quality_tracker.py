"""The QualityTracker: prediction store, feedback join, windows and snapshot, with a fake clock and
hand arithmetic."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import QualityConfig
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.tracker import QualityTracker
from serve_app.quality.wire import predictions_from_response

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


def tracker(clock=None, labels=None, **config) -> QualityTracker:
    return QualityTracker(
        QualityConfig(**config),
        labels={MODEL: LABELS} if labels is None else labels,
        clock=clock or FakeClock(),
    )


def pred(request_id, class_id, index=0, score=0.9, model=MODEL, version="1"):
    return {
        "request_id": request_id,
        "index": index,
        "model_name": model,
        "model_version": version,
        "class_id": class_id,
        "score": score,
    }


# --- windows through the tracker -----------------------------------------------------------------


def test_count_and_time_windows_through_the_tracker():
    clock = FakeClock(0.0)
    t = tracker(clock, window_size=2, window_seconds=100)
    t.record([pred("a", 0), pred("b", 1), pred("c", 2)])
    t.feedback(FeedbackItem("a", 1))  # wrong, at t=0
    clock.advance(50)
    t.feedback(FeedbackItem("b", 1))  # right, at t=50
    t.feedback(FeedbackItem("c", 2))  # right, at t=50
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
    assert t.feedback(FeedbackItem("a", "dog")).correct is False  # predicted cat (0)
    assert t.feedback(FeedbackItem("b", 1)).correct is True
    again = t.feedback(FeedbackItem("a", "cat"))
    assert again.status == "joined" and again.replaced and again.correct
    s = t.window_scores(MODEL, "1")["last_1000"]
    assert (s.labelled, s.accuracy) == (2, 1.0)  # counted once, with the corrected label


def test_retracted_outcomes_do_not_pile_up_in_a_count_window():
    t = tracker(window_size=5)
    t.record([pred("a", 0)])
    for i in range(500):
        t.feedback(FeedbackItem("a", i % 2))
    window = t.windows._for((MODEL, "1"))[0]
    assert window.live == 1 and len(window._queue) <= 2 * window.live + 65


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
    result = t.feedback(FeedbackItem("r1", "cat"))
    assert (result.status, result.http_status, result.model_name) == ("expired", 410, MODEL)
    assert "size" in result.message
    assert t.feedback(FeedbackItem("never-sent", "cat")).http_status == 404
    assert t.feedback(FeedbackItem("r2", "fox", index=1)).status == "joined"
    stats = t.store.stats()
    assert stats["predictions"] == 3 and stats["evicted_predictions"] == {"age": 0, "size": 1}


def test_age_bound_with_fake_clock():
    clock = FakeClock()
    t = tracker(clock, store_max_age_s=100)
    t.record([pred("old", 0)])
    clock.advance(99.9)
    assert t.feedback(FeedbackItem("old", "cat")).status == "joined"
    clock.advance(0.1)  # 100 s old: evicted
    assert t.feedback(FeedbackItem("old", "cat")).status == "expired"
    assert t.store.stats()["evicted_predictions"]["age"] == 1


def test_evicted_ids_past_their_bound_become_unknown():
    t = tracker(store_max_items=1, store_evicted_ids_max=1)
    t.record([pred("r1", 0)])
    t.record([pred("r2", 0)])  # r1 evicted, remembered
    assert t.feedback(FeedbackItem("r1", 0)).status == "expired"
    t.record([pred("r3", 0)])  # r2 evicted; the record of r1 is dropped (bound 1)
    assert t.feedback(FeedbackItem("r2", 0)).status == "expired"
    assert t.feedback(FeedbackItem("r1", 0)).status == "unknown_id"
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
        ("fox", "joined", "joined"),
        (4, "joined", "joined"),
    ],
)
def test_labels_are_resolved_or_refused(label, status, detail):
    t = tracker()
    t.record([pred("r", 2)])
    result = t.feedback(FeedbackItem("r", label))
    assert result.status == status and detail in result.message
    assert result.http_status == (200 if status == "joined" else 422)


def test_models_without_label_names_take_class_ids_only():
    t = tracker(labels={})
    t.record([pred("r", 7)])
    assert t.feedback(FeedbackItem("r", "tabby")).status == "unknown_label"
    assert t.feedback(FeedbackItem("r", 7)).correct is True


def test_an_image_index_the_request_did_not_have_is_unknown():
    t = tracker()
    t.record([pred("r", 0)])
    result = t.feedback(FeedbackItem("r", "cat", index=1))  # the request had one image
    assert result.status == "unknown_id" and "image indices [0], not 1" in result.message
    assert result.http_status == 404


def test_feedback_results_are_counted_per_model():
    t = tracker(store_max_items=1)
    t.record([pred("a", 0)])
    t.feedback(FeedbackItem("a", "cat"))
    t.feedback(FeedbackItem("a", "zebra"))
    t.feedback(FeedbackItem("nope", "cat"))
    t.record([pred("b", 0)])  # evicts a
    t.feedback(FeedbackItem("a", "cat"))
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
    assert t.feedback(FeedbackItem("dup", 1)).correct is True
    assert t.store.stats()["replaced_requests"] == 1


def test_versions_are_tracked_apart():
    t = tracker()
    t.record([pred("a", 0, version="1")])
    t.record([pred("b", 0, version="2")])
    t.feedback(FeedbackItem("a", 0))
    t.feedback(FeedbackItem("b", 1))
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


def test_config_errors_show_the_fix():
    with pytest.raises(ValidationError, match="store_max_itmes\n.*Extra inputs are not permitted"):
        QualityConfig.model_validate({"store_max_itmes": 10})
    with pytest.raises(ValidationError, match="window_size\n.*greater than or equal to 1"):
        QualityConfig.model_validate({"window_size": 0})
    with pytest.raises(ValidationError, match="drift_bins"):
        QualityConfig.model_validate({"drift_bins": 1})
    cfg = QualityConfig.model_validate({"window_size": 500, "window_seconds": 1800})
    snapshot = tracker(window_size=cfg.window_size, window_seconds=cfg.window_seconds).snapshot(
        MODEL
    )
    assert [w["name"] for w in snapshot["windows"]] == ["last_500", "last_30m"]


def test_a_configured_drift_reference_is_used_from_the_first_prediction():
    # YAML keys may arrive as strings: class ids are ints after validation
    t = tracker(reference_size=10, drift_window_size=10, drift_reference={MODEL: {"0": 5, "1": 5}})
    t.record([pred(f"r{i}", i % 2) for i in range(10)])
    assert t.snapshot(MODEL)["versions"]["1"]["drift"]["reference"] == "configured"
    # reference 0: 5, 1: 5; current 0: 5, 1: 5 -> the same shares: PSI 0
    assert t.drift_psi(MODEL, "1") == pytest.approx(0.0)
