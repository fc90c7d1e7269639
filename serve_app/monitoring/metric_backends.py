"""Where declared metrics are recorded: Ray's metric objects inside a Ray worker, memory elsewhere.

Outside a Ray worker (unit tests, command-line tools) Ray's metric objects can still be built, but
whatever they record goes nowhere; there the in-memory backend keeps the values so they can be
read back and checked. ``default_backend()`` picks between the two.
"""

from __future__ import annotations

import bisect
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

from serve_app.monitoring.metrics import COUNTER, GAUGE, HISTOGRAM, MetricSpec

logger = logging.getLogger(__name__)

SeriesKey = Tuple[Tuple[str, str], ...]


class MetricBackend(Protocol):
    """Builds metric objects; each name is declared at most once per backend."""

    def get(self, spec: MetricSpec):
        """Return the metric object for ``spec``, creating it on first use."""


def _check_tags(spec: MetricSpec, tags: Optional[Dict[str, str]]) -> SeriesKey:
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
        self.values: Dict[SeriesKey, float] = {}

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
        self.values: Dict[SeriesKey, float] = {}

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
        self.series: Dict[SeriesKey, HistogramSeries] = {}

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


class _DeclaringBackend:
    """Declares each metric once on first use and refuses the same name with another spec."""

    def __init__(self) -> None:
        self._metrics: Dict[str, object] = {}
        self._specs: Dict[str, MetricSpec] = {}
        self._lock = threading.Lock()

    def _create(self, spec: MetricSpec) -> object:
        # Each backend says how it makes a metric object; this base class only declares once.
        raise NotImplementedError

    def get(self, spec: MetricSpec):
        """Return the metric object for ``spec``, creating it on first use."""
        with self._lock:
            metric = self._metrics.get(spec.name)
            if metric is None:
                metric = self._metrics[spec.name] = self._create(spec)
                self._specs[spec.name] = spec
            elif self._specs[spec.name] != spec:
                raise ValueError(f"metric {spec.name} declared twice with different specs")
            return metric


class InMemoryMetricsBackend(_DeclaringBackend):
    """Keeps metric values in this process, for code running outside a Ray worker.

    Ray's metric objects accept records without a Ray worker but drop them; this backend
    keeps them so tests and tools can read what would have been exported.
    """

    def _create(self, spec: MetricSpec) -> object:
        cls = {COUNTER: InMemoryCounter, GAUGE: InMemoryGauge, HISTOGRAM: InMemoryHistogram}
        return cls[spec.kind](spec)


class RayMetricsBackend(_DeclaringBackend):
    """Declares metrics through ``ray.serve.metrics`` (Serve adds deployment/replica labels)."""

    def __init__(self) -> None:
        super().__init__()
        from ray.serve import metrics as serve_metrics  # imported here: ray is heavy to import

        self._serve_metrics = serve_metrics

    def _create(self, spec: MetricSpec) -> object:
        m = self._serve_metrics
        if spec.kind == COUNTER:
            return m.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
        if spec.kind == GAUGE:
            return m.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
        return m.Histogram(
            spec.name,
            description=spec.description,
            boundaries=list(spec.boundaries),
            tag_keys=spec.tag_keys,
        )


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
