"""The `quality:` section: the prediction store, the quality windows and drift (the
QualityMonitor deployment; docs/MONITORING.md).

Kept apart from config.py, which holds the other sections; AppConfig carries this one as its
`quality` field.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from serve_app.config_base import Section


class QualityConfig(Section):
    """Prediction store and quality windows (the QualityMonitor deployment)."""

    enabled: bool = Field(True, description="Record predictions and accept feedback.")
    store_max_items: int = Field(
        100_000, ge=1, description="Most predictions remembered for feedback."
    )
    store_max_age_s: float = Field(
        86_400, gt=0, description="Predictions older than this are evicted."
    )
    window_size: int = Field(
        1000, ge=1, description="Count window: the last N labelled predictions."
    )
    window_seconds: float = Field(
        3600, gt=0, description="Time window: labelled predictions of the last T seconds."
    )
    store_evicted_ids_max: int = Field(
        200_000,
        ge=1,
        description="Evicted request ids remembered, so late feedback is answered 410 (expired) "
        "rather than 404 (unknown).",
    )
    store_dir: str | None = Field(
        ".cache/quality",
        description="Folder of the quality store (SQLite file `quality.sqlite3`: predictions, "
        "labels, windows, drift and counters), kept across restarts and redeploys; relative to "
        "the project folder. Empty or null: memory only, lost on restart.",
    )
    reference_size: int = Field(
        1000,
        ge=10,
        description="Predictions after start that form the drift (PSI) reference distribution.",
    )
    drift_window_size: int = Field(
        1000, ge=10, description="Most recent predictions compared with the reference."
    )
    drift_bins: int = Field(
        20,
        ge=2,
        description="PSI bins: the reference's most frequent (bins - 1) classes each get one, "
        "all other classes share the last.",
    )
    drift_epsilon: float = Field(
        0.5,
        gt=0,
        description="Pseudo-count added to every PSI bin, so an empty bin gives a large but "
        "finite term instead of ln(0).",
    )
    drift_reference: dict[str, dict[int, float]] = Field(
        default_factory=dict,
        description="Per model, a fixed drift reference {class id: count} (e.g. top-1 counts on "
        "a validation set) instead of its first `reference_size` predictions.",
    )
    refresh_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often the quality gauges are exported again (time windows decay even "
        "without traffic).",
    )
    feedback_grace_s: float = Field(
        0.5,
        gt=0,
        description="How long feedback for a request id not seen yet waits for its prediction, "
        "which the ingress sends up to `record_flush_interval_s` after answering.",
    )
    record_flush_interval_s: float = Field(
        0.1,
        gt=0,
        description="How often each ingress replica sends its answered predictions to the quality "
        "monitor, in one call: longer costs less CPU per request (docs/PERFORMANCE.md), loses more "
        "if the replica is killed. Must be under `feedback_grace_s`.",
    )

    @model_validator(mode="after")
    def _feedback_waits_out_a_flush(self) -> "QualityConfig":
        if self.record_flush_interval_s >= self.feedback_grace_s:
            raise ValueError(
                f"quality.record_flush_interval_s ({self.record_flush_interval_s}) must be under "
                f"feedback_grace_s ({self.feedback_grace_s}), or feedback may miss its prediction"
            )
        return self
