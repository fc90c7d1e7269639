"""The prediction sender sends predictions to the QualityMonitor in batches and never leaves one
behind."""

import asyncio

from serve_app.config import ModelConfig
from serve_app.serving.prediction_sender import MAX_PENDING_RECORDS, PredictionSender
from serve_app.serving.transport import CallTransport

FLUSH_INTERVAL_S = 0.02


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


def make_sender(quality):
    model = ModelConfig(name="m")
    return PredictionSender(
        quality, {model.name: model.version}, CallTransport("actor"), FLUSH_INTERVAL_S
    )


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
    sender = make_sender(quality)

    async def scenario():
        sender.send("r1", "m", [prediction(1)])
        await asyncio.sleep(0.03)  # the first batch is now being sent (20 ms wait + 50 ms call)
        sender.send("r2", "m", [prediction(2), prediction(3)])
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
    sender = make_sender(quality)

    async def scenario():
        for i in range(5):
            sender.send(f"r{i}", "m", [prediction(i)])
        await until_sent(quality, 5)
        await asyncio.sleep(0.05)  # room for a wrong second call to show up

    asyncio.run(scenario())
    assert len(quality.batches) == 1 and len(quality.batches[0]) == 5


def test_an_unreachable_monitor_costs_the_oldest_records_not_memory():
    quality = RecordingHandle(delay_s=0.0)
    sender = make_sender(quality)

    async def scenario():
        # MAX_PENDING_RECORDS + 2 images queued before the first flush: the 2 oldest are dropped
        sender.send("r", "m", [prediction(i) for i in range(MAX_PENDING_RECORDS + 2)])
        await until_sent(quality, MAX_PENDING_RECORDS)

    asyncio.run(scenario())
    sent = [r["index"] for batch in quality.batches for r in batch]
    assert sent == list(range(2, MAX_PENDING_RECORDS + 2))


def test_the_sender_waits_its_interval_before_a_call():
    quality = RecordingHandle(delay_s=0.0)
    model = ModelConfig(name="m")
    sender = PredictionSender(quality, {model.name: model.version}, CallTransport("actor"), 0.3)

    async def scenario():
        sender.send("r1", "m", [prediction(1)])
        # asyncio's sleep never ends early: nothing may be sent during the first 0.3 s.
        await asyncio.sleep(0.15)
        early = len(quality.batches)
        await until_sent(quality, 1)
        return early

    assert asyncio.run(scenario()) == 0
    assert len(quality.batches) == 1


def test_a_stopping_replica_sends_its_queue_at_once():
    quality = RecordingHandle(delay_s=0.0)
    model = ModelConfig(name="m")
    # An interval far longer than the test: only the drain can send the records in time.
    sender = PredictionSender(quality, {model.name: model.version}, CallTransport("actor"), 60.0)

    async def scenario():
        sender.send("r1", "m", [prediction(1), prediction(2)])
        return await sender.drain(timeout_s=5.0)

    assert asyncio.run(scenario()) == 0
    assert [r["index"] for b in quality.batches for r in b] == [0, 1]


def test_a_drain_that_times_out_counts_what_it_did_not_send():
    quality = RecordingHandle(delay_s=60.0)
    model = ModelConfig(name="m")
    sender = PredictionSender(quality, {model.name: model.version}, CallTransport("actor"), 60.0)

    async def scenario():
        sender.send("r1", "m", [prediction(1), prediction(2), prediction(3)])
        unsent = await sender.drain(timeout_s=0.2)
        sender._flusher.cancel()
        return unsent

    assert asyncio.run(scenario()) == 3
    assert quality.batches == []


def test_a_drain_counts_the_records_of_a_call_that_failed():
    class FailingHandle:
        class record:  # noqa: N801 - the handle's method name
            @staticmethod
            def remote(batch):
                async def call():
                    raise ConnectionError("the quality monitor is gone")

                return call()

    model = ModelConfig(name="m")
    sender = PredictionSender(
        FailingHandle(), {model.name: model.version}, CallTransport("actor"), 60.0
    )

    async def scenario():
        sender.send("r1", "m", [prediction(1), prediction(2)])
        return await sender.drain(timeout_s=5.0)

    assert asyncio.run(scenario()) == 2


def test_a_drain_with_nothing_queued_returns_at_once():
    sender = make_sender(RecordingHandle(delay_s=0.0))
    assert asyncio.run(sender.drain(timeout_s=5.0)) == 0
