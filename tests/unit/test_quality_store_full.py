"""A quality store whose writes fail, on a real SQLite file: predictions are still recorded without
an error (dropped and counted), feedback gets 503 naming the problem, the state change is logged
once and moves a gauge, and the store recovers by itself.

Stand-ins for the storage, each giving SQLite's own error: `PRAGMA max_page_count` at the file's
current size for a full disk ("database or disk is full"), `PRAGMA query_only` for a read-only one
("attempt to write a readonly database"), and a store folder below a plain file for one that
cannot be created.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.config import QualityConfig
from serve_app.errors import StoreUnavailable
from serve_app.monitoring import metrics as m
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.monitor import QualityMonitorCore
from serve_app.quality.store import SQLiteQualityStore, store_path
from serve_app.quality.store_health import RECOVER_AFTER_S
from serve_app.quality.tracker import QualityTracker
from serve_app.quality.wire import raise_wired_error

MODEL = "efficientnet_lite0"
LABELS = {MODEL: ["cat", "dog", "fox"]}


def preds(prefix: str, n: int) -> list[dict]:
    return [
        {
            "request_id": f"{prefix}-{i:06d}-{'x' * 40}",
            "index": 0,
            "model_name": MODEL,
            "model_version": "1",
            "class_id": i % 3,
            "score": 0.9,
        }
        for i in range(n)
    ]


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Messages(logging.Handler):
    """The store's warnings and errors (Ray's logger does not propagate to pytest's capture)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        if "quality store" in record.getMessage():
            self.lines.append(record.getMessage())


@pytest.fixture
def messages():
    handler = Messages()
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def tracker_on(folder, states: list, clock=None) -> QualityTracker:
    cfg = QualityConfig(store_dir=str(folder))
    clock = clock or FakeClock()
    store = SQLiteQualityStore(
        store_path(cfg.store_dir),
        cfg.store_max_items,
        cfg.store_max_age_s,
        cfg.store_evicted_ids_max,
        clock,
        on_health=states.append,
    )
    return QualityTracker(cfg, LABELS, clock=clock, store=store)


