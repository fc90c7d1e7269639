"""Sends the ingress's top-1 predictions to the QualityMonitor in small batches, off the request
path.

One call per interval (`quality.record_flush_interval_s`) instead of one per request: each call
costs CPU on both sides, so a longer interval costs less per request (docs/PERFORMANCE.md), while
feedback sent at once waits for its prediction up to `quality.feedback_grace_s`.
"""

import asyncio

from ray.serve.handle import DeploymentHandle

from serve_app.serving.logs import request_logger
from serve_app.serving.transport import CallTransport, records_bytes

# Only reached when the monitor is unreachable for long: past it the oldest records are dropped,
# and said so, rather than the queue growing forever.
MAX_PENDING_RECORDS = 10_000

log = request_logger()


class PredictionSender:
    """A queue of prediction records, flushed to the QualityMonitor's `record` every
    `flush_interval_s` while it holds any."""

    def __init__(
        self,
        monitor: DeploymentHandle,
        model_versions: dict[str, str],
        transport: CallTransport,
        flush_interval_s: float,
    ):
        self.monitor = monitor
        self.flush_interval_s = flush_interval_s
        self.transport = transport
        self.model_versions = model_versions
        self._pending: list[dict] = []
        self._flusher: asyncio.Task | None = None
        self._sending = 0  # records of the call in flight
        self._failed = 0  # records whose call raised since the replica began to stop
        # Set when the replica stops: the flusher then sends at once instead of after the interval.
        self._stopping = asyncio.Event()

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
            if not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.flush_interval_s)
                except asyncio.TimeoutError:
                    pass
            batch, self._pending = self._pending, []
            self._sending = len(batch)
            try:
                monitor = self.transport.handle(self.monitor, records_bytes(batch))
                await monitor.record.remote(batch)
            except Exception:
                log.exception("sending %d predictions to the quality monitor failed", len(batch))
                if self._stopping.is_set():
                    self._failed += len(batch)
            finally:
                self._sending = 0

    async def drain(self, timeout_s: float) -> int:
        """Send what is queued now rather than after the interval, waiting at most `timeout_s`:
        the replica is stopping, and what is still queued when it exits is lost. Returns the
        number of records not known to be sent (0 when all were): still queued, in a call still in
        flight, or in a call that failed."""
        self._stopping.set()
        if self._flusher is not None and not self._flusher.done():
            try:
                # shield: a timeout leaves the send in flight rather than cancelling it half way.
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout_s)
            except asyncio.TimeoutError:
                pass
        unsent = len(self._pending) + self._sending + self._failed
        if unsent:
            log.warning(
                "stopping: %d predictions not sent to the quality monitor within %.1f s "
                "(%d of them in a call that failed)",
                unsent,
                timeout_s,
                self._failed,
            )
        return unsent
