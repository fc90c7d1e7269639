"""Sends the ingress's top-1 predictions to the QualityMonitor in small batches, off the request
path.

One call per short interval instead of one per request: the monitor hop costs CPU on both sides.
"""

import asyncio

from ray.serve.handle import DeploymentHandle

from serve_app.serving.logs import request_logger
from serve_app.serving.transport import CallTransport, records_bytes

RECORD_FLUSH_INTERVAL_S = 0.02
# Only reached when the monitor is unreachable for long: past it the oldest records are dropped,
# and said so, rather than the queue growing forever.
MAX_PENDING_RECORDS = 10_000

log = request_logger()


class PredictionSender:
    """A queue of prediction records, flushed to the QualityMonitor's `record` every
    RECORD_FLUSH_INTERVAL_S while it holds any."""

    def __init__(
        self,
        monitor: DeploymentHandle,
        model_versions: dict[str, str],
        transport: CallTransport,
    ):
        self.monitor = monitor
        self.transport = transport
        self.model_versions = model_versions
        self._pending: list[dict] = []
        self._flusher: asyncio.Task | None = None

    def send(self, request_id: str, model_name: str, predictions: list[dict]) -> None:
        """Queue the top-1 class and score of each image of one request; a background task sends
        them."""
        version = self.model_versions[model_name]
        self._pending.extend(
            {
                "request_id": request_id,
                "index": i,
                "model_name": model_name,
                "model_version": version,
                "class_id": p["class_ids"][0],
                "score": p["scores"][0],
            }
            for i, p in enumerate(predictions)
        )
        overflow = len(self._pending) - MAX_PENDING_RECORDS
        if overflow > 0:
            del self._pending[:overflow]
            log.warning(
                "quality monitor unreachable: dropped %d oldest predictions from the send queue",
                overflow,
            )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Loops until nothing is pending, so records queued during a send are not left behind.
        while self._pending:
            await asyncio.sleep(RECORD_FLUSH_INTERVAL_S)
            batch, self._pending = self._pending, []
            try:
                monitor = self.transport.handle(self.monitor, records_bytes(batch))
                await monitor.record.remote(batch)
            except Exception:
                log.exception("sending %d predictions to the quality monitor failed", len(batch))
