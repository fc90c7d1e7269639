"""CUDA graphs per batch-size bucket, decided without CUDA: which bucket a batch pads up to, which
buckets replay a graph and which run eagerly after a failure.

At serving batch sizes the model is bound by kernel launches, not by the chip: one graph replay
launches the whole forward pass at once (0.67 ms instead of ~5 ms eager at batch 1 on an H200,
docs/bench/gpu/h200-efficientnet-lite0-2026-11-30.json). A graph has fixed shapes, so each bucket
gets its own and a batch is padded up to the smallest bucket that holds it.

The tensors live in the caller (gpu_runtime.py): `capture(bucket)` returns a replay function that
runs the first `bucket` rows of the caller's static input, and `eager(bucket)` runs the same rows
without a graph. Here that is only functions, so a fake backend tests all of this on a CPU.
"""

from __future__ import annotations

import logging
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger("ray.serve")

Out = TypeVar("Out", bound=Sequence)


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below `max_batch_size`, then `max_batch_size` itself: padding never goes past
    the largest batch the deployment forms."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds `n` rows, or None when `n` is above the largest."""
    if n < 1:
        raise ValueError(f"a batch has at least one row, not {n}")
    return next((b for b in sorted(buckets) if b >= n), None)


class BucketedGraphs(Generic[Out]):
    """One graph per bucket, each falling back to eager on its own.

    A bucket whose capture or replay fails runs eagerly from then on, with one log line; the batch
    that met the failure is run eagerly at once, so no request fails because of a graph.
    """

    def __init__(
        self,
        buckets: Sequence[int],
        capture: Callable[[int], Callable[[], Out]],
        eager: Callable[[int], Out],
        enabled: bool = True,
    ):
        self.buckets = tuple(sorted(set(buckets)))
        self._capture = capture
        self._eager = eager
        self.enabled = enabled
        self.graphs: dict[int, Callable[[], Out]] = {}
        self.failures: dict[int, str] = {}

    def capture_all(self) -> None:
        """Capture every bucket, largest first: graphs share one memory pool, which the largest
        sizes, and the smaller ones then fit in what it already holds."""
        if not self.enabled:
            return
        for bucket in sorted(self.buckets, reverse=True):
            try:
                self.graphs[bucket] = self._capture(bucket)
            except Exception as exc:
                self._fall_back(bucket, "capture", exc)

    @property
    def captured(self) -> tuple[int, ...]:
        """The buckets that replay a graph, smallest first."""
        return tuple(sorted(self.graphs))

    def run(self, n: int) -> Out:
        """Outputs for the first `n` rows of the static input, computed on their bucket (the padding
        rows' outputs dropped)."""
        bucket = bucket_for(n, self.buckets)
        if bucket is None:
            raise ValueError(f"{n} rows is above the largest bucket ({self.buckets[-1]})")
        graph = self.graphs.get(bucket)
        if graph is not None:
            try:
                return graph()[:n]
            except Exception as exc:
                del self.graphs[bucket]
                self._fall_back(bucket, "replay", exc)
        return self._eager(bucket)[:n]

    def _fall_back(self, bucket: int, stage: str, exc: Exception) -> None:
        self.failures[bucket] = f"{stage}: {exc}"
        log.warning(
            "CUDA graph %s failed for batch bucket %d, running it eagerly from now on: %s",
            stage,
            bucket,
            exc,
        )
