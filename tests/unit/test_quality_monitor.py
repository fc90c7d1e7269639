"""The QualityMonitor's logic without Ray: what it stores, answers and exports."""

from __future__ import annotations

import asyncio
import math

import pytest

from serve_app.monitoring import metrics as m
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from serve_app.quality.feedback import FeedbackItem, parse_feedback
from serve_app.quality.monitor import QualityMonitor, QualityMonitorCore

MODEL = "efficientnet_lite0"


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def pred(request_id, class_id, index=0, score=0.9):
    return {
        "request_id": request_id,
        "index": index,
        "model_name": MODEL,
        "model_version": "1",
        "class_id": class_id,
        "score": score,
        "timestamp": 123.0,
    }


def monitor(**config):
    backend = InMemoryMetricsBackend()
    clock = FakeClock()
    labels = {MODEL: ["cat", "dog", "fox"]}
    config.setdefault("store_dir", None)  # memory: the restart tests give a folder
    return QualityMonitorCore(config, labels, clock=clock, backend=backend), backend, clock


def test_feedback_moves_the_quality_gauges_to_hand_values():
    core, backend, _ = monitor()

    async def scenario():
        await core.record([pred("a", 0), pred("b", 1), pred("c", 2, score=0.3), pred("d", 0)])
        items, _ = parse_feedback(
            [
                {"request_id": "a", "label": "cat"},  # right
                {"request_id": "b", "label": 1},  # right
                {"request_id": "c", "label": "cat"},  # wrong: predicted fox (2)
                {"request_id": "d", "label": "cat", "index": 0},  # right
                {"request_id": "zzz", "label": "cat"},  # unknown id
                {"request_id": "a", "label": "wolf"},  # unknown label
            ]
        )
        return await core.feedback(items)

    results = asyncio.run(scenario())
    assert [r["status"] for r in results] == [
        "joined",
        "joined",
        "joined",
        "joined",
        "unknown_id",
        "unknown_label",
    ]
    assert [r["http_status"] for r in results] == [200, 200, 200, 200, 404, 422]
    tags = {"model_name": MODEL, "model_version": "1", "window": "last_1000"}
    # truth/pred: cat/cat, dog/dog, cat/fox, cat/cat -> accuracy 3/4
    # cat: tp=2 fn=1 -> p=1, r=2/3, f1=0.8; dog: 1, 1, 1; fox: tp=0 fp=1 -> 0, 0, 0
    # macro p = 2/3, r = (2/3+1+0)/3 = 5/9, f1 = (0.8+1+0)/3 = 0.6
    assert backend.get(m.MODEL_ACCURACY).value(**tags) == 0.75
    assert backend.get(m.MODEL_PRECISION).value(**tags) == pytest.approx(2 / 3)
    assert backend.get(m.MODEL_RECALL).value(**tags) == pytest.approx(5 / 9)
    assert backend.get(m.MODEL_F1).value(**tags) == pytest.approx(0.6)
    assert backend.get(m.MODEL_LABELLED).value(**tags) == 4
    assert backend.get(m.MODEL_ACCURACY).value(**{**tags, "window": "last_1h"}) == 0.75
    feedback = backend.get(m.FEEDBACK_TOTAL)
    assert feedback.value(model_name=MODEL, result="joined") == 4
    assert feedback.value(model_name=MODEL, result="unknown_label") == 1
    assert feedback.value(model_name="unknown", result="unknown_id") == 1
    confidence = backend.get(m.CONFIDENCE).get_series(model_name=MODEL)
    assert confidence.count == 4 and confidence.sum == pytest.approx(0.9 * 3 + 0.3)
    assert backend.get(m.STORE_PREDICTIONS).value() == 4


def test_snapshot_is_what_the_quality_endpoint_returns():
    core, _, _ = monitor()

    async def scenario():
        await core.record([pred("a", 0)])
        await core.feedback([FeedbackItem("a", "dog")])
        return await core.snapshot(MODEL)

    snap = asyncio.run(scenario())
    assert snap["versions"]["1"]["windows"]["last_1000"]["accuracy"] == 0.0
    assert snap["feedback"]["joined"] == 1 and snap["store"]["predictions"] == 1


def test_empty_windows_export_nan_and_evictions_are_counted():
    core, backend, clock = monitor(window_seconds=60, store_max_items=1)

    async def scenario():
        await core.record([pred("a", 0)])
        await core.feedback([FeedbackItem("a", "cat")])
        await core.record([pred("b", 0)])  # evicts a (size bound 1)
        clock.now = 120.0  # the label joined at t=0 has left the 60 s window
        core.exporter.refresh()

    asyncio.run(scenario())
    tags = {"model_name": MODEL, "model_version": "1"}
    assert math.isnan(backend.get(m.MODEL_ACCURACY).value(**tags, window="last_1m"))
    assert backend.get(m.MODEL_ACCURACY).value(**tags, window="last_1000") == 1.0
    assert backend.get(m.STORE_EVICTIONS_TOTAL).value(reason="size") == 1
    assert math.isnan(backend.get(m.PREDICTION_DRIFT_PSI).value(**tags))  # reference not complete


