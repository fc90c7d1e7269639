"""The quality store on a temporary folder: a "restart" is a new tracker on the same folder, which
must bring back predictions, labels, windows, drift and counters; bounds by size and age with a
fake clock."""

from __future__ import annotations

import sqlite3

import pytest

from serve_app.config import QualityConfig
from serve_app.paths import REPO_ROOT
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.store import (
    SCHEMA_VERSION,
    STORE_FILE,
    SQLiteQualityStore,
    StoreSchemaError,
    store_path,
)
from serve_app.quality.tracker import QualityTracker

MODEL = "efficientnet_lite0"
LABELS = ["cat", "dog", "fox"]


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def pred(request_id, class_id, index=0, score=0.9, version="1"):
    return {
        "request_id": request_id,
        "index": index,
        "model_name": MODEL,
        "model_version": version,
        "class_id": class_id,
        "score": score,
    }


def open_tracker(folder, clock, **config) -> QualityTracker:
    """A tracker on the store in ``folder``, as the QualityMonitor opens it."""
    cfg = QualityConfig(store_dir=str(folder), **config)
    store = SQLiteQualityStore(
        store_path(cfg.store_dir),
        cfg.store_max_items,
        cfg.store_max_age_s,
        cfg.store_evicted_ids_max,
        clock,
    )
    return QualityTracker(cfg, {MODEL: LABELS}, clock=clock, store=store)


def restart(tracker: QualityTracker, folder, clock, **config) -> QualityTracker:
    tracker.store.close()
    return open_tracker(folder, clock, **config)


def test_everything_the_snapshot_shows_comes_back_after_a_restart(tmp_path):
    clock = FakeClock()
    config = {"reference_size": 10, "drift_window_size": 10, "window_size": 3}
    t = open_tracker(tmp_path, clock, **config)
    t.record([pred(f"r{i}", i % 3, score=0.5 + i / 40) for i in range(14)])
    t.record([pred("two", 0, index=0), pred("two", 1, index=1)])
    for request_id, label in [("r0", "cat"), ("r1", "cat"), ("r2", "fox"), ("r3", "dog")]:
        t.feedback(FeedbackItem(request_id, label))
    t.feedback(FeedbackItem("nope", "cat"))  # unknown id: counted under "unknown"
    t.feedback(FeedbackItem("r4", "wolf"))  # unknown label
    before = t.snapshot(MODEL)
    assert before["versions"]["1"]["drift"]["psi"] is not None  # reference and window are full

    t = restart(t, tmp_path, clock, **config)
    assert t.snapshot(MODEL) == before
    assert t.snapshot("unknown")["feedback"]["unknown_id"] == 1
    # a prediction made before the restart still joins, with the answer it had before
    joined = t.feedback(FeedbackItem("two", "dog", index=1))
    assert (joined.status, joined.correct, joined.replaced) == ("joined", True, False)
    # count window of 3: r2 (right), r3 (wrong: predicted cat 0, label dog 1), two#1 (right)
    scores = t.window_scores(MODEL, "1")["last_3"]
    assert (scores.labelled, scores.accuracy) == (3, pytest.approx(2 / 3))


def test_a_label_replaced_after_a_restart_is_counted_once(tmp_path):
    clock = FakeClock()
    t = open_tracker(tmp_path, clock)
    t.record([pred("a", 0), pred("b", 1)])
    t.feedback(FeedbackItem("a", "dog"))  # wrong: predicted cat
    t.feedback(FeedbackItem("b", "dog"))  # right
    t = restart(t, tmp_path, clock)
    again = t.feedback(FeedbackItem("a", "cat"))
    assert again.replaced and again.correct
    s = t.window_scores(MODEL, "1")["last_1000"]
    assert (s.labelled, s.accuracy) == (2, 1.0)  # a's first label left the window
    t = restart(t, tmp_path, clock)
    s = t.window_scores(MODEL, "1")["last_1000"]
    assert (s.labelled, s.accuracy) == (2, 1.0)
    assert t.snapshot(MODEL)["feedback"]["joined"] == 3


def test_the_time_window_keeps_sliding_across_a_restart(tmp_path):
    clock = FakeClock(0.0)
    t = open_tracker(tmp_path, clock, window_seconds=100)
    t.record([pred("a", 0), pred("b", 1)])
    t.feedback(FeedbackItem("a", "cat"))  # joined at t=0
    clock.now = 60.0
    t.feedback(FeedbackItem("b", "cat"))  # joined at t=60, wrong
    clock.now = 80.0
    t = restart(t, tmp_path, clock, window_seconds=100)
    assert t.window_scores(MODEL, "1")["last_100s"].labelled == 2
    clock.now = 100.0  # a is 100 s old: out; b (40 s) stays
    s = t.window_scores(MODEL, "1")["last_100s"]
    assert (s.labelled, s.accuracy) == (1, 0.0)
    assert t.window_scores(MODEL, "1")["last_1000"].labelled == 2  # the count window keeps both


