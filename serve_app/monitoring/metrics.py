"""Every metric the service emits, declared once: names, kinds, labels, label values, buckets.

Inside Ray the metrics go through ``ray.serve.metrics``: Ray's metrics agent aggregates them across
replicas and nodes and exports them to Prometheus with a ``ray_`` prefix
(``model_request_total`` is scraped as ``ray_model_request_total``). ``metric_backends`` builds the
metric objects (Ray's, or in-memory ones outside a Ray worker); ``metric_groups`` holds the
recorders the code paths call.

The names, labels and buckets below are the metric contract; docs/METRICS.md lists them as
they appear in Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

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
    "Time spent per request stage (decode, preprocess, queue_wait, inference, postprocess), "
    "seconds.",
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
STORE_WRITABLE = MetricSpec(
    "prediction_store_writable",
    GAUGE,
    "1 while the quality store accepts writes, 0 while they fail (disk full, read-only, I/O).",
    (),
)

# Tiered circuit breaking (serving/overload.py): values of the tier gauge; the tier label of
# the changes counter is the tier entered.
OVERLOAD_TIERS = ("normal", "reduced_batch", "shedding")
OVERLOAD_TIER = MetricSpec(
    "model_overload_tier",
    GAUGE,
    "Overload tier of this replica: 0 normal, 1 reduced batch, 2 shedding.",
    ("model_name",),
)
OVERLOAD_TIER_CHANGES_TOTAL = MetricSpec(
    "model_overload_tier_changes_total",
    COUNTER,
    "Overload tier changes of this replica, by the tier entered.",
    ("model_name", "tier"),
)
MAX_BATCH_SIZE = MetricSpec(
    "model_max_batch_size",
    GAUGE,
    "Largest batch @serve.batch may form now (shrunk by the overload tier).",
    ("model_name",),
)
OVERLOAD_METRICS = (OVERLOAD_TIER, OVERLOAD_TIER_CHANGES_TOTAL, MAX_BATCH_SIZE)

# Shadow testing (serving/shadow_service.py): a candidate model answers a share of a model's
# requests off the response path; `model_name` is the model, `shadow_model` the candidate.
SHADOW_TAGS = ("model_name", "shadow_model")
SHADOW_REQUESTS_TOTAL = MetricSpec(
    "shadow_requests_total", COUNTER, "Shadowed requests whose answers were compared.", SHADOW_TAGS
)
SHADOW_IMAGES_TOTAL = MetricSpec(
    "shadow_images_total", COUNTER, "Images compared between model and candidate.", SHADOW_TAGS
)
SHADOW_TOP1_AGREEMENTS_TOTAL = MetricSpec(
    "shadow_top1_agreements_total",
    COUNTER,
    "Compared images on whose top-1 class model and candidate agree.",
    SHADOW_TAGS,
)
SHADOW_TOP5_OVERLAP_TOTAL = MetricSpec(
    "shadow_top5_overlap_total",
    COUNTER,
    "Sum over compared images of the share of the model's top-5 classes the candidate also has.",
    SHADOW_TAGS,
)
SHADOW_DROPPED_TOTAL = MetricSpec(
    "shadow_dropped_total",
    COUNTER,
    "Sampled requests not sent to the candidate because its queue was full.",
    SHADOW_TAGS,
)
SHADOW_ERRORS_TOTAL = MetricSpec(
    "shadow_errors_total", COUNTER, "Candidate calls that failed or timed out.", SHADOW_TAGS
)
SHADOW_TOP1_AGREEMENT = MetricSpec(
    "shadow_top1_agreement",
    GAUGE,
    "Top-1 agreement of the candidate with the model since the shadow monitor started.",
    SHADOW_TAGS,
)
SHADOW_LATENCY_SECONDS = MetricSpec(
    "shadow_latency_seconds",
    HISTOGRAM,
    "Time from the ingress to each model and back for shadowed requests, by role.",
    SHADOW_TAGS + ("role",),
    LATENCY_BUCKETS_S,
)
SHADOW_METRICS = (
    SHADOW_REQUESTS_TOTAL,
    SHADOW_IMAGES_TOTAL,
    SHADOW_TOP1_AGREEMENTS_TOTAL,
    SHADOW_TOP5_OVERLAP_TOTAL,
    SHADOW_DROPPED_TOTAL,
    SHADOW_ERRORS_TOTAL,
    SHADOW_TOP1_AGREEMENT,
    SHADOW_LATENCY_SECONDS,
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
    STORE_WRITABLE,
)
ALL_METRICS = (
    SERVICE_METRICS + RESOURCE_METRICS + QUALITY_METRICS + OVERLOAD_METRICS + SHADOW_METRICS
)