def test_drift_gauge_follows_records():
    core, backend, _ = monitor(reference_size=10, drift_window_size=10)

    async def scenario():
        await core.record([pred(f"r{i}", 0) for i in range(10)])

    asyncio.run(scenario())
    assert backend.get(m.PREDICTION_DRIFT_PSI).value(model_name=MODEL, model_version="1") == 0.0


def test_bad_records_are_reported_not_dropped_silently(caplog):
    core, _, _ = monitor()
    out = asyncio.run(core.record([pred("a", 0), {"request_id": "b"}]))
    assert out["stored"] == 1 and len(out["rejected"]) == 1
    assert "not stored for quality tracking" in caplog.text


def test_deployment_is_one_replica():
    assert QualityMonitor.num_replicas == 1
    assert QualityMonitor.max_ongoing_requests >= 100  # every Ingress call lands here


def test_feedback_waits_briefly_for_a_prediction_still_on_its_way():
    """An ingress replica sends predictions a few ms after answering; feedback may overtake them."""
    import asyncio

    from serve_app.quality.monitor import QualityMonitorCore

    core = QualityMonitorCore({"feedback_grace_s": 1.0, "store_dir": None}, {"m": ["a", "b"]})
    record = {
        "request_id": "r1",
        "index": 0,
        "model_name": "m",
        "model_version": "1",
        "class_id": 1,
        "score": 0.9,
    }

    async def scenario():
        feedback = asyncio.create_task(core.feedback([FeedbackItem("r1", "b")]))
        await asyncio.sleep(0.1)  # the prediction lands 100 ms after the feedback
        await core.record([record])
        return await feedback

    (result,) = asyncio.run(scenario())
    assert result["status"] == "joined" and result["correct"] is True


def test_feedback_for_a_never_issued_id_is_unknown_after_the_grace():
    import asyncio

    from serve_app.quality.monitor import QualityMonitorCore

    core = QualityMonitorCore(
        {"feedback_grace_s": 0.05, "record_flush_interval_s": 0.01, "store_dir": None}, {"m": ["a"]}
    )
    (result,) = asyncio.run(core.feedback([FeedbackItem("never", "a")]))
    assert result["status"] == "unknown_id" and result["http_status"] == 404


def test_a_restarted_monitor_continues_from_its_store_folder(tmp_path):
    """A new replica on the same folder: same snapshot, and older predictions still join."""
    config = {"store_dir": str(tmp_path), "reference_size": 10, "drift_window_size": 10}
    first, _, clock = monitor(**config)

    async def before():
        await first.record([pred(f"r{i}", i % 3) for i in range(12)])
        await first.feedback([FeedbackItem("r0", "cat"), FeedbackItem("r1", "cat")])
        return await first.snapshot(MODEL)

    snapshot = asyncio.run(before())
    first.close()
    backend = InMemoryMetricsBackend()
    second = QualityMonitorCore(config, {MODEL: ["cat", "dog", "fox"]}, clock, backend)
    # the restored windows are on the gauges before any new traffic
    tags = {"model_name": MODEL, "model_version": "1", "window": "last_1000"}
    assert backend.get(m.MODEL_LABELLED).value(**tags) == 2
    assert asyncio.run(second.snapshot(MODEL)) == snapshot
    (result,) = asyncio.run(second.feedback([FeedbackItem("r2", "fox")]))
    assert result["status"] == "joined" and result["correct"] is True  # r2 predicted fox (2)
    assert backend.get(m.MODEL_LABELLED).value(**tags) == 3


def test_the_feedback_rate_holds_across_ingress_replicas():
    """Each Ingress replica's bucket admits a key's burst on its own; the monitor, which every
    replica forwards feedback to, refuses what is over the key's rate in all."""
    from serve_app.config import AuthConfig
    from serve_app.errors import ServiceError
    from serve_app.quality.wire import raise_wired_error

    auth = AuthConfig(feedback_rate_per_s=0.5, feedback_burst=3)
    rate = {"rate_per_s": auth.feedback_rate_per_s, "burst": auth.feedback_burst}
    clock = FakeClock()
    core = QualityMonitorCore(
        {"store_dir": None}, {MODEL: ["cat"]}, clock=clock, feedback_rate=rate
    )
    items, _ = parse_feedback({"request_id": "a", "label": "cat"})

    async def scenario():
        # Two replicas, 3 requests each: within each replica's own burst of 3.
        replies = [await core.feedback(items, "key-1") for _ in range(6)]
        other_key = await core.feedback(items, "key-2")
        anonymous = await core.feedback(items, None)  # no keys configured: no limit
        clock.now += 2.0  # one token back at 0.5/s
        later = await core.feedback_summary(items, "key-1")
        return replies, other_key, anonymous, later

    replies, other_key, anonymous, later = asyncio.run(scenario())
    assert [isinstance(r, list) for r in replies] == [True] * 3 + [False] * 3
    with pytest.raises(ServiceError) as refused:
        raise_wired_error(replies[3])
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "2"}
    assert "key-1" in refused.value.message and "0.5/s, burst 3" in refused.value.message
    assert isinstance(other_key, list) and isinstance(anonymous, list)
    assert "error" not in later
