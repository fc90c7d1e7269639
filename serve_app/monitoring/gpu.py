"""GPU (NVML) and process memory readings, and the reporter that publishes them as gauges.

No GPU is a normal state: the probe then returns no readings, says so once in the log, and
the GPU gauges are simply never set (absent in Prometheus). NVML errors on one device or one
field skip that value, never the whole reading, and never raise.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import serve_app.monitoring.metrics as m
from serve_app.monitoring.metric_backends import ray_worker_running
from serve_app.monitoring.metric_groups import ResourceMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment; a field is None when NVML could not provide it."""

    index: int  # NVML index: the physical order on the node, not the CUDA ordinal of the process
    name: Optional[str]
    utilization_ratio: Optional[float]
    memory_used_bytes: Optional[int]
    memory_total_bytes: Optional[int]
    temperature_celsius: Optional[float]

    @property
    def memory_used_ratio(self) -> Optional[float]:
        """Used over total memory, None when either is unknown or total is 0."""
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class ProcessReading:
    """Memory of this process: RSS, and the torch CUDA allocator when CUDA is in use."""

    resident_memory_bytes: Optional[int]
    torch_allocated_bytes: Optional[int]
    torch_reserved_bytes: Optional[int]


def _import_pynvml() -> Any:
    import pynvml  # from the nvidia-ml-py package

    return pynvml


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_visible_devices(value: Optional[str]) -> Optional[List[str]]:
    """CUDA_VISIBLE_DEVICES as a list of entries; None means unset (every GPU is visible).

    Ray sets it per replica (e.g. "2" for a replica given the node's third GPU); entries are
    indices or UUIDs ("GPU-..." / "MIG-..."). CUDA stops at the first invalid entry, so do we.
    """
    if value is None:
        return None
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or entry == "-1":
            break
        entries.append(entry)
    return entries


def assigned_visible_devices() -> Tuple[Optional[str], str]:
    """The GPUs this process may read, CUDA_VISIBLE_DEVICES-style, and where that came from.

    Inside a Ray worker: the GPU ids Ray assigned to it ("" when num_gpus is 0). Ray leaves
    CUDA_VISIBLE_DEVICES untouched for a worker without GPUs, so on a GPU node a CPU replica
    would otherwise report every GPU of the node as its own. Outside Ray: CUDA_VISIBLE_DEVICES.
    """
    if ray_worker_running():
        ray = sys.modules["ray"]
        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        return ",".join(str(i) for i in ids), "GPUs Ray assigned to this replica"
    return os.environ.get("CUDA_VISIBLE_DEVICES"), "CUDA_VISIBLE_DEVICES"


ASSIGNED = object()  # default: assigned_visible_devices(), resolved when the probe is built


