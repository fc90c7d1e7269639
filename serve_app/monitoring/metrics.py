"""Every metric the service emits, declared once, plus small recorders the code paths call.

Metrics go through ``ray.serve.metrics`` inside Ray, so Ray's metrics agent aggregates them
across replicas and nodes and exports them to Prometheus with a ``ray_`` prefix
(``model_request_total`` is scraped as ``ray_model_request_total``). Outside a Ray worker
(unit tests, command-line tools) Ray's metric objects can still be built, but whatever
they record goes nowhere; there the in-memory backend keeps the values so they can be read
back and checked. ``default_backend()`` picks between the two.

The names, labels and buckets below are the metric contract; docs/METRICS.md lists them as
they appear in Prometheus.
"""

from __future__ import annotations

import bisect
import logging
import math
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

logger = logging.getLogger(__name__)

# --- label values -------------------------------------------------------------------------

STATUS_SUCCESS = "success"
STATUS_CLIENT_ERROR = "client_error"  # a 4xx the client can fix (bad image, unknown model, ...)
STATUS_SERVER_ERROR = "server_error"  # a 5xx: the service failed
STATUS_REJECTED = "rejected"  # shed before any work: overload / back-pressure (429, 503)
STATUSES = (STATUS_SUCCESS, STATUS_CLIENT_ERROR, STATUS_SERVER_ERROR, STATUS_REJECTED)

STAGE_DECODE = "decode"
STAGE_PREPROCESS = "preprocess"
STAGE_QUEUE_WAIT = "queue_wait"
STAGE_INFERENCE = "inference"
STAGE_POSTPROCESS = "postprocess"
STAGES = (STAGE_DECODE, STAGE_PREPROCESS, STAGE_QUEUE_WAIT, STAGE_INFERENCE, STAGE_POSTPROCESS)

FEEDBACK_JOINED = "joined"
FEEDBACK_UNKNOWN_ID = "unknown_id"
FEEDBACK_EXPIRED = "expired"
FEEDBACK_UNKNOWN_LABEL = "unknown_label"
FEEDBACK_RESULTS = (FEEDBACK_JOINED, FEEDBACK_UNKNOWN_ID, FEEDBACK_EXPIRED, FEEDBACK_UNKNOWN_LABEL)

# model_name label for feedback whose request id matches no stored prediction: the
# feedback body carries no model name, so the model cannot be known.
UNKNOWN_MODEL = "unknown"

# --- buckets --------------------------------------------------------------------------------

# End-to-end and stage latency, seconds. Dense from 1 ms to 100 ms where CPU
# EfficientNet-Lite0 requests live (one image ~10-40 ms, decode a few ms); boundaries sit
# exactly on the thresholds users alert on (P99 > 0.5 s, batch-size back-off above 1 s) so
# histogram_quantile is exact there; 10 s is the slowest request we want resolved (a full
# batch of 64 on a loaded CPU replica); slower ones land in +Inf.
LATENCY_BUCKETS_S: Tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
# Stages can be far below a millisecond (postprocess of one image, queue wait of an idle
# replica), so they get two extra sub-millisecond boundaries in front of the same ladder.
STAGE_BUCKETS_S: Tuple[float, ...] = (0.0001, 0.0005) + LATENCY_BUCKETS_S
# Batch sizes the Recognizer ran; @serve.batch max_batch_size is at most 64 here. Every
# power of two plus midpoints, so "are batches filling?" is readable at any load.
BATCH_SIZE_BUCKETS: Tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Images in one HTTP request; single-image requests dominate, batch uploads up to a few hundred.
IMAGES_PER_REQUEST_BUCKETS: Tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Top-1 softmax confidence, 0..1: tenths, then finer near 1 where a healthy classifier
# puts most of its mass (a shift from 0.99 to 0.9 is the early warning).
CONFIDENCE_BUCKETS: Tuple[float, ...] = (
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    1.0,
)


