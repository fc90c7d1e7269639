"""How a model's predictions are distributed, without any label: drift and confidence.

- ``DriftTracker``: population stability index (PSI) of the predicted-class distribution of the
  last N predictions against a reference (the first predictions after start, or a configured one).
- ``ConfidenceHistogram``: counts of top-1 confidence, cumulative like a Prometheus histogram.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from serve_app.monitoring.metrics import CONFIDENCE_BUCKETS


def psi(current: Sequence[float], reference: Sequence[float], epsilon: float) -> float:
    """Population stability index of two count vectors over the same bins.

    Each count gets ``epsilon`` added before normalising (p_b = (c_b + ε) / (N + ε·B)), so an
    empty bin on either side gives a large but finite term instead of ln(0).
    PSI = Σ_b (p_b − q_b) · ln(p_b / q_b).
    """
    if len(current) != len(reference) or not current:
        raise ValueError("psi needs two count vectors of the same, non-zero length")
    bins = len(current)
    n_cur = sum(current) + epsilon * bins
    n_ref = sum(reference) + epsilon * bins
    total = 0.0
    for c, r in zip(current, reference, strict=True):
        p = (c + epsilon) / n_cur
        q = (r + epsilon) / n_ref
        total += (p - q) * math.log(p / q)
    return total


class DriftTracker:
    """Predicted-class distribution of the last N predictions against a reference, as PSI."""

    def __init__(
        self,
        reference_size: int,
        window_size: int,
        bins: int,
        epsilon: float,
        reference: Mapping[int, float] | None = None,
    ):
        self.reference_size = reference_size
        self.window_size = window_size
        self.max_bins = bins
        self.epsilon = epsilon
        self.configured_reference = reference is not None
        self._reference: Counter = Counter(reference or {})
        self._reference_n = sum(self._reference.values())
        self._reference_complete = self.configured_reference
        self._current: deque[int] = deque()
        self._current_counts: Counter = Counter()
        self._bins: list[int] | None = None
        if self.configured_reference:
            self._fix_bins()

    def _fix_bins(self) -> None:
        # the reference's most frequent classes get their own bin; the rest share "other"
        ranked = sorted(self._reference.items(), key=lambda kv: (-kv[1], kv[0]))
        self._bins = [c for c, _ in ranked[: self.max_bins - 1]]

    def add(self, class_id: int) -> None:
        """Count one top-1 prediction."""
        if not self._reference_complete:
            self._reference[class_id] += 1
            self._reference_n += 1
            if self._reference_n >= self.reference_size:
                self._reference_complete = True
                self._fix_bins()
        self._current.append(class_id)
        self._current_counts[class_id] += 1
        if len(self._current) > self.window_size:
            old = self._current.popleft()
            self._current_counts[old] -= 1
            if self._current_counts[old] == 0:
                del self._current_counts[old]

    def _binned(self, counts: Mapping[int, float]) -> list[float]:
        assert self._bins is not None
        own = [float(counts.get(c, 0)) for c in self._bins]
        other = float(sum(counts.values())) - sum(own)
        return own + [other]

    def psi(self) -> float | None:
        """PSI once the reference is complete and the current window is full, else None."""
        if not self._reference_complete or len(self._current) < self.window_size:
            return None
        return psi(self._binned(self._current_counts), self._binned(self._reference), self.epsilon)

    def dump(self) -> dict[str, Any]:
        """What ``load`` needs to continue after a restart: the learnt reference and the window."""
        return {
            "reference": None if self.configured_reference else dict(self._reference),
            "reference_complete": self._reference_complete,
            "current": list(self._current),
        }

    def load(self, dump: Mapping[str, Any]) -> None:
        """Continue from ``dump``; a configured reference wins over a learnt one."""
        if not self.configured_reference and dump.get("reference") is not None:
            # JSON object keys are strings: class ids come back as ints
            self._reference = Counter({int(c): n for c, n in dump["reference"].items()})
            self._reference_n = sum(self._reference.values())
            self._reference_complete = bool(dump["reference_complete"])
            if self._reference_complete:
                self._fix_bins()
        # the newest predictions, cut to this tracker's window size (it may have changed)
        self._current = deque(list(dump.get("current", []))[-self.window_size :])
        self._current_counts = Counter(self._current)

    def state(self) -> dict[str, Any]:
        """JSON-ready drift state."""
        return {
            "psi": self.psi(),
            "reference": "configured" if self.configured_reference else "first_predictions",
            "reference_size": self._reference_n,
            "reference_complete": self._reference_complete,
            "current_size": len(self._current),
            "window_size": self.window_size,
            "bins": None if self._bins is None else len(self._bins) + 1,
            "epsilon": self.epsilon,
        }


class ConfidenceHistogram:
    """Counts of top-1 confidence in CONFIDENCE_BUCKETS (upper bounds inclusive) plus overflow."""

    def __init__(self, boundaries: Sequence[float] = CONFIDENCE_BUCKETS):
        self.boundaries = list(boundaries)
        self.counts = [0] * (len(self.boundaries) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, score: float) -> None:
        """Count one confidence value."""
        self.counts[bisect.bisect_left(self.boundaries, score)] += 1
        self.total += 1
        self.sum += score

    def dump(self) -> dict[str, Any]:
        """Counts and sum, for ``load`` after a restart."""
        return {"counts": list(self.counts), "sum": self.sum}

    def load(self, dump: Mapping[str, Any]) -> None:
        """Continue from ``dump`` (ignored if it was made with other buckets)."""
        if len(dump.get("counts", [])) == len(self.counts):
            self.counts = [int(c) for c in dump["counts"]]
            self.total = sum(self.counts)
            self.sum = float(dump["sum"])

    def state(self) -> dict[str, Any]:
        """Cumulative buckets like Prometheus (``le``), plus count and mean."""
        cumulative, running = [], 0
        for le, c in zip(self.boundaries + ["+Inf"], self.counts, strict=True):
            running += c
            cumulative.append({"le": le, "count": running})
        return {
            "buckets": cumulative,
            "count": self.total,
            "mean": self.sum / self.total if self.total else None,
        }
