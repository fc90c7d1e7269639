import asyncio

import pytest

import serve_app.monitoring.metrics as m
from serve_app.config import AppConfig
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from serve_app.quality.feedback import FeedbackItem
from serve_app.serving.shadow import (
    BoundedQueue,
    FeedbackRouter,
    Sampler,
    ShadowStats,
    compare,
    shadow_request_id,
)
from serve_app.serving.shadow_service import ShadowDispatcher, ShadowMetrics, ShadowMonitorCore


def test_compare_counts_top1_and_top5_overlap_per_image():
    c = compare([[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]], [[1, 3, 2, 20, 21], [8, 7, 9, 10, 11]])
    assert c.images == 2
    assert c.top1_agreements == 1  # first image agrees, second does not
    assert c.top5_overlap == pytest.approx(3 / 5 + 5 / 5)


def test_compare_uses_the_shorter_top_k_and_at_most_five():
    # top_k 2 on the primary: overlap over 2 classes
    assert compare([[1, 2]], [[2, 1, 3, 4, 5]]).top5_overlap == pytest.approx(1.0)
    # top_k 10 on both: classes past the fifth are not compared
    p, s = list(range(10)), list(range(5)) + [99] * 5
    assert compare([p], [s]).top5_overlap == pytest.approx(1.0)


def test_compare_refuses_mismatched_answers():
    with pytest.raises(ValueError):
        compare([[1]], [[1], [2]])
    with pytest.raises(ValueError):
        compare([[]], [[1]])


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (1.0, 100), (0.3, 30)])
def test_sampler_takes_the_configured_share(fraction, expected):
    values = iter([i / 100 for i in range(100)])  # a uniform sweep stands in for the RNG
    sampler = Sampler(fraction, rng=lambda: next(values))
    assert sum(sampler.take() for _ in range(100)) == expected


def test_bounded_queue_drops_and_counts_when_full():
    q = BoundedQueue(2)
    assert q.offer("a") and q.offer("b")
    assert not q.offer("c")
    assert q.dropped == 1 and len(q) == 2
    assert q.take() == "a" and q.take() == "b" and q.take() is None


def test_stats_report_agreement_latency_and_nothing_before_the_first_comparison():
    s = ShadowStats("m", "m_int8", 0.5)
    empty = s.report()
    assert empty["requests"] == 0 and empty["top1_agreement"] is None
    assert empty["latency"]["shadow"]["p50_ms"] is None
    s.add(compare([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 6]]), 0.010, 0.020)
    s.add(compare([[1, 2, 3, 4, 5]], [[2, 1, 3, 4, 5]]), 0.030, 0.040)
    r = s.report()
    assert r["requests"] == 2 and r["images"] == 2
    assert r["top1_agreement"] == pytest.approx(0.5)
    assert r["top5_overlap"] == pytest.approx((0.8 + 1.0) / 2)
    assert r["latency"]["primary"]["p50_ms"] == pytest.approx(20.0)
    assert r["latency"]["shadow"]["p99_ms"] == pytest.approx(39.8)


def item(request_id: str, index: int = 0) -> FeedbackItem:
    return FeedbackItem(request_id=request_id, label=281, index=index)


def test_feedback_router_rewrites_ids_of_shadowed_requests_only():
    clock = [0.0]
    router = FeedbackRouter(clock=lambda: clock[0])
    assert router.shadowed("r1", "cand") == []
    out = router.feedback([item("r1"), item("r2")])
    assert out == [(shadow_request_id("r1", "cand"), item("r1"))]
    # r2's feedback waited: it is released when r2 turns out to be shadowed
    assert router.shadowed("r2", "cand") == [(shadow_request_id("r2", "cand"), item("r2"))]
    # ... but not after the wait is over
    router.feedback([item("r3")])
    clock[0] = 61.0
    assert router.shadowed("r3", "cand") == []


