"""GPU and process readings with a fake NVML at the driver boundary (this machine has no GPU)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from serve_app.monitoring import gpu
from serve_app.monitoring import metrics as m
from serve_app.monitoring.metric_backends import InMemoryMetricsBackend
from serve_app.monitoring.metric_groups import ResourceMetrics

GIB = 1024**3


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError (the probe catches ``nvml.NVMLError``)."""


class FakeNVML:
    """The part of the pynvml API the probe uses, backed by a list of GPU dicts.

    A GPU dict may name fields in ``fail`` ("handle", "utilization", "temperature", ...) whose
    calls raise FakeNVMLError, as NVML does for unsupported queries or a GPU that fell off the bus.
    """

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus, init_error: str | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.init_calls = 0

    def _gpu(self, handle, what):
        g = self.gpus[handle]
        if what in g.get("fail", ()):
            raise FakeNVMLError(f"{what}: Not Supported")
        return g

    def nvmlInit(self):
        self.init_calls += 1
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        self._gpu(i, "handle")
        return i

    def nvmlDeviceGetName(self, h):
        return self._gpu(h, "name")["name"].encode()  # older pynvml returns bytes

    def nvmlDeviceGetUUID(self, h):
        return self._gpu(h, "uuid")["uuid"]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self._gpu(h, "utilization")["util_percent"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self._gpu(h, "memory")
        return SimpleNamespace(total=g["total"], used=g["used"], free=g["total"] - g["used"])

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu(h, "temperature")["temp"]


def two_gpus(**overrides):
    gpus = [
        {
            "name": "NVIDIA L4",
            "uuid": "GPU-aaaa-1111",
            "util_percent": 85,
            "total": 16 * GIB,
            "used": 6 * GIB,
            "temp": 71,
        },
        {
            "name": "NVIDIA L4",
            "uuid": "GPU-bbbb-2222",
            "util_percent": 3,
            "total": 16 * GIB,
            "used": 1 * GIB,
            "temp": 40,
        },
    ]
    for i, extra in overrides.items():
        gpus[int(i[1:])].update(extra)
    return gpus


class FakeProcess:
    def memory_info(self):
        return SimpleNamespace(rss=512 * 1024**2)


class FakeCuda:
    def __init__(self, initialized, allocated=(), reserved=()):
        self._initialized, self._allocated, self._reserved = initialized, allocated, reserved

    def is_initialized(self):
        return self._initialized

    def device_count(self):
        return len(self._allocated)

    def memory_allocated(self, d):
        return self._allocated[d]

    def memory_reserved(self, d):
        return self._reserved[d]


def reporter_with(nvml, visible=None, torch=None):
    backend = InMemoryMetricsBackend()
    rep = gpu.ResourceMetricsReporter(
        gpu.GpuProbe(nvml=nvml, visible_devices=visible),
        gpu.ProcessProbe(torch_module=torch, process=FakeProcess()),
        ResourceMetrics(backend),
    )
    return rep, backend


def test_values_are_mapped_to_the_contract_gauges():
    rep, backend = reporter_with(FakeNVML(two_gpus()))
    readings = rep.report()
    assert [g.index for g in readings.gpus] == [0, 1]
    g0 = readings.gpus[0]
    assert g0.name == "NVIDIA L4"
    assert g0.utilization_ratio == 0.85  # NVML percent 85 -> ratio
    assert g0.memory_used_ratio == 0.375  # 6 GiB / 16 GiB
    assert backend.get(m.GPU_UTILIZATION).value(gpu="0") == 0.85
    assert backend.get(m.GPU_UTILIZATION).value(gpu="1") == 0.03
    assert backend.get(m.GPU_MEMORY_USED_BYTES).value(gpu="0") == 6 * GIB
    assert backend.get(m.GPU_MEMORY_TOTAL_BYTES).value(gpu="1") == 16 * GIB
    assert backend.get(m.GPU_MEMORY_USED_RATIO).value(gpu="1") == 0.0625  # 1 / 16
    assert backend.get(m.GPU_TEMPERATURE_CELSIUS).value(gpu="0") == 71.0
    assert backend.get(m.PROCESS_RESIDENT_MEMORY_BYTES).value() == 512 * 1024**2


@pytest.mark.parametrize(
    "visible, indices",
    [
        (None, [0, 1]),  # unset: every GPU
        ("1", [1]),  # Ray gave this replica the second GPU: NVML index 1, not CUDA ordinal 0
        ("1,0", [1, 0]),
        ("GPU-bbbb", [1]),  # UUID prefix, as CUDA accepts
        ("bbbb-2222", [1]),  # UUID without the GPU- head
        ("0,-1,1", [0]),  # CUDA stops at the first invalid entry
        ("7", None),  # matches nothing: no readings
    ],
)
def test_visible_devices_select_nvml_indices(visible, indices):
    probe = gpu.GpuProbe(nvml=FakeNVML(two_gpus()), visible_devices=visible)
    readings = probe.read()
    assert [g.index for g in readings] == (indices or [])


def test_no_gpu_visible_is_empty_with_one_log_line(caplog):
    nvml = FakeNVML(two_gpus())
    probe = gpu.GpuProbe(nvml=nvml, visible_devices="")
    with caplog.at_level(logging.INFO, logger="serve_app.monitoring.gpu"):
        assert probe.read() == []
        assert probe.read() == []
    lines = [r for r in caplog.records if r.name == "serve_app.monitoring.gpu"]
    assert len(lines) == 1 and "no GPU for this process" in lines[0].getMessage()
    assert lines[0].levelno == logging.INFO  # a normal state, not a warning
    assert nvml.init_calls == 0  # NVML is not even started


def test_nvml_missing_is_empty_with_one_log_line_and_no_gpu_gauges(caplog):
    nvml = FakeNVML([], init_error="NVML Shared Library Not Found")
    rep, backend = reporter_with(nvml)
    with caplog.at_level(logging.INFO, logger="serve_app.monitoring.gpu"):
        for _ in range(3):
            assert rep.report().gpus == []
    lines = [r for r in caplog.records if r.name == "serve_app.monitoring.gpu"]
    assert len(lines) == 1 and "NVML unavailable" in lines[0].getMessage()
    assert nvml.init_calls == 1  # not retried every period
    assert backend.get(m.GPU_UTILIZATION).values == {}  # absent, not 0
    assert backend.get(m.PROCESS_RESIDENT_MEMORY_BYTES).value() == 512 * 1024**2
    assert "NVML" in rep.gpu_probe.unavailable_reason


def test_zero_gpus_reported_by_nvml_is_empty():
    assert gpu.GpuProbe(nvml=FakeNVML([]), visible_devices=None).read() == []


def test_pynvml_not_installed_is_empty(monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpu, "_import_pynvml", missing)
    with caplog.at_level(logging.INFO, logger="serve_app.monitoring.gpu"):
        assert gpu.GpuProbe(visible_devices=None).read() == []
    assert "nvidia-ml-py" in caplog.text


def test_unsupported_field_is_skipped_and_logged_once(caplog):
    nvml = FakeNVML(two_gpus(g0={"fail": ("temperature",)}))
    rep, backend = reporter_with(nvml)
    with caplog.at_level(logging.WARNING, logger="serve_app.monitoring.gpu"):
        rep.report()
        readings = rep.report()
    g0 = readings.gpus[0]
    assert g0.temperature_celsius is None and g0.utilization_ratio == 0.85
    assert backend.get(m.GPU_TEMPERATURE_CELSIUS).value(gpu="0") is None  # left unset
    assert backend.get(m.GPU_TEMPERATURE_CELSIUS).value(gpu="1") == 40.0
    warnings = [r for r in caplog.records if "temperature" in r.getMessage()]
    assert len(warnings) == 1


def test_gpu_lost_mid_run_skips_that_gpu_only():
    gpus = two_gpus()
    probe = gpu.GpuProbe(nvml=FakeNVML(gpus), visible_devices=None)
    assert len(probe.read()) == 2
    gpus[0]["fail"] = ("handle",)  # fell off the bus between two reads
    readings = probe.read()
    assert [g.index for g in readings] == [1]
    gpus[1]["fail"] = ("utilization", "memory", "temperature", "name")
    (g1,) = probe.read()
    assert (
        g1.utilization_ratio,
        g1.memory_used_bytes,
        g1.memory_used_ratio,
        g1.temperature_celsius,
    ) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "cuda, allocated, reserved",
    [
        (FakeCuda(True, allocated=(100, 50), reserved=(200, 64)), 150, 264),  # summed over devices
        (FakeCuda(False, allocated=(100,), reserved=(200,)), None, None),  # CUDA never used
    ],
)
def test_torch_allocator_only_when_cuda_is_in_use(cuda, allocated, reserved):
    rep, backend = reporter_with(FakeNVML([]), torch=SimpleNamespace(cuda=cuda))
    process = rep.report().process
    assert (process.torch_allocated_bytes, process.torch_reserved_bytes) == (allocated, reserved)
    assert backend.get(m.TORCH_MEMORY_ALLOCATED_BYTES).value() == allocated


def test_real_process_rss_is_read():
    reading = gpu.ProcessProbe().read()
    assert reading.resident_memory_bytes > 10 * 1024**2  # a Python process is well over 10 MiB


def test_report_safely_logs_an_unexpected_failure_once(caplog):
    class BrokenProbe(gpu.GpuProbe):
        def read(self):
            raise RuntimeError("driver returned garbage")

    rep = gpu.ResourceMetricsReporter(
        BrokenProbe(),
        gpu.ProcessProbe(process=FakeProcess()),
        ResourceMetrics(InMemoryMetricsBackend()),
    )
    with caplog.at_level(logging.ERROR, logger="serve_app.monitoring.gpu"):
        assert rep.report_safely() is None
        assert rep.report_safely() is None
    assert (
        len([r for r in caplog.records if "resource metrics report failed" in r.getMessage()]) == 1
    )


@pytest.mark.parametrize("env, indices", [("1", [1]), (None, [0, 1]), ("", [])])
def test_outside_ray_the_probe_follows_cuda_visible_devices(monkeypatch, env, indices):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert [g.index for g in gpu.GpuProbe(nvml=FakeNVML(two_gpus())).read()] == indices
