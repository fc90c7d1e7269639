"""Metric declarations and buckets, the backends, and the recorders the Ingress and Recognizer
call (no Ray worker)."""

from __future__ import annotations

import pytest

from serve_app.monitoring import metrics as m
from serve_app.monitoring.metric_backends import (
    InMemoryMetricsBackend,
    RayMetricsBackend,
    default_backend,
    ray_worker_running,
)
from serve_app.monitoring.metric_groups import ServiceMetrics


@pytest.fixture
def backend() -> InMemoryMetricsBackend:
    return InMemoryMetricsBackend()


@pytest.fixture
def svc(backend) -> ServiceMetrics:
    return ServiceMetrics("efficientnet_lite0", "1", backend=backend)


# --- declarations and buckets ---------------------------------------------------------------

CONTRACT_NAMES = {
    "model_request_total",
    "model_latency_seconds",
    "model_stage_seconds",
    "model_batch_size",
    "model_images_per_request",
    "model_inflight_requests",
    "gpu_utilization",
    "gpu_memory_used_bytes",
    "gpu_memory_used_ratio",
    "gpu_memory_total_bytes",
    "gpu_temperature_celsius",
    "torch_memory_allocated_bytes",
    "torch_memory_reserved_bytes",
    "process_resident_memory_bytes",
    "model_accuracy",
    "model_precision",
    "model_recall",
    "model_f1",
    "model_feedback_total",
    "model_confidence",
    "model_prediction_drift_psi",
}


def test_every_contract_metric_is_declared_once():
    names = [spec.name for spec in m.ALL_METRICS]
    assert len(names) == len(set(names))
    assert CONTRACT_NAMES <= set(names), CONTRACT_NAMES - set(names)


def test_contract_labels():
    by_name = {spec.name: spec for spec in m.ALL_METRICS}
    assert by_name["model_request_total"].tag_keys == ("model_name", "model_version", "status")
    assert by_name["model_stage_seconds"].tag_keys == ("model_name", "stage")
    assert by_name["model_accuracy"].tag_keys == ("model_name", "model_version", "window")
    assert by_name["model_feedback_total"].tag_keys == ("model_name", "result")
    assert by_name["gpu_utilization"].tag_keys == ("gpu",)
    # Serve adds these itself and refuses user tags with the same names
    for spec in m.ALL_METRICS:
        assert not {"deployment", "replica", "application"} & set(spec.tag_keys), spec.name


HISTOGRAM_BUCKETS = {
    spec.name: spec.boundaries for spec in m.ALL_METRICS if spec.kind == m.HISTOGRAM
}


@pytest.mark.parametrize("name, buckets", sorted(HISTOGRAM_BUCKETS.items()))
def test_buckets_sorted_and_positive(name, buckets):
    assert list(buckets) == sorted(set(buckets)), f"{name}: not strictly increasing"
    assert buckets[0] > 0  # Ray rejects boundaries <= 0


@pytest.mark.parametrize("buckets", [m.LATENCY_BUCKETS_S, m.STAGE_BUCKETS_S])
def test_latency_buckets_cover_1ms_to_10s(buckets):
    assert buckets[0] <= 0.001 and buckets[-1] >= 10.0
    # the thresholds users alert on are exact boundaries: P99 > 500 ms, batch back-off > 1 s
    assert 0.5 in buckets and 1.0 in buckets


def test_count_buckets_cover_the_workload():
    assert m.BATCH_SIZE_BUCKETS[0] == 1 and m.BATCH_SIZE_BUCKETS[-1] == 64
    assert m.IMAGES_PER_REQUEST_BUCKETS[0] == 1
    assert m.CONFIDENCE_BUCKETS[-1] == 1.0 and m.CONFIDENCE_BUCKETS[0] <= 0.1


def test_ray_accepts_every_declaration():
    # Ray's own metric classes validate names, tag keys and boundaries at construction; they can
    # be built without a Ray worker (records then go nowhere), so this runs as a unit test.
    ray_backend = RayMetricsBackend()
    for spec in m.ALL_METRICS:
        metric = ray_backend.get(spec)
        info = metric.info
        assert info["name"] == spec.name and tuple(info["tag_keys"]) == spec.tag_keys
        if spec.kind == m.HISTOGRAM:
            assert list(info["boundaries"]) == list(spec.boundaries)
        assert ray_backend.get(spec) is metric  # declared once, then reused


def test_default_backend_outside_ray_keeps_values_in_memory():
    assert not ray_worker_running()
    backend = default_backend()
    assert isinstance(backend, InMemoryMetricsBackend)
    assert default_backend() is backend


