"""Writes a QualityTracker's state to the quality metrics (Prometheus gauges, counters and the
confidence histogram)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import serve_app.monitoring.metrics as m
from serve_app.monitoring.metric_groups import QualityMetrics
from serve_app.quality.tracker import QualityTracker
from serve_app.quality.wire import FeedbackResult


def gauge_value(value: float | None) -> float:
    """A score as a gauge value: NaN while there is none."""
    # NaN shows "no data" in Prometheus (comparisons with NaN are false, so `model_accuracy < 0.85`
    # alerts stay quiet) instead of a misleading 0 or a stale last value.
    return math.nan if value is None else float(value)


class QualityExporter:
    """Writes a QualityTracker's state to the quality metrics."""

    def __init__(self, tracker: QualityTracker, quality_metrics: QualityMetrics):
        self.tracker = tracker
        self.metrics = quality_metrics

    def recorded(self, predictions: list[Mapping[str, Any]]) -> None:
        """Observe the confidence of stored predictions."""
        histogram = self.metrics[m.CONFIDENCE]
        for p in predictions:
            histogram.observe(float(p["score"]), tags={"model_name": p["model_name"]})

    def feedback(self, result: FeedbackResult) -> None:
        """Count one feedback result."""
        self.metrics[m.FEEDBACK_TOTAL].inc(
            1, tags={"model_name": result.model_name or m.UNKNOWN_MODEL, "result": result.status}
        )

    def refresh_windows(self, model_name: str | None = None) -> None:
        """Export window scores (all models, or one); O(classes present) per window."""
        for name, version in self.tracker.versions(model_name):
            for window, scores in self.tracker.window_scores(name, version).items():
                tags = {"model_name": name, "model_version": version, "window": window}
                self.metrics[m.MODEL_ACCURACY].set(gauge_value(scores.accuracy), tags=tags)
                self.metrics[m.MODEL_PRECISION].set(gauge_value(scores.precision), tags=tags)
                self.metrics[m.MODEL_RECALL].set(gauge_value(scores.recall), tags=tags)
                self.metrics[m.MODEL_F1].set(gauge_value(scores.f1), tags=tags)
                self.metrics[m.MODEL_LABELLED].set(scores.labelled, tags=tags)

    def refresh_drift(self, model_name: str | None = None) -> None:
        """Export PSI (all models, or one) and the store fill."""
        for name, version in self.tracker.versions(model_name):
            self.metrics[m.PREDICTION_DRIFT_PSI].set(
                gauge_value(self.tracker.drift_psi(name, version)),
                tags={"model_name": name, "model_version": version},
            )
        self.metrics[m.STORE_PREDICTIONS].set(self.tracker.store.size, tags={})

    def refresh(self) -> None:
        """Export everything (the periodic loop: time windows decay even without traffic)."""
        self.tracker.maintain()
        self.refresh_windows()
        self.refresh_drift()