class GpuProbe:
    """Reads the GPUs assigned to this process through NVML (``pynvml`` unless one is injected).

    ``visible_devices`` follows CUDA_VISIBLE_DEVICES syntax (indices or UUIDs; "" for none;
    None for every GPU on the node); by default the GPUs Ray assigned to this replica.
    """

    def __init__(self, nvml: Any = None, visible_devices: Any = ASSIGNED):
        self._nvml = nvml
        if visible_devices is ASSIGNED:
            self._visible, self._visible_source = assigned_visible_devices()
        else:
            self._visible, self._visible_source = visible_devices, "visible_devices"
        self._initialized = False
        self._unavailable_reason: Optional[str] = None
        self._indices: Optional[List[int]] = None
        self._logged: set = set()

    @property
    def unavailable_reason(self) -> Optional[str]:
        """Why there are no GPU readings (None while GPUs are being read)."""
        return self._unavailable_reason

    def _log_once(self, key: Any, level: int, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.log(level, message)

    def _mark_unavailable(self, reason: str) -> None:
        self._unavailable_reason = reason
        self._log_once("unavailable", logging.INFO, f"GPU metrics not exported: {reason}")

    def _init(self) -> bool:
        """Start NVML and resolve the visible GPUs once; False when there is nothing to read."""
        if self._initialized:
            return self._unavailable_reason is None
        self._initialized = True
        visible = parse_visible_devices(self._visible)
        if visible == []:
            self._mark_unavailable(
                f"no GPU for this process ({self._visible_source}: {self._visible!r})"
            )
            return False
        if self._nvml is None:
            try:
                self._nvml = _import_pynvml()
            except ImportError as exc:
                self._mark_unavailable(f"pynvml is not installed ({exc}); install nvidia-ml-py")
                return False
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            self._mark_unavailable(f"NVML unavailable ({exc}); no NVIDIA driver on this node")
            return False
        if count == 0:
            self._mark_unavailable("NVML reports no GPU on this node")
            return False
        self._indices = self._resolve_indices(visible, count)
        if not self._indices:
            self._mark_unavailable(
                f"{self._visible_source} {self._visible!r} match none of the {count} GPUs "
                "NVML lists"
            )
            return False
        logger.info("GPU metrics from NVML for GPU index(es) %s", self._indices)
        return True

    def _resolve_indices(self, visible: Optional[List[str]], count: int) -> List[int]:
        if visible is None:
            return list(range(count))
        nvml = self._nvml
        uuids: dict = {}
        indices: List[int] = []
        for entry in visible:
            if entry.isdigit():
                if int(entry) < count:
                    indices.append(int(entry))
                continue
            if not uuids:
                for i in range(count):
                    try:
                        uuids[
                            _decode(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
                        ] = i
                    except nvml.NVMLError:
                        continue
            # CUDA accepts any unique UUID prefix, with or without the "GPU-" head
            matches = [
                i for u, i in uuids.items() if u.startswith(entry) or u[4:].startswith(entry)
            ]
            if len(matches) == 1:
                indices.append(matches[0])
        return indices

    def _field(self, index: int, what: str, call: Any, *args: Any) -> Any:
        """One NVML call; an NVMLError skips this value (logged once per GPU and field)."""
        try:
            return call(*args)
        except self._nvml.NVMLError as exc:
            self._log_once(
                (index, what, type(exc).__name__),
                logging.WARNING,
                f"GPU {index}: cannot read {what} from NVML ({exc}); value skipped",
            )
            return None

    def read(self) -> List[GpuReading]:
        """Readings for every visible GPU; [] when there is no GPU or NVML is unavailable."""
        if not self._init():
            return []
        nvml = self._nvml
        readings = []
        for index in self._indices or []:
            handle = self._field(index, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            name = self._field(index, "name", nvml.nvmlDeviceGetName, handle)
            util = self._field(index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
            mem = self._field(index, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            temp = self._field(
                index,
                "temperature",
                nvml.nvmlDeviceGetTemperature,
                handle,
                nvml.NVML_TEMPERATURE_GPU,
            )
            readings.append(
                GpuReading(
                    index=index,
                    name=None if name is None else _decode(name),
                    # NVML reports percent of the last sample period; the metric is a ratio
                    utilization_ratio=None if util is None else util.gpu / 100.0,
                    memory_used_bytes=None if mem is None else int(mem.used),
                    memory_total_bytes=None if mem is None else int(mem.total),
                    temperature_celsius=None if temp is None else float(temp),
                )
            )
        return readings


class ProcessProbe:
    """RSS through psutil, and torch allocator bytes only when this process already uses CUDA."""

    def __init__(self, torch_module: Any = None, process: Any = None):
        self._torch = torch_module
        self._process = process
        self._logged: set = set()

    def _torch_module(self) -> Any:
        # Never import torch or initialise CUDA for a reading: the Ingress has no torch, and
        # a CPU recognizer must not grab a CUDA context just to report zeros.
        return self._torch if self._torch is not None else sys.modules.get("torch")

    def _rss(self) -> Optional[int]:
        try:
            if self._process is None:
                import psutil

                self._process = psutil.Process()
            return int(self._process.memory_info().rss)
        except Exception as exc:  # psutil missing or the OS refused: RSS is just absent
            if "rss" not in self._logged:
                self._logged.add("rss")
                logger.warning("process RSS unavailable (%s); value skipped", exc)
            return None

    def read(self) -> ProcessReading:
        """Current RSS, and torch allocated/reserved bytes summed over this process's devices."""
        torch = self._torch_module()
        allocated = reserved = None
        if torch is not None and torch.cuda.is_initialized():
            devices = range(torch.cuda.device_count())
            allocated = sum(int(torch.cuda.memory_allocated(d)) for d in devices)
            reserved = sum(int(torch.cuda.memory_reserved(d)) for d in devices)
        return ProcessReading(self._rss(), allocated, reserved)


@dataclass(frozen=True)
class ResourceReadings:
    """What one report published."""

    gpus: Sequence[GpuReading]
    process: ProcessReading


class ResourceMetricsReporter:
    """Publishes GPU and process readings to the resource gauges when called."""

    def __init__(
        self,
        gpu_probe: Optional[GpuProbe] = None,
        process_probe: Optional[ProcessProbe] = None,
        resource_metrics: Optional[ResourceMetrics] = None,
    ):
        self.gpu_probe = gpu_probe or GpuProbe()
        self.process_probe = process_probe or ProcessProbe()
        self.metrics = resource_metrics or ResourceMetrics()
        self._failures_logged: set = set()

    def report(self) -> ResourceReadings:
        """Read once and set the gauges; values that could not be read are left unset."""
        gpus = self.gpu_probe.read()
        for g in gpus:
            tags = {"gpu": str(g.index)}
            self.metrics.set(m.GPU_UTILIZATION, g.utilization_ratio, tags)
            self.metrics.set(m.GPU_MEMORY_USED_BYTES, g.memory_used_bytes, tags)
            self.metrics.set(m.GPU_MEMORY_USED_RATIO, g.memory_used_ratio, tags)
            self.metrics.set(m.GPU_MEMORY_TOTAL_BYTES, g.memory_total_bytes, tags)
            self.metrics.set(m.GPU_TEMPERATURE_CELSIUS, g.temperature_celsius, tags)
        process = self.process_probe.read()
        self.metrics.set(m.PROCESS_RESIDENT_MEMORY_BYTES, process.resident_memory_bytes)
        self.metrics.set(m.TORCH_MEMORY_ALLOCATED_BYTES, process.torch_allocated_bytes)
        self.metrics.set(m.TORCH_MEMORY_RESERVED_BYTES, process.torch_reserved_bytes)
        return ResourceReadings(gpus, process)

    def report_safely(self) -> Optional[ResourceReadings]:
        """report(), but an unexpected failure is logged once per type instead of raised."""
        try:
            return self.report()
        except Exception as exc:  # a metrics loop must never take the replica down
            kind = type(exc).__name__
            if kind not in self._failures_logged:
                self._failures_logged.add(kind)
                logger.exception("resource metrics report failed (%s); will keep trying", kind)
            return None
