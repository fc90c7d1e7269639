"""Shadow testing on the live service: the ingress side that sends copies to the candidate, and
the ShadowMonitor deployment that keeps one report for all ingress replicas.

The ingress answers from its own model first; a sampled request is then queued (bounded: a full
queue drops and counts it) and a few background tasks send it to the candidate, compare the two
answers and pass the comparison on in small batches. Nothing here can delay or fail the
primary's reply: offering never awaits, and every candidate error is counted, not raised.
Every route that answers from a model (REST predict, OIP infer over HTTP and gRPC) offers its
requests here through the Ingress's one answering path, so each shares in the sample alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

import serve_app.monitoring.metrics as m
from serve_app.config import HEALTH_CHECK_PERIOD_S, AppConfig
from serve_app.errors import UnprocessableEntity
from serve_app.monitoring.metric_groups import MetricGroup
from serve_app.serving.models import default_preprocess
from serve_app.serving.prediction_sender import PredictionSender
from serve_app.serving.shadow import (
    TOP_K_COMPARED,
    BoundedQueue,
    Comparison,
    FeedbackRouter,
    Sampler,
    ShadowStats,
    compare,
    shadow_request_id,
)
from serve_app.serving.transport import CallTransport, payload_bytes

log = logging.getLogger("ray.serve")

QUEUE_CAPACITY = 32  # jobs hold the encoded images, so the bound is on memory too
MAX_IN_FLIGHT = 4
SHADOW_TIMEOUT_S = 30.0
FLUSH_INTERVAL_S = 0.1


class ShadowDispatcher:
    """In each ingress replica: samples requests, calls the candidates, sends comparisons on."""

    def __init__(
        self,
        config: AppConfig,
        monitor: DeploymentHandle | None,
        recognizers: dict[str, DeploymentHandle],
        sender: PredictionSender | None,
    ):
        self.shadows = {m.name: m.shadow for m in config.models if m.shadow is not None}
        self.samplers = {name: Sampler(s.fraction) for name, s in self.shadows.items()}
        # OIP FP32 `pixels` arrive already normalised for the primary: a candidate with other
        # preprocessing would read them as a different image, so it sees only encoded images.
        self.same_input = {
            name: _preprocess(config, name) == _preprocess(config, s.model)
            for name, s in self.shadows.items()
        }
        self.monitor = monitor
        self.recognizers = recognizers
        self.transport = CallTransport(config.ingress.internal_transport)
        self.sender = sender
        self.queue = BoundedQueue(QUEUE_CAPACITY)
        self._workers: set[asyncio.Task] = set()
        self._outbox: list[dict] = []
        self._flusher: asyncio.Task | None = None

    def offer(
        self, name: str, request_id: str, images: list, predictions: list[dict], primary_s: float
    ) -> None:
        """Queue a copy of an answered request for the candidate when this request is sampled."""
        spec = self.shadows.get(name)
        if spec is None or self.monitor is None:
            return
        if not self.same_input[name] and not all(isinstance(i, (bytes, bytearray)) for i in images):
            return
        if not self.samplers[name].take():
            return
        job = (name, spec.model, request_id, images, [p["class_ids"] for p in predictions])
        if not self.queue.offer((*job, primary_s)):
            self._send({"kind": "dropped", "model": name})
            return
        if len(self._workers) < MAX_IN_FLIGHT:
            task = asyncio.get_running_loop().create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        while (job := self.queue.take()) is not None:
            name, shadow, request_id, images, primary_ids, primary_s = job
            started = time.perf_counter()
            try:
                candidate = self.transport.handle(self.recognizers[shadow], payload_bytes(images))
                result = await asyncio.wait_for(
                    candidate.predict.remote(images, TOP_K_COMPARED),
                    SHADOW_TIMEOUT_S,
                )
                if "error" in result:
                    raise RuntimeError(result["error"])
                preds = result["predictions"]
                c = compare(primary_ids, [p["class_ids"] for p in preds])
            except Exception as exc:
                log.warning("shadow call %s -> %s failed: %s", name, shadow, exc)
                self._send({"kind": "error", "model": name})
                continue
            if self.sender is not None:
                self.sender.send(shadow_request_id(request_id, shadow), shadow, preds)
            self._send(
                {
                    "kind": "compared",
                    "model": name,
                    "request_id": request_id,
                    "comparison": dataclasses.asdict(c),
                    "primary_s": primary_s,
                    "shadow_s": time.perf_counter() - started,
                }
            )

    def _send(self, record: dict) -> None:
        self._outbox.append(record)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._outbox:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            batch, self._outbox = self._outbox, []
            try:
                await self.monitor.record.remote(batch)
            except Exception:
                log.exception("sending %d shadow records failed", len(batch))

    def feedback(self, items: list) -> None:
        """Pass feedback on, so labels of shadowed requests score the candidate too."""
        if self.shadows and self.monitor is not None and items:
            self.monitor.feedback.remote(items)

    async def report(self, name: str) -> dict[str, Any]:
        if name not in self.shadows or self.monitor is None:
            raise UnprocessableEntity(
                f"model {name!r} has no shadow (set `shadow: {{model: ..., fraction: ...}}` on it)"
            )
        return await self.monitor.report.remote(name)


def _preprocess(config: AppConfig, name: str):
    model = config.model(name)
    return model.preprocess or default_preprocess(model.architecture)


class ShadowMetrics(MetricGroup):
    SPECS = m.SHADOW_METRICS


class ShadowMonitorCore:
    """The monitor's logic without Ray: one ShadowStats per shadowed model, metrics, feedback."""

    def __init__(self, config: dict, quality: Any | None, metrics: ShadowMetrics | None = None):
        cfg = AppConfig.model_validate(config)
        self.stats = {
            x.name: ShadowStats(x.name, x.shadow.model, x.shadow.fraction)
            for x in cfg.models
            if x.shadow is not None
        }
        self.quality = quality
        self.router = FeedbackRouter()
        self.metrics = metrics or ShadowMetrics()

    def _tags(self, s: ShadowStats) -> dict[str, str]:
        return {"model_name": s.model, "shadow_model": s.shadow_model}

    def record_batch(self, records: list[dict]) -> list[tuple[str, Any]]:
        """Apply records from an ingress; returns feedback now known to label a shadow answer."""
        ready: list[tuple[str, Any]] = []
        for r in records:
            s = self.stats.get(r["model"])
            if s is None:
                continue
            tags = self._tags(s)
            if r["kind"] == "dropped":
                s.dropped += 1
                self.metrics[m.SHADOW_DROPPED_TOTAL].inc(1, tags=tags)
            elif r["kind"] == "error":
                s.errors += 1
                self.metrics[m.SHADOW_ERRORS_TOTAL].inc(1, tags=tags)
            else:
                c = r["comparison"]
                s.add(Comparison(**c), r["primary_s"], r["shadow_s"])
                self._count(s, c, r["primary_s"], r["shadow_s"])
                ready += self.router.shadowed(r["request_id"], s.shadow_model)
        return ready

    def _count(self, s: ShadowStats, c: dict, primary_s: float, shadow_s: float) -> None:
        tags = self._tags(s)
        self.metrics[m.SHADOW_REQUESTS_TOTAL].inc(1, tags=tags)
        self.metrics[m.SHADOW_IMAGES_TOTAL].inc(c["images"], tags=tags)
        if c["top1_agreements"]:
            self.metrics[m.SHADOW_TOP1_AGREEMENTS_TOTAL].inc(c["top1_agreements"], tags=tags)
        if c["top5_overlap"]:
            self.metrics[m.SHADOW_TOP5_OVERLAP_TOTAL].inc(c["top5_overlap"], tags=tags)
        self.metrics[m.SHADOW_TOP1_AGREEMENT].set(s.top1_agreements / s.images, tags=tags)
        latency = self.metrics[m.SHADOW_LATENCY_SECONDS]
        latency.observe(primary_s, tags={**tags, "role": "primary"})
        latency.observe(shadow_s, tags={**tags, "role": "shadow"})

    def report(self, name: str) -> dict[str, Any]:
        return self.stats[name].report()

    async def forward(self, pairs: list[tuple[str, Any]]) -> None:
        """Send feedback for the candidates' answers to the QualityMonitor, under their ids."""
        if pairs and self.quality is not None:
            items = [dataclasses.replace(item, request_id=sid) for sid, item in pairs]
            try:
                await self.quality.feedback_summary.remote(items)
            except Exception:
                log.exception("forwarding %d shadow feedback items failed", len(items))


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=HEALTH_CHECK_PERIOD_S,
)
class ShadowMonitor(ShadowMonitorCore):
    """One replica, so every ingress replica's comparisons land in one report."""

    def __init__(self, config: dict, quality: DeploymentHandle | None = None):
        super().__init__(config, quality)

    async def record(self, records: list[dict]) -> None:
        await self.forward(self.record_batch(records))

    async def feedback(self, items: list) -> None:
        await self.forward(self.router.feedback(items))

    async def report(self, name: str) -> dict[str, Any]:  # type: ignore[override]
        return ShadowMonitorCore.report(self, name)