def test_stored_outcomes_are_bounded_by_the_windows(tmp_path):
    clock = FakeClock(0.0)
    t = open_tracker(tmp_path, clock, window_size=5, window_seconds=10)
    t.record([pred(f"r{i}", 0) for i in range(50)])
    for i in range(50):
        t.feedback(FeedbackItem(f"r{i}", "cat"))
        clock.now += 1.0
    t.maintain()
    # now t=50: the 10 s window holds the labels of t=41..49 (age < 10 s): 9; the count window's
    # last 5 (t=45..49) are among them; the other 41 labelled predictions are no longer stored
    assert len(list(t.store.outcomes())) == 9
    t = restart(t, tmp_path, clock, window_size=5, window_seconds=10)
    assert t.window_scores(MODEL, "1")["last_5"].labelled == 5


def test_eviction_by_size_is_counted_and_survives_a_restart(tmp_path):
    clock = FakeClock()
    t = open_tracker(tmp_path, clock, store_max_items=3)
    t.record([pred("r1", 0)])
    t.record([pred("r2", 1, index=0), pred("r2", 2, index=1)])
    t.record([pred("r3", 0)])  # 1 + 2 + 1 = 4 images > 3: r1 (oldest) is evicted
    t = restart(t, tmp_path, clock, store_max_items=3)
    expired = t.feedback(FeedbackItem("r1", "cat"))
    assert (expired.status, expired.http_status, expired.model_name) == ("expired", 410, MODEL)
    assert "size" in expired.message
    assert t.feedback(FeedbackItem("r2", "fox", index=1)).status == "joined"
    stats = t.store.stats()
    assert (stats["requests"], stats["predictions"]) == (2, 3)
    assert stats["evicted_predictions"] == {"age": 0, "size": 1}
    t.record([pred("r4", 0, index=0), pred("r4", 0, index=1)])  # 5 images: r2 (2) goes
    assert t.store.stats()["evicted_predictions"] == {"age": 0, "size": 3}


def test_eviction_by_age_with_a_fake_clock_across_a_restart(tmp_path):
    clock = FakeClock(0.0)
    t = open_tracker(tmp_path, clock, store_max_age_s=100)
    t.record([pred("old", 0)])
    clock.now = 50.0
    t.record([pred("young", 0)])
    t = restart(t, tmp_path, clock, store_max_age_s=100)
    clock.now = 99.9
    assert t.feedback(FeedbackItem("old", "cat")).status == "joined"
    clock.now = 100.0  # "old" is 100 s old: evicted; "young" is 50 s old
    t = restart(t, tmp_path, clock, store_max_age_s=100)
    assert t.feedback(FeedbackItem("old", "cat")).status == "expired"
    assert t.feedback(FeedbackItem("young", "cat")).status == "joined"
    assert t.store.stats()["evicted_predictions"]["age"] == 1
    # the label joined before the eviction still counts in the windows
    assert t.window_scores(MODEL, "1")["last_1000"].labelled == 2


def test_remembered_evicted_ids_are_bounded_and_their_loss_counted(tmp_path):
    clock = FakeClock()
    t = open_tracker(tmp_path, clock, store_max_items=1, store_evicted_ids_max=1)
    t.record([pred("r1", 0)])
    t.record([pred("r2", 0)])  # r1 evicted, remembered
    t.record([pred("r3", 0)])  # r2 evicted; r1 forgotten (bound 1)
    t = restart(t, tmp_path, clock, store_max_items=1, store_evicted_ids_max=1)
    assert t.feedback(FeedbackItem("r2", 0)).status == "expired"
    assert t.feedback(FeedbackItem("r1", 0)).status == "unknown_id"
    assert t.store.stats()["evicted_ids_forgotten"] == 1


def test_a_batch_is_one_transaction(tmp_path):
    clock = FakeClock()
    t = open_tracker(tmp_path, clock)
    statements: list[str] = []
    t.store._db.set_trace_callback(statements.append)
    t.record([pred(f"r{i}", i % 3, index=0) for i in range(20)])
    begins = [s for s in statements if s.startswith("BEGIN")]
    commits = [s for s in statements if s == "COMMIT"]
    assert (len(begins), len(commits)) == (1, 1)


def test_the_file_is_in_wal_mode_with_normal_sync(tmp_path):
    store = SQLiteQualityStore(tmp_path / STORE_FILE, 10, 60.0, 10)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    # the request-id lookups are indexed
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM requests WHERE request_id = ?", ("x",)
    ).fetchall()
    assert "USING INDEX" in str(plan)
    store.close()


def test_a_folder_of_another_schema_is_refused_with_the_fix(tmp_path):
    db = sqlite3.connect(tmp_path / STORE_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreSchemaError, match="move that folder aside"):
        SQLiteQualityStore(tmp_path / STORE_FILE, 10, 60.0, 10)


@pytest.mark.parametrize(
    "store_dir, expected",
    [
        (None, None),  # memory only
        ("", None),
        ("/var/lib/recserve", "/var/lib/recserve/" + STORE_FILE),
        (".cache/quality", str(REPO_ROOT / ".cache/quality" / STORE_FILE)),  # project folder
    ],
)
def test_store_path(store_dir, expected):
    path = store_path(store_dir)
    assert (None if path is None else str(path)) == expected


def test_the_default_tracker_keeps_its_state_in_memory():
    t = QualityTracker(QualityConfig(), {MODEL: LABELS}, clock=FakeClock())
    assert t.store.stats()["location"] == ":memory:"
