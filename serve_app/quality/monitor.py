"""QualityMonitor: the single owner of the prediction store and quality windows of every model.

One replica on purpose. Every Ingress replica records predictions and forwards feedback here,
so a label always meets its prediction whichever Ingress replica served each request, and
the windows count every label exactly once. The cost is one small actor call per request
(a few hundred bytes); the state is bounded (see QualityConfig), and a restart of this
replica starts the state empty, which feedback for older ids then reports as unknown (404).

Bind it in app.py:  ``QualityMonitor.options(name="QualityMonitor").bind(config, labels)``, the
``quality`` section as a dict and each model's class names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import serve

import serve_app.monitoring.metrics as m
from serve_app.config import QualityConfig
from serve_app.monitoring.metric_backends import MetricBackend
from serve_app.monitoring.metric_groups import QualityMetrics
from serve_app.quality.exporter import QualityExporter
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.tracker import QualityTracker

FEEDBACK_GRACE_POLL_S = 0.02

logger = logging.getLogger("ray.serve")


class QualityMonitorCore:
    """The monitor's logic without Ray: tracker, exporter and the refresh loop."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        backend: MetricBackend | None = None,
    ):
        """``config``: the ``quality`` section; ``labels``: each model's class names."""
        self.config = QualityConfig.model_validate(config or {})
        quality_metrics = QualityMetrics(backend)
        evictions = quality_metrics[m.STORE_EVICTIONS_TOTAL]
        self.tracker = QualityTracker(
            self.config,
            labels,
            clock=clock,
            on_evict=lambda reason, _model, n: evictions.inc(n, tags={"reason": reason}),
        )
        self.exporter = QualityExporter(self.tracker, quality_metrics)
        self._refresh_task: asyncio.Task | None = None

    def _ensure_refresh_loop(self) -> None:
        # Started on first use: the loop needs the replica's running event loop.
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval_s)
            try:
                self.exporter.refresh()
            except Exception:  # exporting must never stop; the next round retries
                logger.exception("quality gauge refresh failed")

    async def record(self, predictions: list[dict[str, Any]]) -> dict[str, Any]:
        """Store top-1 predictions; returns {"stored": n, "rejected": [reasons]}."""
        self._ensure_refresh_loop()
        predictions = list(predictions or [])
        result = self.tracker.record(predictions)
        for reason in result.rejected:
            logger.warning("prediction not stored for quality tracking: %s", reason)
        stored = [predictions[i] for i in result.accepted]
        self.exporter.recorded(stored)
        # Window scores only change with feedback; drift is cheap (a few bins) so it follows
        # every record. The per-request path stays O(images).
        for name in {p["model_name"] for p in stored}:
            self.exporter.refresh_drift(name)
        return {"stored": result.stored, "rejected": result.rejected}

    async def _await_unknown_ids(self, items: list[FeedbackItem]) -> None:
        """Give predictions still on their way from an ingress replica a moment to arrive.

        Ingress replicas send predictions in small batches after answering the client, so feedback
        sent right after a prediction (through another replica) can overtake them by milliseconds.
        """

        def unknown() -> bool:
            return any(
                self.tracker.store.lookup(i.request_id).status == m.FEEDBACK_UNKNOWN_ID
                for i in items
            )

        deadline = time.monotonic() + self.config.feedback_grace_s
        while unknown() and time.monotonic() < deadline:
            await asyncio.sleep(FEEDBACK_GRACE_POLL_S)

    async def feedback(self, items: list[FeedbackItem]) -> list[dict[str, Any]]:
        """Join parsed feedback items to predictions; one result dict per item."""
        self._ensure_refresh_loop()
        await self._await_unknown_ids(items)
        results = []
        touched = set()
        for item in items:
            result = self.tracker.feedback(item)
            self.exporter.feedback(result)
            if result.status == m.FEEDBACK_JOINED and result.model_name:
                touched.add(result.model_name)
            results.append(result.as_dict())
        for name in touched:
            self.exporter.refresh_windows(name)
        return results

    async def snapshot(self, model_name: str) -> dict[str, Any]:
        """What GET /v1/models/{name}/quality returns."""
        self._ensure_refresh_loop()
        return self.tracker.snapshot(model_name)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class QualityMonitor(QualityMonitorCore):
    """Serve deployment around QualityMonitorCore: the quality section as a plain dict, and each
    model's class names."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
    ):
        super().__init__(config, labels)