# --- declarations ---------------------------------------------------------------------------

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One declared metric: name as declared (Prometheus adds ``ray_``), kind, labels, buckets."""

    name: str
    kind: str
    description: str
    tag_keys: Tuple[str, ...]
    boundaries: Tuple[float, ...] = ()


REQUEST_TOTAL = MetricSpec(
    "model_request_total",
    COUNTER,
    "Predict/infer HTTP requests answered by the Ingress, by outcome.",
    ("model_name", "model_version", "status"),
)
LATENCY_SECONDS = MetricSpec(
    "model_latency_seconds",
    HISTOGRAM,
    "End-to-end request latency inside the service (Ingress receive to response), seconds.",
    ("model_name",),
    LATENCY_BUCKETS_S,
)
STAGE_SECONDS = MetricSpec(
    "model_stage_seconds",
    HISTOGRAM,
    "Time spent per request stage (decode, preprocess, queue_wait, inference, postprocess), seconds.",
    ("model_name", "stage"),
    STAGE_BUCKETS_S,
)
BATCH_SIZE = MetricSpec(
    "model_batch_size",
    HISTOGRAM,
    "Number of images in each forward pass the Recognizer ran.",
    ("model_name",),
    BATCH_SIZE_BUCKETS,
)
# Ray exports a histogram's _sum from bucket midpoints, not from the observed values, so
# sum/count of model_batch_size is only approximate; this counter makes the mean batch size exact.
INFERRED_IMAGES_TOTAL = MetricSpec(
    "model_inferred_images_total",
    COUNTER,
    "Images that went through a forward pass (the sum of all batch sizes).",
    ("model_name",),
)
IMAGES_PER_REQUEST = MetricSpec(
    "model_images_per_request",
    HISTOGRAM,
    "Number of images in each predict/infer request.",
    ("model_name",),
    IMAGES_PER_REQUEST_BUCKETS,
)
INFLIGHT_REQUESTS = MetricSpec(
    "model_inflight_requests",
    GAUGE,
    "Requests currently being handled by this replica.",
    ("model_name",),
)

GPU_UTILIZATION = MetricSpec(
    "gpu_utilization",
    GAUGE,
    "GPU compute utilization over NVML's last sample period, ratio 0..1.",
    ("gpu",),
)
GPU_MEMORY_USED_BYTES = MetricSpec(
    "gpu_memory_used_bytes",
    GAUGE,
    "GPU memory in use (all processes), bytes.",
    ("gpu",),
)
GPU_MEMORY_USED_RATIO = MetricSpec(
    "gpu_memory_used_ratio",
    GAUGE,
    "GPU memory in use over total, ratio 0..1.",
    ("gpu",),
)
GPU_MEMORY_TOTAL_BYTES = MetricSpec(
    "gpu_memory_total_bytes",
    GAUGE,
    "GPU memory installed, bytes.",
    ("gpu",),
)
GPU_TEMPERATURE_CELSIUS = MetricSpec(
    "gpu_temperature_celsius",
    GAUGE,
    "GPU core temperature, degrees Celsius.",
    ("gpu",),
)
TORCH_MEMORY_ALLOCATED_BYTES = MetricSpec(
    "torch_memory_allocated_bytes",
    GAUGE,
    "CUDA memory held by live tensors of this process (torch allocator), bytes.",
    (),
)
TORCH_MEMORY_RESERVED_BYTES = MetricSpec(
    "torch_memory_reserved_bytes",
    GAUGE,
    "CUDA memory reserved by the torch caching allocator of this process, bytes.",
    (),
)
PROCESS_RESIDENT_MEMORY_BYTES = MetricSpec(
    "process_resident_memory_bytes",
    GAUGE,
    "Resident set size of this replica process, bytes.",
    (),
)

MODEL_ACCURACY = MetricSpec(
    "model_accuracy",
    GAUGE,
    "Top-1 accuracy over the labelled predictions in the window.",
    ("model_name", "model_version", "window"),
)
MODEL_PRECISION = MetricSpec(
    "model_precision",
    GAUGE,
    "Macro precision over the classes present in the window.",
    ("model_name", "model_version", "window"),
)
MODEL_RECALL = MetricSpec(
    "model_recall",
    GAUGE,
    "Macro recall over the classes present in the window.",
    ("model_name", "model_version", "window"),
)
MODEL_F1 = MetricSpec(
    "model_f1",
    GAUGE,
    "Macro F1 (mean of per-class F1) over the classes present in the window.",
    ("model_name", "model_version", "window"),
)
MODEL_LABELLED = MetricSpec(
    "model_labelled_predictions",
    GAUGE,
    "Labelled predictions currently in the window (the sample size behind the quality gauges).",
    ("model_name", "model_version", "window"),
)
FEEDBACK_TOTAL = MetricSpec(
    "model_feedback_total",
    COUNTER,
    "Feedback items received, by join result.",
    ("model_name", "result"),
)
CONFIDENCE = MetricSpec(
    "model_confidence",
    HISTOGRAM,
    "Top-1 confidence of every stored prediction.",
    ("model_name",),
    CONFIDENCE_BUCKETS,
)
PREDICTION_DRIFT_PSI = MetricSpec(
    "model_prediction_drift_psi",
    GAUGE,
    "Population stability index of the predicted-class distribution, current vs reference window.",
    ("model_name", "model_version"),
)
STORE_PREDICTIONS = MetricSpec(
    "prediction_store_predictions",
    GAUGE,
    "Predictions held for feedback joins.",
    (),
)
STORE_EVICTIONS_TOTAL = MetricSpec(
    "prediction_store_evictions_total",
    COUNTER,
    "Predictions evicted from the feedback store, by reason (age or size).",
    ("reason",),
)

SERVICE_METRICS = (
    REQUEST_TOTAL,
    LATENCY_SECONDS,
    STAGE_SECONDS,
    BATCH_SIZE,
    INFERRED_IMAGES_TOTAL,
    IMAGES_PER_REQUEST,
    INFLIGHT_REQUESTS,
)
RESOURCE_METRICS = (
    GPU_UTILIZATION,
    GPU_MEMORY_USED_BYTES,
    GPU_MEMORY_USED_RATIO,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_TEMPERATURE_CELSIUS,
    TORCH_MEMORY_ALLOCATED_BYTES,
    TORCH_MEMORY_RESERVED_BYTES,
    PROCESS_RESIDENT_MEMORY_BYTES,
)
QUALITY_METRICS = (
    MODEL_ACCURACY,
    MODEL_PRECISION,
    MODEL_RECALL,
    MODEL_F1,
    MODEL_LABELLED,
    FEEDBACK_TOTAL,
    CONFIDENCE,
    PREDICTION_DRIFT_PSI,
    STORE_PREDICTIONS,
    STORE_EVICTIONS_TOTAL,
)
ALL_METRICS = SERVICE_METRICS + RESOURCE_METRICS + QUALITY_METRICS


# --- backends -------------------------------------------------------------------------------


class MetricBackend(Protocol):
    """Builds metric objects; each name is declared at most once per backend."""

    def get(self, spec: MetricSpec):
        """Return the metric object for ``spec``, creating it on first use."""


def _check_tags(spec: MetricSpec, tags: Optional[Dict[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """Validate label values the way Ray does (every key present, values str), return a key."""
    tags = tags or {}
    missing = [k for k in spec.tag_keys if k not in tags]
    if missing:
        raise ValueError(f"{spec.name}: missing value for label(s) {missing}; pass tags={{...}}")
    unknown = [k for k in tags if k not in spec.tag_keys]
    if unknown:
        raise ValueError(f"{spec.name}: unknown label(s) {unknown}; declared: {spec.tag_keys}")
    for k, v in tags.items():
        if not isinstance(v, str):
            raise TypeError(f"{spec.name}: label {k} must be str, got {type(v).__name__}")
    return tuple((k, tags[k]) for k in spec.tag_keys)


class InMemoryCounter:
    """Counter that keeps its totals per label set."""

    def __init__(self, spec: MetricSpec):
        self.spec = spec
        self.values: Dict[Tuple[Tuple[str, str], ...], float] = {}

    def inc(self, value: float = 1.0, tags: Optional[Dict[str, str]] = None) -> None:
        """Add ``value`` (> 0) to the series for ``tags``."""
        if value <= 0:
            raise ValueError(f"{self.spec.name}: counter increments must be > 0, got {value}")
        key = _check_tags(self.spec, tags)
        self.values[key] = self.values.get(key, 0.0) + value

    def value(self, **tags: str) -> float:
        """Current total of one series (0 if never incremented)."""
        return self.values.get(_check_tags(self.spec, tags), 0.0)


class InMemoryGauge:
    """Gauge that keeps the last value per label set."""

    def __init__(self, spec: MetricSpec):
        self.spec = spec
        self.values: Dict[Tuple[Tuple[str, str], ...], float] = {}

    def set(self, value: Optional[float], tags: Optional[Dict[str, str]] = None) -> None:
        """Set the series for ``tags``; None is ignored, as in Ray."""
        if value is None:
            return
        self.values[_check_tags(self.spec, tags)] = float(value)

    def value(self, **tags: str) -> Optional[float]:
        """Last value of one series, None if never set."""
        return self.values.get(_check_tags(self.spec, tags))


@dataclass
class HistogramSeries:
    """Cumulative-free bucket counts (one per boundary, plus +Inf), sum and count."""

    bucket_counts: List[int]
    sum: float = 0.0
    count: int = 0


class InMemoryHistogram:
    """Histogram that keeps bucket counts per label set."""

    def __init__(self, spec: MetricSpec):
        self.spec = spec
        self.boundaries = list(spec.boundaries)
        self.series: Dict[Tuple[Tuple[str, str], ...], HistogramSeries] = {}

    def observe(self, value: float, tags: Optional[Dict[str, str]] = None) -> None:
        """Count ``value`` into its bucket (upper bounds inclusive, as Prometheus' ``le``)."""
        key = _check_tags(self.spec, tags)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = HistogramSeries([0] * (len(self.boundaries) + 1))
        series.bucket_counts[bisect.bisect_left(self.boundaries, value)] += 1
        series.sum += value
        series.count += 1

    def get_series(self, **tags: str) -> Optional[HistogramSeries]:
        """The series for ``tags``, None if nothing was observed."""
        return self.series.get(_check_tags(self.spec, tags))


class InMemoryMetricsBackend:
    """Keeps metric values in this process, for code running outside a Ray worker.

    Ray's metric objects accept records without a Ray worker but drop them; this backend
    keeps them so tests and tools can read what would have been exported.
    """

    def __init__(self) -> None:
        self._metrics: Dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, spec: MetricSpec):
        """Return the metric object for ``spec``, creating it on first use."""
        with self._lock:
            metric = self._metrics.get(spec.name)
            if metric is None:
                cls = {
                    COUNTER: InMemoryCounter,
                    GAUGE: InMemoryGauge,
                    HISTOGRAM: InMemoryHistogram,
                }[spec.kind]
                metric = self._metrics[spec.name] = cls(spec)
            elif metric.spec != spec:  # type: ignore[attr-defined]
                raise ValueError(f"metric {spec.name} declared twice with different specs")
            return metric


