"""Tiered circuit breaking, applied inside one Recognizer replica.

`OverloadController` is told by the request path what it measures (items queued for a batch,
queue waits, batch and request times), turns that and the latest resource readings into
`OverloadSignals` once per control period, asks `overload.decide_tier` for the tier, and applies
it: the batch limit through the batched method's setter, the tier gauge, a changes counter and one
log line per change. `admit()` is the request path's only question: in the shedding tier it
refuses, with `Overloaded` (503 + Retry-After), a request whose expected queue wait breaks the
budget, before any work is done for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from serve_app.errors import Overloaded
from serve_app.monitoring.gpu import ResourceReadings
from serve_app.monitoring.metric_groups import MetricGroup
from serve_app.monitoring.metrics import (
    MAX_BATCH_SIZE,
    OVERLOAD_METRICS,
    OVERLOAD_TIER,
    OVERLOAD_TIER_CHANGES_TOTAL,
)
from serve_app.overload_config import OverloadConfig
from serve_app.serving.overload import (
    OverloadSignals,
    Tier,
    TierDecision,
    TierState,
    batch_size_for,
    decide_tier,
    expected_queue_wait_s,
    retry_after_for,
    should_shed,
)

log = logging.getLogger("ray.serve")

# Samples kept per window, whatever the traffic: a p99 of the last 4096 is plenty, and memory stays
# bounded at any request rate.
MAX_WINDOW_SAMPLES = 4096


class RecentValues:
    """Values seen over the last `window_s` seconds (at most MAX_WINDOW_SAMPLES); thread-safe."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        """Record one value at the current time."""
        with self._lock:
            self._samples.append((self._clock(), float(value)))

    def values(self) -> list[float]:
        """The values still inside the window, oldest first."""
        horizon = self._clock() - self.window_s
        with self._lock:
            while self._samples and self._samples[0][0] < horizon:
                self._samples.popleft()
            return [v for _, v in self._samples]

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the window (None when it is empty)."""
        values = self.values()
        return float(np.quantile(values, q)) if values else None

    def mean(self) -> float | None:
        """The mean of the window (None when it is empty)."""
        values = self.values()
        return sum(values) / len(values) if values else None


class OverloadMetrics(MetricGroup):
    """The tier gauge, the tier-changes counter and the batch-limit gauge."""

    SPECS = OVERLOAD_METRICS