def fill_the_disk(store: SQLiteQualityStore) -> None:
    """The file may not grow by a page from here on."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def free_space(store: SQLiteQualityStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def label(request_id: str, name: str = "cat") -> FeedbackItem:
    return FeedbackItem(request_id=request_id, label=name, index=0)


def test_a_full_disk_costs_no_prediction_an_error_and_feedback_a_503(tmp_path, messages):
    states: list = []
    clock = FakeClock()
    tracker = tracker_on(tmp_path, states, clock)
    kept = preds("kept", 200)
    tracker.record(kept)
    fill_the_disk(tracker.store)

    # Each label needs a little room: the pages the file has run out within a few dozen.
    joined = 0
    with pytest.raises(StoreUnavailable) as err:
        for p in kept:
            tracker.feedback(label(p["request_id"]))
            joined += 1
    assert 0 <= joined < len(kept)
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "30"
    assert "database or disk is full" in err.value.message
    assert tracker.window_scores(MODEL, "1")["last_1000"].labelled == joined
    problem = tracker.store.stats()["problem"]
    assert "database or disk is full" in problem

    for round_ in range(5):  # many failing writes, no further state change
        assert tracker.record(preds(f"lost{round_}", 200)).rejected == []
    stats = tracker.store.stats()
    assert not stats["writable"] and stats["dropped_predictions"] == 5 * 200
    assert stats["predictions"] == 200  # what was committed, not what the failed writes added
    assert states == [problem]
    assert len(messages) == 1 and "cannot be written" in messages[0]

    free_space(tracker.store)
    # A write that goes through right after a failure does not yet end the state: a nearly full
    # disk takes some writes and refuses others.
    assert tracker.feedback(label(kept[joined]["request_id"])).status == "joined"
    assert not tracker.store.stats()["writable"] and len(messages) == 1
    clock.now += RECOVER_AFTER_S
    assert tracker.feedback(label(kept[joined + 1]["request_id"])).status == "joined"
    assert tracker.store.stats()["writable"] and states == [problem, None]
    assert len(messages) == 2 and "writable again" in messages[1]
    assert "1000 predictions were not kept" in messages[1]
    tracker.record(preds("after", 10))
    tracker.store.close()

    # A restart finds what was committed: the kept predictions, their labels, the later ones.
    restarted = tracker_on(tmp_path, [])
    assert restarted.store.stats()["predictions"] == 210
    assert restarted.window_scores(MODEL, "1")["last_1000"].labelled == joined + 2
    assert restarted.store.lookup(preds("lost0", 1)[0]["request_id"]).status == "unknown_id"


def test_a_read_only_store_refuses_feedback_and_recovers(tmp_path, messages):
    states: list = []
    clock = FakeClock()
    tracker = tracker_on(tmp_path, states, clock)
    kept = preds("kept", 3)
    tracker.record(kept)
    tracker.store._db.execute("PRAGMA query_only = ON")

    tracker.record(preds("lost", 3))
    with pytest.raises(StoreUnavailable, match="readonly"):
        tracker.feedback(label(kept[1]["request_id"]))
    tracker.maintain()  # housekeeping waits; it does not raise
    assert len(states) == 1 and len(messages) == 1

    tracker.store._db.execute("PRAGMA query_only = OFF")
    clock.now += RECOVER_AFTER_S
    assert tracker.feedback(label(kept[1]["request_id"], "dog")).correct is True
    assert states[-1] is None and tracker.store.stats()["dropped_predictions"] == 3


def test_outcomes_a_failed_write_could_not_drop_are_dropped_by_the_next(tmp_path):
    tracker = tracker_on(tmp_path, [])
    store = tracker.store
    tracker.record(preds("p", 3))
    for p in preds("p", 3):
        tracker.feedback(label(p["request_id"]))
    seqs = [row[0] for row in store._db.execute("SELECT seq FROM outcomes ORDER BY seq")]
    assert len(seqs) == 3
    store._db.execute("PRAGMA query_only = ON")
    store.forget_outcomes(seqs[:2])
    store._db.execute("PRAGMA query_only = OFF")
    store.forget_outcomes([])
    assert [s.seq for s in store.outcomes()] == seqs[2:]


def monitor_on(folder, clock=None) -> tuple[QualityMonitorCore, InMemoryMetricsBackend]:
    backend = InMemoryMetricsBackend()
    config = {"store_dir": str(folder)}
    core = QualityMonitorCore(config, LABELS, clock=clock or FakeClock(), backend=backend)
    return core, backend


def test_the_monitor_keeps_recording_answers_503_and_moves_the_gauge(tmp_path, messages):
    clock = FakeClock()
    core, backend = monitor_on(tmp_path, clock)
    writable = backend.get(m.STORE_WRITABLE)
    kept = preds("kept", 200)

    async def scenario():
        assert (await core.record(kept))["stored"] == 200
        assert writable.value() == 1
        fill_the_disk(core.tracker.store)
        assert (await core.record(preds("lost", 300)))["rejected"] == []
        assert writable.value() == 0
        # as data: raised inside the replica, Serve would log each one with a traceback
        reply = await core.feedback_summary([label(p["request_id"]) for p in kept])
        assert reply["error"]["code"] == "quality_store_unavailable"
        assert writable.value() == 0
        snapshot = await core.snapshot(MODEL)  # the quality page still answers
        assert snapshot["store"]["writable"] is False
        free_space(core.tracker.store)
        clock.now += RECOVER_AFTER_S
        (result,) = await core.feedback([label(kept[0]["request_id"])])
        assert result["http_status"] == 200 and writable.value() == 1

    asyncio.run(scenario())
    core.close()


def test_a_store_folder_that_cannot_be_created_still_starts_the_monitor(tmp_path, messages):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    core, backend = monitor_on(blocker / "quality")

    async def scenario():
        await core.record(preds("p", 2))
        reply = await core.feedback([label(preds("p", 1)[0]["request_id"])])
        assert reply["error"]["headers"] == {"Retry-After": "30"}

    asyncio.run(scenario())
    assert backend.get(m.STORE_WRITABLE).value() == 0
    stats = core.tracker.store.stats()
    assert stats["writable"] is False and stats["dropped_predictions"] == 2
    assert len(messages) == 1 and "not restored" in messages[0]
    core.close()


def test_the_ingress_answers_the_monitors_refusal_with_503(tmp_path, messages):
    from serve_app.serving.ingress import api

    core, _ = monitor_on(tmp_path)
    kept = preds("kept", 3)
    replies = []

    async def scenario():
        await core.record(kept)
        core.tracker.store._db.execute("PRAGMA query_only = ON")
        replies.append(await core.feedback([label(kept[0]["request_id"])]))

    asyncio.run(scenario())
    core.close()
    app = FastAPI(exception_handlers=api.exception_handlers)

    @app.post("/v1/feedback")
    async def feedback():
        return raise_wired_error(replies[0])

    response = TestClient(app).post("/v1/feedback")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.json()["error"]["code"] == "quality_store_unavailable"
    assert "attempt to write a readonly database" in response.json()["error"]["message"]
