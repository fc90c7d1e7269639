"""The ingress sends predictions to the QualityMonitor in batches and never leaves one behind."""

import asyncio

import pytest

from serve_app.config import ModelConfig
from serve_app.serving.ingress import Ingress


class RecordingHandle:
    """Stands in for the QualityMonitor's DeploymentHandle: `record.remote(batch)` is awaitable and
    slow."""

    def __init__(self, delay_s: float):
        self.batches: list[list[dict]] = []
        self.delay_s = delay_s
        handle = self

        class _Method:
            def remote(self, batch):
                async def call():
                    await asyncio.sleep(handle.delay_s)
                    handle.batches.append(batch)

                return call()

        self.record = _Method()


# Serve's ASGI wrapper has an async __del__; an instance built without a replica leaves that
# coroutine unawaited when collected. Nothing of the record path is involved.
pytestmark = pytest.mark.filterwarnings(
    "ignore:coroutine .*ASGIIngressWrapper.__del__:RuntimeWarning"
)


def make_ingress(quality):
    # Built without Serve's ASGI wrapper (its __init__ needs a running replica): only the fields
    # the record path reads.
    ingress = object.__new__(Ingress.func_or_class)
    ingress.quality = quality
    ingress.models = {"m": ModelConfig(name="m")}
    ingress._pending_records = []
    ingress._flusher = None
    return ingress


async def until_sent(quality: RecordingHandle, records: int, timeout_s: float = 10.0) -> None:
    # A deadline rather than a fixed sleep: a loaded machine may run the flusher late, never early.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while sum(len(b) for b in quality.batches) < records and loop.time() < deadline:
        await asyncio.sleep(0.01)


def prediction(class_id):
    return {"class_ids": [class_id], "scores": [0.5]}


def test_records_queued_during_a_send_are_sent_too():
    quality = RecordingHandle(delay_s=0.05)
    ingress = make_ingress(quality)

    async def scenario():
        ingress._record("r1", "m", [prediction(1)])
        await asyncio.sleep(0.03)  # the first batch is now being sent (20 ms wait + 50 ms call)
        ingress._record("r2", "m", [prediction(2), prediction(3)])
        await until_sent(quality, 3)

    asyncio.run(scenario())
    sent = [
        (r["request_id"], r["index"], r["class_id"]) for batch in quality.batches for r in batch
    ]
    assert sent == [("r1", 0, 1), ("r2", 0, 2), ("r2", 1, 3)]
    assert all(
        r["model_name"] == "m" and r["model_version"] == "1" for b in quality.batches for r in b
    )


def test_requests_within_the_flush_interval_share_one_call():
    quality = RecordingHandle(delay_s=0.0)
    ingress = make_ingress(quality)

    async def scenario():
        for i in range(5):
            ingress._record(f"r{i}", "m", [prediction(i)])
        await until_sent(quality, 5)
        await asyncio.sleep(0.05)  # room for a wrong second call to show up

    asyncio.run(scenario())
    assert len(quality.batches) == 1 and len(quality.batches[0]) == 5
