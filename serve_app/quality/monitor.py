"""QualityMonitor: the single owner of the prediction store and quality windows of every model.

One replica on purpose. Every Ingress replica records predictions and forwards feedback here,
so a label always meets its prediction whichever Ingress replica served each request, and
the windows count every label exactly once. The cost is one small actor call per request
(a few hundred bytes); the state is bounded (see QualityConfig) and kept in the quality store
(``quality.store_dir``), so a restarted or redeployed replica continues where the last one stopped:
feedback for a prediction made before the restart still joins.

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
from serve_app.config import HEALTH_CHECK_PERIOD_S, QualityConfig
from serve_app.errors import StoreUnavailable
from serve_app.feedback_rate import TokenBuckets
from serve_app.monitoring.metric_backends import MetricBackend
from serve_app.monitoring.metric_groups import QualityMetrics
from serve_app.quality.exporter import QualityExporter
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.store import SQLiteQualityStore, store_path
from serve_app.quality.tracker import QualityTracker
from serve_app.quality.wire import FeedbackResult, feedback_summary

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
        feedback_rate: Mapping[str, float] | None = None,
    ):
        """``config``: the ``quality`` section; ``labels``: each model's class names;
        ``feedback_rate``: ``{"rate_per_s", "burst"}`` of each key's feedback (the ``auth``
        section's), held here across every Ingress replica."""
        self.config = QualityConfig.model_validate(config or {})
        self._clock = clock
        self._feedback_buckets = (
            TokenBuckets(feedback_rate["rate_per_s"], int(feedback_rate["burst"]))
            if feedback_rate
            else None
        )
        quality_metrics = QualityMetrics(backend)
        evictions = quality_metrics[m.STORE_EVICTIONS_TOTAL]
        writable = quality_metrics[m.STORE_WRITABLE]
        c = self.config
        store = SQLiteQualityStore(
            store_path(c.store_dir),
            c.store_max_items,
            c.store_max_age_s,
            c.store_evicted_ids_max,
            clock,
            on_evict=lambda reason, _model, n: evictions.inc(n, tags={"reason": reason}),
            on_health=lambda problem: writable.set(0 if problem else 1, tags={}),
        )
        writable.set(1 if store.health.writable else 0, tags={})
        self.tracker = QualityTracker(c, labels, clock=clock, store=store)
        logger.info("quality store: %s", store.stats())
        self.exporter = QualityExporter(self.tracker, quality_metrics)
        self.exporter.refresh()  # what the store brought back is on the gauges at once
        self._refresh_task: asyncio.Task | None = None

    def close(self) -> None:
        """Close the quality store (every write is already committed)."""
        tracker = getattr(self, "tracker", None)  # None when the constructor failed
        if tracker is not None:
            tracker.store.close()

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

        def known(request_id: str) -> bool:
            return self.tracker.store.lookup(request_id).status != m.FEEDBACK_UNKNOWN_ID

        # Each id is looked up once, then each poll re-checks only the last id still missing:
        # the cost stays O(items + polls) even for a batch of ids that will never arrive.
        pending = [i.request_id for i in items if not known(i.request_id)]
        deadline = time.monotonic() + self.config.feedback_grace_s
        while pending and time.monotonic() < deadline:
            while pending and known(pending[-1]):
                pending.pop()
            if pending:
                await asyncio.sleep(FEEDBACK_GRACE_POLL_S)

    async def _join(self, items: list[FeedbackItem]) -> list[FeedbackResult]:
        """Join parsed feedback items to predictions, counting each outcome."""
        self._ensure_refresh_loop()
        await self._await_unknown_ids(items)
        results = []
        touched = set()
        for item in items:
            result = self.tracker.feedback(item)
            self.exporter.feedback(result)
            if result.status == m.FEEDBACK_JOINED and result.model_name:
                touched.add(result.model_name)
            results.append(result)
        for name in touched:
            self.exporter.refresh_windows(name)
        return results

    def _over_rate(self, principal: str | None) -> dict[str, Any] | None:
        """The 429 of a key over its feedback rate, as data; None when it may go on (or runs
        without keys)."""
        if principal is None or self._feedback_buckets is None:
            return None
        refusal = self._feedback_buckets.refusal(principal, self._clock())
        return None if refusal is None else {"error": refusal.to_wire()}

    async def feedback(
        self, items: list[FeedbackItem], principal: str | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Join parsed feedback items to predictions; one result dict per item, or the store's
        503 or the key's 429 as data (wire.raise_wired_error)."""
        if (refused := self._over_rate(principal)) is not None:
            return refused
        try:
            return [result.as_dict() for result in await self._join(items)]
        except StoreUnavailable as err:
            return {"error": err.to_wire()}

    async def feedback_summary(
        self, items: list[FeedbackItem], principal: str | None = None
    ) -> dict[str, Any]:
        """Join a batch of feedback items; the compact reply of wire.feedback_summary, or the
        store's 503 or the key's 429 as data (wire.raise_wired_error)."""
        if (refused := self._over_rate(principal)) is not None:
            return refused
        try:
            return feedback_summary(await self._join(items))
        except StoreUnavailable as err:
            return {"error": err.to_wire()}

    async def snapshot(self, model_name: str) -> dict[str, Any]:
        """What GET /v1/models/{name}/quality returns."""
        self._ensure_refresh_loop()
        return self.tracker.snapshot(model_name)


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
)
class QualityMonitor(QualityMonitorCore):
    """Serve deployment around QualityMonitorCore: the quality section as a plain dict, and each
    model's class names."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        feedback_rate: Mapping[str, float] | None = None,
    ):
        super().__init__(config, labels, feedback_rate=feedback_rate)

    def __del__(self) -> None:
        # Serve calls this when the replica stops (scale-down, redeploy, shutdown)
        self.close()