def test_same_name_with_a_different_spec_is_refused(backend):
    backend.get(m.REQUEST_TOTAL)
    clash = m.MetricSpec("model_request_total", m.COUNTER, "other", ("model_name",))
    with pytest.raises(ValueError, match="declared twice"):
        backend.get(clash)


# --- ServiceMetrics -----------------------------------------------------------------------------


def test_count_request_per_status(svc, backend):
    for status in [m.STATUS_SUCCESS, m.STATUS_SUCCESS, m.STATUS_CLIENT_ERROR, m.STATUS_REJECTED]:
        svc.count_request(status)
    counter = backend.get(m.REQUEST_TOTAL)
    tags = {"model_name": "efficientnet_lite0", "model_version": "1"}
    assert counter.value(**tags, status="success") == 2
    assert counter.value(**tags, status="client_error") == 1
    assert counter.value(**tags, status="rejected") == 1
    assert counter.value(**tags, status="server_error") == 0


def test_unknown_status_or_stage_fails_fast(svc):
    with pytest.raises(ValueError, match="status must be one of"):
        svc.count_request("failed")
    with pytest.raises(ValueError, match="stage must be one of"):
        svc.observe_stage("resize", 0.01)
    with pytest.raises(ValueError, match="stage must be one of"):
        with svc.stage("resize"):
            pass


@pytest.mark.parametrize(
    "seconds, bucket",
    [
        (0.0004, 0),  # below the first boundary 0.001
        (0.001, 0),  # upper bounds are inclusive (Prometheus `le`)
        (0.0011, 1),  # (0.001, 0.0025]
        (0.5, m.LATENCY_BUCKETS_S.index(0.5)),
        (10.0, len(m.LATENCY_BUCKETS_S) - 1),
        (12.0, len(m.LATENCY_BUCKETS_S)),  # +Inf
    ],
)
def test_latency_lands_in_its_bucket(svc, backend, seconds, bucket):
    svc.observe_latency(seconds)
    series = backend.get(m.LATENCY_SECONDS).get_series(model_name="efficientnet_lite0")
    assert series.count == 1 and series.sum == seconds
    assert series.bucket_counts[bucket] == 1


@pytest.mark.parametrize("bad", [-0.001, float("nan"), "0.1", None])
def test_bad_durations_are_refused(svc, bad):
    with pytest.raises(ValueError, match="duration must be"):
        svc.observe_latency(bad)


def test_stage_context_manager_records_even_when_the_block_fails(svc, backend):
    with svc.stage(m.STAGE_DECODE):
        pass
    with pytest.raises(RuntimeError):
        with svc.stage(m.STAGE_DECODE):
            raise RuntimeError("bad image")
    series = backend.get(m.STAGE_SECONDS).get_series(
        model_name="efficientnet_lite0", stage="decode"
    )
    assert series.count == 2 and series.sum >= 0


def test_batch_and_images_per_request(svc, backend):
    for n in [1, 3, 64]:
        svc.observe_batch_size(n)
    svc.observe_images_per_request(2)
    batch = backend.get(m.BATCH_SIZE).get_series(model_name="efficientnet_lite0")
    assert batch.count == 3 and batch.sum == 68  # 1 + 3 + 64
    assert batch.bucket_counts[0] == 1 and batch.bucket_counts[2] == 1  # le=1, le=3
    assert batch.bucket_counts[m.BATCH_SIZE_BUCKETS.index(64)] == 1
    with pytest.raises(ValueError):
        svc.observe_batch_size(0)
    with pytest.raises(ValueError):
        svc.observe_images_per_request(True)


def test_inflight_moves_up_and_back_down(backend):
    a = ServiceMetrics("inflight_model", "1", backend=backend)
    b = ServiceMetrics("inflight_model", "1", backend=backend)  # a second instance shares the count
    gauge = backend.get(m.INFLIGHT_REQUESTS)
    with a.inflight():
        assert gauge.value(model_name="inflight_model") == 1
        with b.inflight():
            assert gauge.value(model_name="inflight_model") == 2
        assert gauge.value(model_name="inflight_model") == 1
    assert gauge.value(model_name="inflight_model") == 0
    with pytest.raises(KeyError):
        with a.inflight():
            raise KeyError("handler failed")
    assert gauge.value(model_name="inflight_model") == 0


def test_missing_label_is_refused_like_ray(backend):
    with pytest.raises(ValueError, match="missing value"):
        backend.get(m.REQUEST_TOTAL).inc(1, tags={"model_name": "x"})


def test_model_name_required():
    with pytest.raises(ValueError, match="model_name"):
        ServiceMetrics("", "1", backend=InMemoryMetricsBackend())