class RayMetricsBackend:
    """Declares metrics through ``ray.serve.metrics`` (Serve adds deployment/replica labels)."""

    def __init__(self) -> None:
        from ray.serve import metrics as serve_metrics  # imported here: ray is heavy to import

        self._serve_metrics = serve_metrics
        self._metrics: Dict[str, object] = {}
        self._specs: Dict[str, MetricSpec] = {}
        self._lock = threading.Lock()

    def get(self, spec: MetricSpec):
        """Return the Ray metric for ``spec``, creating it on first use."""
        with self._lock:
            metric = self._metrics.get(spec.name)
            if metric is not None:
                if self._specs[spec.name] != spec:
                    raise ValueError(f"metric {spec.name} declared twice with different specs")
                return metric
            m = self._serve_metrics
            if spec.kind == COUNTER:
                metric = m.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
            elif spec.kind == GAUGE:
                metric = m.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
            else:
                metric = m.Histogram(
                    spec.name,
                    description=spec.description,
                    boundaries=list(spec.boundaries),
                    tag_keys=spec.tag_keys,
                )
            self._metrics[spec.name] = metric
            self._specs[spec.name] = spec
            return metric


_backend_lock = threading.Lock()
_ray_backend: Optional[RayMetricsBackend] = None
_memory_backend: Optional[InMemoryMetricsBackend] = None


def ray_worker_running() -> bool:
    """True inside a process connected to Ray (a Serve replica, a driver after ray.init)."""
    ray = sys.modules.get("ray")  # not imported means certainly not connected; skip the import
    return ray is not None and ray.is_initialized()


def default_backend() -> MetricBackend:
    """The Ray backend inside a Ray worker, else the process-wide in-memory backend."""
    global _ray_backend, _memory_backend
    with _backend_lock:
        if ray_worker_running():
            if _ray_backend is None:
                _ray_backend = RayMetricsBackend()
            return _ray_backend
        if _memory_backend is None:
            logger.info(
                "no Ray worker in this process: metrics are kept in memory and not exported"
            )
            _memory_backend = InMemoryMetricsBackend()
        return _memory_backend


# --- recorders the code paths call ------------------------------------------------------------


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
    """Request, latency, stage, batch and in-flight metrics of one model; create once per replica."""

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


def bucket_lists() -> Dict[str, Sequence[float]]:
    """Every histogram's buckets by metric name (used by docs and tests)."""
    return {spec.name: spec.boundaries for spec in ALL_METRICS if spec.kind == HISTOGRAM}
