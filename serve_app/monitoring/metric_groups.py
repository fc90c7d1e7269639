"""The recorders the code paths call: one object per group of declared metrics.

``ServiceMetrics`` is what the Ingress and the Recognizer record requests with;
``ResourceMetrics`` and ``QualityMetrics`` give the GPU reporter and the QualityMonitor their
gauges by spec. Values are checked here, so a wrong status, stage or duration fails where it is
recorded instead of turning into a series nobody queries.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

from serve_app.monitoring.metric_backends import MetricBackend, default_backend
from serve_app.monitoring.metrics import (
    BATCH_SIZE,
    IMAGES_PER_REQUEST,
    INFERRED_IMAGES_TOTAL,
    INFLIGHT_REQUESTS,
    LATENCY_SECONDS,
    QUALITY_METRICS,
    REQUEST_TOTAL,
    RESOURCE_METRICS,
    STAGE_SECONDS,
    STAGES,
    STATUSES,
    MetricSpec,
)


def _check_seconds(name: str, seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name}: duration must be a number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def _check_count(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {n!r}")
    return n


class _InflightCounts:
    """Per-model in-flight request counts of this process (Ray gauges can only be set)."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, model_name: str, delta: int) -> int:
        with self._lock:
            value = self._counts.get(model_name, 0) + delta
            self._counts[model_name] = value
            return value


_INFLIGHT = _InflightCounts()


class ServiceMetrics:
    """Request, latency, stage, batch and in-flight metrics of one model; one per replica."""

    def __init__(
        self, model_name: str, model_version: str, backend: Optional[MetricBackend] = None
    ):
        if not model_name:
            raise ValueError("model_name must be a non-empty string")
        self.model_name = str(model_name)
        self.model_version = str(model_version)
        backend = backend or default_backend()
        self._requests = backend.get(REQUEST_TOTAL)
        self._latency = backend.get(LATENCY_SECONDS)
        self._stage = backend.get(STAGE_SECONDS)
        self._batch = backend.get(BATCH_SIZE)
        self._inferred = backend.get(INFERRED_IMAGES_TOTAL)
        self._images = backend.get(IMAGES_PER_REQUEST)
        self._inflight = backend.get(INFLIGHT_REQUESTS)
        self._model_tags = {"model_name": self.model_name}

    def count_request(self, status: str) -> None:
        """Count one finished predict/infer request with its outcome (one of STATUSES)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._requests.inc(
            1,
            tags={
                "model_name": self.model_name,
                "model_version": self.model_version,
                "status": status,
            },
        )

    def observe_latency(self, seconds: float) -> None:
        """Record one request's end-to-end latency inside the service."""
        self._latency.observe(
            _check_seconds("model_latency_seconds", seconds), tags=self._model_tags
        )

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record the time one request spent in ``stage`` (one of STAGES)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self._stage.observe(
            _check_seconds("model_stage_seconds", seconds),
            tags={"model_name": self.model_name, "stage": stage},
        )

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Time the block into model_stage_seconds{stage}; recorded even if the block raises."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - start)

    def observe_batch_size(self, n: int) -> None:
        """Record the size of one forward pass (images in the batch)."""
        self._batch.observe(_check_count("model_batch_size", n), tags=self._model_tags)
        self._inferred.inc(n, tags=self._model_tags)

    def observe_images_per_request(self, n: int) -> None:
        """Record how many images one request carried."""
        self._images.observe(_check_count("model_images_per_request", n), tags=self._model_tags)

    @contextmanager
    def inflight(self) -> Iterator[None]:
        """Count the block as one in-flight request of this model while it runs."""
        self._inflight.set(_INFLIGHT.add(self.model_name, 1), tags=self._model_tags)
        try:
            yield
        finally:
            self._inflight.set(_INFLIGHT.add(self.model_name, -1), tags=self._model_tags)


class MetricGroup:
    """A fixed set of declared metrics, looked up by spec: ``group[m.MODEL_ACCURACY].set(...)``."""

    SPECS: Tuple[MetricSpec, ...] = ()

    def __init__(self, backend: Optional[MetricBackend] = None):
        backend = backend or default_backend()
        self.metrics = {spec.name: backend.get(spec) for spec in self.SPECS}

    def __getitem__(self, spec: MetricSpec):
        return self.metrics[spec.name]


class ResourceMetrics(MetricGroup):
    """The GPU and process gauges (written by gpu.ResourceMetricsReporter)."""

    SPECS = RESOURCE_METRICS

    def set(
        self, spec: MetricSpec, value: Optional[float], tags: Optional[Dict[str, str]] = None
    ) -> None:
        """Set one resource gauge; None leaves it unset (the reading is unavailable)."""
        self[spec].set(value, tags=tags or {})


class QualityMetrics(MetricGroup):
    """The quality gauges, feedback counter, confidence histogram and store metrics."""

    SPECS = QUALITY_METRICS
