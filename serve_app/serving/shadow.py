"""Shadow testing, the pure part: which requests are shadowed, how two models' answers compare,
the running report, and which feedback also scores the candidate.

A shadowed request is answered by its own model as usual; a copy goes to the candidate off the
response path (shadow_service.py). Comparisons use the first min(top_k, 5) classes of each image.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOP_K_COMPARED = 5
# Latencies kept per model for the percentiles of the report: recent traffic, bounded memory.
LATENCY_SAMPLES = 4096
# Feedback that names a shadowed request before its comparison has arrived waits this long.
FEEDBACK_WAIT_S = 60.0
MAX_WAITING_FEEDBACK = 10_000
MAX_REMEMBERED_REQUESTS = 100_000
# What the shadow's prediction is stored under in the quality store, which keeps one model's
# predictions per request id: '@' is outside the request-id alphabet, so no client id equals it.
SHADOW_ID_SEPARATOR = "@shadow:"


def shadow_request_id(request_id: str, shadow_model: str) -> str:
    """The quality-store id of the candidate's answer to a request."""
    return f"{request_id}{SHADOW_ID_SEPARATOR}{shadow_model}"


class Sampler:
    """Decides which requests are shadowed: each with probability `fraction`."""

    def __init__(self, fraction: float, rng: Callable[[], float] | None = None):
        self.fraction = fraction
        self._rng = rng or random.Random().random

    def take(self) -> bool:
        return self.fraction >= 1.0 or (self.fraction > 0.0 and self._rng() < self.fraction)


@dataclass(frozen=True)
class Comparison:
    """How one request's answers compare, image by image, summed."""

    images: int
    top1_agreements: int
    top5_overlap: float  # sum over images of |primary top-n & shadow top-n| / n


def compare(primary: Sequence[Sequence[int]], shadow: Sequence[Sequence[int]]) -> Comparison:
    """Compare two models' class ids (best first) for the same images; n = min(top_k, 5) of the
    shorter list of each image."""
    if len(primary) != len(shadow):
        raise ValueError(f"{len(primary)} primary answers but {len(shadow)} shadow answers")
    agree, overlap = 0, 0.0
    for p, s in zip(primary, shadow, strict=True):
        n = min(len(p), len(s), TOP_K_COMPARED)
        if n == 0:
            raise ValueError("an answer without classes cannot be compared")
        agree += int(p[0] == s[0])
        overlap += len(set(p[:n]) & set(s[:n])) / n
    return Comparison(len(primary), agree, overlap)


def _percentile(values: deque, q: float) -> float | None:
    return float(np.percentile(np.fromiter(values, dtype=float), q)) if values else None


@dataclass
class ShadowStats:
    """The running report of one model and its candidate, from every ingress replica."""

    model: str
    shadow_model: str
    fraction: float
    requests: int = 0
    images: int = 0
    top1_agreements: int = 0
    top5_overlap_sum: float = 0.0
    dropped: int = 0
    errors: int = 0
    primary_latency: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    shadow_latency: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, c: Comparison, primary_s: float, shadow_s: float) -> None:
        self.requests += 1
        self.images += c.images
        self.top1_agreements += c.top1_agreements
        self.top5_overlap_sum += c.top5_overlap
        self.primary_latency.append(primary_s)
        self.shadow_latency.append(shadow_s)

    def report(self) -> dict[str, Any]:
        """What GET /v1/models/{name}/shadow answers; agreement is None before any comparison."""
        n = self.images

        def latency(values: deque) -> dict[str, float | None]:
            p50, p99 = _percentile(values, 50), _percentile(values, 99)
            return {
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            }

        return {
            "model": self.model,
            "shadow_model": self.shadow_model,
            "fraction": self.fraction,
            "requests": self.requests,
            "images": n,
            "top1_agreement": self.top1_agreements / n if n else None,
            "top5_overlap": self.top5_overlap_sum / n if n else None,
            "dropped": self.dropped,
            "errors": self.errors,
            "latency": {
                "primary": latency(self.primary_latency),
                "shadow": latency(self.shadow_latency),
            },
        }


class BoundedQueue:
    """A FIFO of at most `capacity` jobs; an offer to a full queue is refused and counted, so a
    slow candidate costs shadow coverage, never primary latency or memory."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: deque = deque()
        self.dropped = 0

    def offer(self, item: Any) -> bool:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return False
        self._items.append(item)
        return True

    def take(self) -> Any | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


class FeedbackRouter:
    """Which feedback also labels a candidate's answer: items for shadowed requests, rewritten to
    the candidate's quality-store id. Feedback may arrive before the comparison that says the
    request was shadowed; it then waits up to FEEDBACK_WAIT_S (bounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._shadowed: OrderedDict[str, str] = OrderedDict()  # request id -> shadow model
        self._waiting: OrderedDict[tuple[str, int], tuple[float, Any]] = OrderedDict()

    def shadowed(self, request_id: str, shadow_model: str) -> list[tuple[str, Any]]:
        """Note a shadowed request; returns (shadow id, item) for feedback that waited for it."""
        self._shadowed[request_id] = shadow_model
        while len(self._shadowed) > MAX_REMEMBERED_REQUESTS:
            self._shadowed.popitem(last=False)
        self._expire()
        ready = [key for key in self._waiting if key[0] == request_id]
        sid = shadow_request_id(request_id, shadow_model)
        return [(sid, self._waiting.pop(key)[1]) for key in ready]

    def feedback(self, items: Sequence[Any]) -> list[tuple[str, Any]]:
        """(shadow id, item) for each item whose request was shadowed; others wait a while."""
        self._expire()
        out = []
        for item in items:
            model = self._shadowed.get(item.request_id)
            if model is not None:
                out.append((shadow_request_id(item.request_id, model), item))
                continue
            self._waiting[(item.request_id, item.index)] = (self._clock(), item)
            while len(self._waiting) > MAX_WAITING_FEEDBACK:
                self._waiting.popitem(last=False)
        return out

    def _expire(self) -> None:
        deadline = self._clock() - FEEDBACK_WAIT_S
        while self._waiting and next(iter(self._waiting.values()))[0] < deadline:
            self._waiting.popitem(last=False)