def test_shadow_id_is_no_request_id_a_client_can_send():
    from serve_app.request_ids import request_id_problem

    assert request_id_problem(shadow_request_id("abc", "m")) is not None


CONFIG = {
    "models": [
        {"name": "m", "shadow": {"model": "m_int8", "fraction": 1.0}},
        {"name": "m_int8", "precision": "int8", "device": "cpu"},
    ]
}


class FakeQuality:
    """The QualityMonitor's handle: records what feedback reaches it."""

    def __init__(self):
        self.items = []
        outer = self

        class Method:
            async def remote(self, items):
                outer.items.extend(items)
                return {}

        self.feedback_summary = Method()


def test_monitor_core_report_metrics_and_shadow_feedback():
    quality = FakeQuality()
    backend = InMemoryMetricsBackend()
    core = ShadowMonitorCore(CONFIG, quality, ShadowMetrics(backend))
    compared = {
        "kind": "compared",
        "model": "m",
        "request_id": "r1",
        "comparison": {"images": 2, "top1_agreements": 1, "top5_overlap": 1.6},
        "primary_s": 0.01,
        "shadow_s": 0.02,
    }
    early = core.router.feedback([item("r1", 1)])  # feedback before the comparison arrives
    assert early == []
    ready = core.record_batch([compared, {"kind": "dropped", "model": "m"}])
    asyncio.run(core.forward(ready))
    assert [i.request_id for i in quality.items] == [shadow_request_id("r1", "m_int8")]
    r = core.report("m")
    assert (r["requests"], r["images"], r["dropped"]) == (1, 2, 1)
    assert r["top1_agreement"] == pytest.approx(0.5) and r["top5_overlap"] == pytest.approx(0.8)
    tags = {"model_name": "m", "shadow_model": "m_int8"}
    assert backend.get(m.SHADOW_IMAGES_TOTAL).value(**tags) == 2
    assert backend.get(m.SHADOW_TOP1_AGREEMENT).value(**tags) == pytest.approx(0.5)
    assert backend.get(m.SHADOW_DROPPED_TOTAL).value(**tags) == 1


class FakeRecognizer:
    """A Recognizer handle answering fixed class ids, slowly when told to."""

    def __init__(self, ids, delay_s=0.0):
        outer = self
        self.calls = 0

        class Predict:
            async def remote(self, images, k):
                outer.calls += 1
                await asyncio.sleep(delay_s)
                return {"predictions": [{"class_ids": ids, "scores": [0.5] * len(ids)}]}

        self.predict = Predict()

    def options(self, **_):
        # The transport is picked per call (serving/transport.py); one fake serves both.
        return self


class FakeMonitor:
    def __init__(self):
        self.records = []
        outer = self

        class Record:
            async def remote(self, batch):
                outer.records.extend(batch)

        self.record = Record()


def test_dispatcher_never_waits_for_the_candidate_and_drops_past_the_queue():
    async def scenario():
        monitor = FakeMonitor()
        slow = FakeRecognizer([1, 2, 3, 4, 5], delay_s=0.2)
        d = ShadowDispatcher(AppConfig.model_validate(CONFIG), monitor, {"m_int8": slow}, None)
        preds = [{"class_ids": [1, 2, 3, 4, 9], "scores": [0.9] * 5}]
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = d.queue.capacity + 10
        for i in range(n):
            d.offer("m", f"r{i}", [b"img"], preds, 0.01)
        assert loop.time() - started < 0.1  # offering never awaited the candidate
        while d._workers or d._flusher is None or not d._flusher.done():
            await asyncio.sleep(0.05)
        return monitor.records, slow.calls, n

    records, calls, n = asyncio.run(scenario())
    kinds = [r["kind"] for r in records]
    assert kinds.count("compared") == calls
    assert kinds.count("compared") + kinds.count("dropped") == n
    assert kinds.count("dropped") >= 1
    first = next(r for r in records if r["kind"] == "compared")
    assert first["comparison"] == {"images": 1, "top1_agreements": 1, "top5_overlap": 0.8}