class OverloadController:
    """Measures, decides and applies the overload tier of one replica."""

    def __init__(
        self,
        model_name: str,
        max_batch_size: int,
        cfg: OverloadConfig,
        set_batch_size: Callable[[int], None],
        metrics: Optional[OverloadMetrics] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.cfg = cfg
        self._set_batch_size = set_batch_size
        self._clock = clock
        self.metrics = metrics or OverloadMetrics()
        self._tags = {"model_name": model_name}
        self.queue_waits = RecentValues(cfg.window_s, clock)
        self.request_times = RecentValues(cfg.window_s, clock)
        self.batch_times = RecentValues(cfg.window_s, clock)
        self._last_batch_s = 0.0
        self._queued = 0
        self._running = 0
        self._lock = threading.Lock()
        self.state = TierState()
        self.batch_size = max_batch_size
        self._failures_logged: set[str] = set()
        self.metrics[OVERLOAD_TIER].set(int(Tier.NORMAL), tags=self._tags)
        self.metrics[MAX_BATCH_SIZE].set(max_batch_size, tags=self._tags)

    @property
    def tier(self) -> Tier:
        """The tier applied now."""
        return self.state.tier

    # ---- what the request path reports -----------------------------------------------------------

    def enqueued(self, n: int) -> None:
        """`n` crops were handed to the batched method."""
        with self._lock:
            self._queued += n

    def batch_started(self, waits_s: list[float]) -> None:
        """A forward pass started with crops that waited `waits_s`."""
        with self._lock:
            self._queued = max(0, self._queued - len(waits_s))
            self._running += 1
        for wait in waits_s:
            self.queue_waits.add(wait)

    def batch_finished(self, seconds: float) -> None:
        """The forward pass that started last took `seconds`."""
        with self._lock:
            self._running = max(0, self._running - 1)
            self._last_batch_s = seconds
        self.batch_times.add(seconds)

    def request_done(self, seconds: float) -> None:
        """A request was answered after `seconds` in this replica."""
        self.request_times.add(seconds)

    # ---- the request path's question -------------------------------------------------------------

    def expected_wait_s(self, new_items: int) -> float:
        """How long `new_items` arriving now would wait for their forward pass."""
        batch_s = self.batch_times.mean()
        with self._lock:
            queued, running = self._queued, self._running > 0
            batch_s = self._last_batch_s if batch_s is None else batch_s
        return expected_queue_wait_s(queued, new_items, self.batch_size, running, batch_s)

    def admit(self, new_items: int) -> None:
        """Raise Overloaded when the replica sheds and these items would wait past the budget."""
        if self.tier != Tier.SHEDDING:
            return
        wait = self.expected_wait_s(new_items)
        if should_shed(self.tier, wait, self.cfg):
            retry_after = retry_after_for(wait, self.cfg)
            raise Overloaded(
                f"model {self.model_name!r} is shedding load: expected queue wait {wait:.2f} s "
                f"is over {self.cfg.shed_queue_wait_s:g} s; retry after {retry_after} s",
                retry_after_s=retry_after,
            )

    # ---- one control period ----------------------------------------------------------------------

    def signals(self, resources: Optional[ResourceReadings]) -> OverloadSignals:
        """This period's measurements (None for what is not measured)."""
        gpu_ratios = [
            g.memory_used_ratio
            for g in (resources.gpus if resources else ())
            if g.memory_used_ratio is not None
        ]
        rss = resources.process.resident_memory_bytes if resources else None
        rss_ratio = rss / self.cfg.max_rss_bytes if rss and self.cfg.max_rss_bytes else None
        observed_wait = self.queue_waits.quantile(0.99)
        # A queue that grows but has not started a batch yet shows only in the expected wait.
        queued_wait = self.expected_wait_s(1) if self._queued else None
        waits = [w for w in (observed_wait, queued_wait) if w is not None]
        return OverloadSignals(
            gpu_memory_ratio=max(gpu_ratios) if gpu_ratios else None,
            rss_ratio=rss_ratio,
            queue_wait_s=max(waits) if waits else None,
            latency_p99_s=self.request_times.quantile(0.99),
        )

    def step(self, resources: Optional[ResourceReadings] = None) -> TierDecision:
        """Measure, decide, and apply the tier once."""
        signals = self.signals(resources)
        decision = decide_tier(signals, self.state, self._clock(), self.cfg)
        if decision.changed:
            # Applied before it is committed: a failed apply leaves the old tier, retried next
            # period.
            self._apply(self.state.tier, decision)
        self.state = decision.state
        return decision

    def _apply(self, previous: Tier, decision: TierDecision) -> None:
        tier = decision.tier
        self.batch_size = batch_size_for(tier, self.max_batch_size, self.cfg)
        self._set_batch_size(self.batch_size)
        self.metrics[OVERLOAD_TIER].set(int(tier), tags=self._tags)
        self.metrics[MAX_BATCH_SIZE].set(self.batch_size, tags=self._tags)
        self.metrics[OVERLOAD_TIER_CHANGES_TOTAL].inc(1, tags={**self._tags, "tier": tier.label})
        log.log(
            logging.WARNING if tier > previous else logging.INFO,
            "overload tier of %s: %s -> %s, max batch size %d: %s",
            self.model_name,
            previous.label,
            tier.label,
            self.batch_size,
            decision.reason,
        )

    def step_safely(self, resources: Optional[ResourceReadings] = None) -> None:
        """step(), but a failure is logged (once per type) instead of raised: the loop must
        outlive it."""
        try:
            self.step(resources)
        except Exception as exc:  # a control loop must never take the replica down
            kind = type(exc).__name__
            if kind not in self._failures_logged:
                self._failures_logged.add(kind)
                log.exception(
                    "overload control step failed for %s (%s); tier kept", self.model_name, kind
                )

    def start(self, read_resources: Callable[[], Optional[ResourceReadings]]) -> None:
        """Run step() every `interval_s` in a daemon thread, off the request path."""

        def loop() -> None:
            while True:
                time.sleep(self.cfg.interval_s)
                self.step_safely(read_resources())

        threading.Thread(target=loop, name=f"overload-{self.model_name}", daemon=True).start()
