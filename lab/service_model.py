"""The service side of the simulator: a replica's batch-latency profile and the batching service it
implies (batch size and batch latency at a given per-replica arrival rate).

Profiles are `batch_size,latency_ms` CSVs; `cpu` and `gpu` are bundled in lab/profiles/.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILES_DIR = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class LatencyCurve:
    """Batch size -> batch latency (ms) of one replica, linearly interpolated between measured
    points."""

    batch_sizes: tuple[float, ...]
    latency_ms: tuple[float, ...]

    def __post_init__(self):
        if len(self.batch_sizes) == 0 or len(self.batch_sizes) != len(self.latency_ms):
            raise ValueError("a latency curve needs at least one (batch_size, latency_ms) point")
        if any(b <= 0 for b in self.batch_sizes) or list(self.batch_sizes) != sorted(
            set(self.batch_sizes)
        ):
            raise ValueError(
                "batch sizes must be positive and strictly increasing, "
                f"got {list(self.batch_sizes)}"
            )
        if any(not (ms > 0 and math.isfinite(ms)) for ms in self.latency_ms):
            raise ValueError(
                f"latencies must be positive milliseconds, got {list(self.latency_ms)}"
            )

    @classmethod
    def from_csv(cls, path: str | Path) -> LatencyCurve:
        """Read `batch_size,latency_ms` (lines starting with # are comments)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"latency profile {str(path)!r} does not exist (use cpu, gpu or a CSV path)"
            )
        lines = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        rows = list(csv.DictReader(lines))
        if not rows or set(rows[0]) != {"batch_size", "latency_ms"}:
            raise ValueError(f"{path}: expected the header batch_size,latency_ms")
        try:
            points = sorted((float(r["batch_size"]), float(r["latency_ms"])) for r in rows)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: every row needs two numbers ({exc})") from None
        return cls(tuple(p[0] for p in points), tuple(p[1] for p in points))

    @classmethod
    def profile(cls, name_or_path: str) -> LatencyCurve:
        """A bundled profile (`cpu`, `gpu`) or a CSV path."""
        bundled = PROFILES_DIR / f"{name_or_path}.csv"
        return cls.from_csv(bundled if bundled.is_file() else name_or_path)

    def latency(self, batch: float) -> float:
        """Milliseconds for a batch of `batch` images (flat beyond the measured range)."""
        return float(np.interp(batch, self.batch_sizes, self.latency_ms))

    def scaled(self, factor: float) -> LatencyCurve:
        """The same curve with every latency multiplied by `factor`."""
        return LatencyCurve(self.batch_sizes, tuple(ms * factor for ms in self.latency_ms))


class ServiceModel:
    """Per-replica batching service: batch size and batch latency at a given arrival rate."""

    GRID = 2000

    def __init__(
        self,
        curve: LatencyCurve,
        batch_wait_ms: float = 10.0,
        overhead_ms: float = 5.0,
        max_batch: float | None = None,
    ):
        self.curve = curve
        self.batch_wait_ms = batch_wait_ms
        self.overhead_ms = overhead_ms
        # By default the batch size with the highest throughput: a tuned deployment sets
        # max_batch_size there (a bigger batch that is slower per image would only add latency).
        self.max_batch = float(
            max_batch or max(curve.batch_sizes, key=lambda b: b / curve.latency(b))
        )
        if self.max_batch > curve.batch_sizes[-1]:
            raise ValueError(
                f"max batch {self.max_batch:g} is beyond the profile's largest batch "
                f"{curve.batch_sizes[-1]:g}"
            )
        self.max_latency_ms = curve.latency(self.max_batch)
        # Requests per second of one saturated replica.
        self.mu_max = self.max_batch / (self.max_latency_ms / 1000.0)
        self._x = np.linspace(0.0, self.mu_max, self.GRID)
        self._batch_ms = np.array([curve.latency(self._batch_at(x)) for x in self._x])

    def _batch_at(self, x: float) -> float:
        """Batch size where one batch gathers the arrivals during the previous one: b = x * (l(b) +
        wait)."""

        def gathered(b: float) -> float:
            return x * (self.curve.latency(b) + self.batch_wait_ms) / 1000.0

        low, high = min(1.0, self.max_batch), self.max_batch
        if gathered(low) <= low:
            return low
        if gathered(high) >= high:
            return high
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if gathered(mid) > mid else (low, mid)
        return high

    def batch_latency_ms(self, per_replica_rate: float) -> float:
        """Latency of one batch at this per-replica arrival rate (the saturated batch beyond
        mu_max)."""
        if per_replica_rate >= self.mu_max:
            return self.max_latency_ms
        return float(np.interp(per_replica_rate, self._x, self._batch_ms))

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-replica rate grid, batch latency ms) for fast interpolation in the simulation
        loop."""
        return self._x, self._batch_ms
