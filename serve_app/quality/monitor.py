"""QualityMonitor: the single owner of the prediction store and quality windows of every model.

One replica on purpose. Every Ingress replica records predictions and forwards feedback here,
so a label always meets its prediction whichever Ingress replica served each request, and
the windows count every label exactly once. The cost is one small actor call per request
(a few hundred bytes); the state is bounded (see QualityConfig), and a restart of this
replica starts the state empty, which feedback for older ids then reports as unknown (404).

Bind it in app.py:  ``QualityMonitor.options(name="QualityMonitor").bind(config_dict)``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from ray import serve

import serve_app.monitoring.metrics as m

FEEDBACK_GRACE_POLL_S = 0.02
from serve_app.quality.tracker import (
    FEEDBACK_INVALID,
    FeedbackResult,
    QualityConfig,
    QualityTracker,
)

logger = logging.getLogger("ray.serve")


def _gauge_value(value: Optional[float]) -> float:
    # An empty window has no accuracy; NaN shows "no data" in Prometheus (comparisons with NaN
    # are false, so `model_accuracy < 0.85` alerts stay quiet) instead of a misleading 0 or a
    # stale last value.
    return math.nan if value is None else float(value)


class QualityExporter:
    """Writes a QualityTracker's state to the quality metrics."""

    def __init__(self, tracker: QualityTracker, quality_metrics: m.QualityMetrics):
        self.tracker = tracker
        self.metrics = quality_metrics

    def recorded(self, predictions: List[Mapping[str, Any]]) -> None:
        """Observe the confidence of stored predictions."""
        histogram = self.metrics[m.CONFIDENCE]
        for p in predictions:
            histogram.observe(float(p["score"]), tags={"model_name": p["model_name"]})

    def feedback(self, result: FeedbackResult) -> None:
        """Count one feedback result (malformed items are answered 422 but have no result label)."""
        if result.status == FEEDBACK_INVALID:
            return
        self.metrics[m.FEEDBACK_TOTAL].inc(
            1, tags={"model_name": result.model_name or m.UNKNOWN_MODEL, "result": result.status}
        )

    def refresh_windows(self, model_name: Optional[str] = None) -> None:
        """Export window scores (all models, or one); O(classes present) per window."""
        for name, version in self.tracker.versions(model_name):
            for window, scores in self.tracker.window_scores(name, version).items():
                tags = {"model_name": name, "model_version": version, "window": window}
                self.metrics[m.MODEL_ACCURACY].set(_gauge_value(scores.accuracy), tags=tags)
                self.metrics[m.MODEL_PRECISION].set(_gauge_value(scores.precision), tags=tags)
                self.metrics[m.MODEL_RECALL].set(_gauge_value(scores.recall), tags=tags)
                self.metrics[m.MODEL_F1].set(_gauge_value(scores.f1), tags=tags)
                self.metrics[m.MODEL_LABELLED].set(scores.labelled, tags=tags)

    def refresh_drift(self, model_name: Optional[str] = None) -> None:
        """Export PSI (all models, or one) and the store fill."""
        for name, version in self.tracker.versions(model_name):
            self.metrics[m.PREDICTION_DRIFT_PSI].set(
                _gauge_value(self.tracker.drift_psi(name, version)),
                tags={"model_name": name, "model_version": version},
            )
        self.metrics[m.STORE_PREDICTIONS].set(self.tracker.store.size, tags={})

    def refresh(self) -> None:
        """Export everything (the periodic loop: time windows decay even without traffic)."""
        self.tracker.store.expire()
        self.refresh_windows()
        self.refresh_drift()


class QualityMonitorCore:
    """The monitor's logic without Ray: tracker, exporter and the refresh loop."""

    def __init__(
        self,
        config: Optional[Mapping[str, Any]] = None,
        clock: Callable[[], float] = time.time,
        backend: Optional[m.MetricBackend] = None,
    ):
        self.config = QualityConfig.from_dict(config)
        quality_metrics = m.QualityMetrics(backend)
        evictions = quality_metrics[m.STORE_EVICTIONS_TOTAL]
        self.tracker = QualityTracker(
            self.config,
            clock=clock,
            on_evict=lambda reason, _model, n: evictions.inc(n, tags={"reason": reason}),
        )
        self.exporter = QualityExporter(self.tracker, quality_metrics)
        self._refresh_task: Optional[asyncio.Task] = None

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

    async def record(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
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

    async def _await_unknown_ids(self, items: List[Any]) -> None:
        """Give predictions still on their way from an ingress replica a moment to arrive.

        Ingress replicas send predictions in small batches after answering the client, so feedback
        sent right after a prediction (through another replica) can overtake them by milliseconds.
        """

        def unknown() -> bool:
            return any(
                isinstance(i, Mapping)
                and isinstance(i.get("request_id"), str)
                and self.tracker.store.lookup(i["request_id"]).status == m.FEEDBACK_UNKNOWN_ID
                for i in items
            )

        deadline = time.monotonic() + self.config.feedback_grace_s
        while unknown() and time.monotonic() < deadline:
            await asyncio.sleep(FEEDBACK_GRACE_POLL_S)

    async def feedback(self, items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Join labels ({request_id, label, index=0}) to predictions; one result dict per item."""
        self._ensure_refresh_loop()
        await self._await_unknown_ids(list(items or []))
        results = []
        touched = set()
        for item in items or []:
            if not isinstance(item, Mapping):
                result = FeedbackResult(
                    FEEDBACK_INVALID,
                    None,
                    None,
                    f"feedback item must be an object, got {type(item).__name__}",
                )
            else:
                result = self.tracker.feedback(
                    item.get("request_id"), item.get("index", 0), item.get("label")
                )
            self.exporter.feedback(result)
            if result.status == m.FEEDBACK_JOINED and result.model_name:
                touched.add(result.model_name)
            results.append(result.as_dict())
        for name in touched:
            self.exporter.refresh_windows(name)
        return results

    async def snapshot(self, model_name: str) -> Dict[str, Any]:
        """What GET /v1/models/{name}/quality returns."""
        self._ensure_refresh_loop()
        return self.tracker.snapshot(model_name)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class QualityMonitor(QualityMonitorCore):
    """Serve deployment around QualityMonitorCore; takes the quality config as a plain dict."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None):
        super().__init__(config)
