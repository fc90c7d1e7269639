"""A stopping Ingress replica sends the predictions it answered before it exits, rather than
losing the last interval's worth (Serve calls `__del__` once the replica has drained)."""

from __future__ import annotations

import asyncio

from test_shadow_routes import (
    IMAGE,
    PRIMARY_IDS,
    FakeRecognizer,
    FakeShadowMonitor,
    IngressClass,
    http_request,
)


class FakeQualityMonitor(FakeShadowMonitor):
    """The QualityMonitor's handle: keeps the prediction records it is sent, whatever the
    transport chosen for the call."""

    def options(self, **_):
        return self


def test_a_stopping_ingress_sends_its_last_predictions():
    quality = FakeQualityMonitor()
    # Intervals far longer than the test: only the stop can send the records in time.
    cfg = {
        "models": [{"name": "m"}],
        "quality": {"record_flush_interval_s": 60, "feedback_grace_s": 120, "store_dir": None},
    }
    app = IngressClass(cfg, {"m": FakeRecognizer("m", PRIMARY_IDS)}, quality, None, None)

    async def scenario():
        for _ in range(3):
            response = await app.predict(
                "m", http_request("/v1/models/m/predict", IMAGE, "image/jpeg")
            )
            assert response.status_code == 200
        await asyncio.sleep(0.05)
        before_stop = len(quality.records)
        await app.__del__()
        return before_stop

    assert asyncio.run(scenario()) == 0
    assert len(quality.records) == 3
    assert {r["class_id"] for r in quality.records} == {PRIMARY_IDS[0]}
    assert len({r["request_id"] for r in quality.records}) == 3
