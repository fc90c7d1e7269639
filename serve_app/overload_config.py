"""The `overload:` section of a model: levels, hold times and batch sizes of tiered circuit
breaking (serving/overload.py decides, serving/overload_control.py applies; docs/RELIABILITY.md).

Kept apart from config.py, which holds most other sections, so that file stays one screenful per
section; ModelConfig carries this one as its `overload` field.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from serve_app.config_base import Section

# What each overload signal measures, once for the entry levels of every tier.
_LEVEL_MEANINGS = {
    "gpu_memory_ratio": "Used/total memory of the replica's GPU (the fullest one); ignored "
    "without a GPU.",
    "rss_ratio": "Resident memory of the replica over `overload.max_rss_bytes`; ignored while "
    "that bound is empty.",
    "queue_wait_s": "Queue wait before a forward pass, seconds: the p99 of the window or the "
    "wait a request arriving now would have, whichever is larger.",
    "latency_p99_s": "p99 of the replica's request time (decode to top-k) over the window, "
    "seconds.",
}


def _level(signal: str, default: float | None, **bounds: float) -> Any:
    return Field(default, gt=0, description=_LEVEL_MEANINGS[signal], **bounds)


class TierLevels(Section):
    """The levels of the measured signals at which a replica enters one overload tier; `null`
    leaves that signal out of the tier."""

    gpu_memory_ratio: float | None = _level("gpu_memory_ratio", None, le=1)
    rss_ratio: float | None = _level("rss_ratio", None)
    queue_wait_s: float | None = _level("queue_wait_s", None)
    latency_p99_s: float | None = _level("latency_p99_s", None)


class ReduceBatchLevels(TierLevels):
    """Entry levels of the reduced-batch tier; a key left out keeps its default, `null` leaves
    the signal out."""

    gpu_memory_ratio: float | None = _level("gpu_memory_ratio", 0.80, le=1)
    rss_ratio: float | None = _level("rss_ratio", 0.85)
    latency_p99_s: float | None = _level("latency_p99_s", 1.0)


class ShedLevels(TierLevels):
    """Entry levels of the shedding tier; a key left out keeps its default, `null` leaves the
    signal out."""

    gpu_memory_ratio: float | None = _level("gpu_memory_ratio", 0.90, le=1)
    rss_ratio: float | None = _level("rss_ratio", 0.95)
    queue_wait_s: float | None = _level("queue_wait_s", 1.0)
    latency_p99_s: float | None = _level("latency_p99_s", 2.0)


class OverloadConfig(Section):
    """Tiered circuit breaking of one model's replicas: normal -> reduced batch -> shedding, and
    back after the signals stay low (docs/RELIABILITY.md)."""

    enabled: bool = Field(True, description="Run the overload control loop in each replica.")
    interval_s: float = Field(
        1.0, gt=0, le=60, description="How often each replica re-reads its signals and tier."
    )
    window_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="The queue-wait and latency p99 are taken over the last this many seconds.",
    )
    reduce_batch_at: ReduceBatchLevels = Field(
        default_factory=ReduceBatchLevels,
        description="Any signal above its level here enters the reduced-batch tier (at least).",
    )
    shed_at: ShedLevels = Field(
        default_factory=ShedLevels,
        description="Any signal above its level here enters the shedding tier.",
    )
    recover_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A tier is left only while every signal is below this fraction of the "
        "tier's entry level (hysteresis) ...",
    )
    hold_s: float = Field(
        10.0,
        ge=0,
        description="... for this many seconds; then the replica steps down one tier, and the "
        "hold starts again.",
    )
    reduced_batch_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="In the reduced-batch and shedding tiers @serve.batch forms batches of at "
        "most max(1, floor(max_batch_size * this)).",
    )
    shed_queue_wait_s: float = Field(
        1.0,
        gt=0,
        description="In the shedding tier a request whose expected queue wait is above this is "
        "answered 503 before any work.",
    )
    retry_after_s: int = Field(
        1,
        ge=1,
        description="Least Retry-After seconds sent with a 503 of the shedding tier; a request "
        "whose expected queue wait is longer is told that wait, rounded up.",
    )
    max_rss_bytes: int | None = Field(
        None,
        ge=1,
        description="Resident memory bound of one replica that `rss_ratio` levels refer to; "
        "empty turns the memory signal off (CPU replicas: set it below the container limit).",
    )

    @model_validator(mode="after")
    def _shed_above_reduce(self) -> "OverloadConfig":
        for name in TierLevels.model_fields:
            reduce, shed = getattr(self.reduce_batch_at, name), getattr(self.shed_at, name)
            if reduce is not None and shed is not None and shed < reduce:
                raise ValueError(
                    f"overload.shed_at.{name} ({shed}) must not be below "
                    f"overload.reduce_batch_at.{name} ({reduce}): shedding is the higher tier"
                )
        return self
