"""The top-1 prediction of every image, kept for feedback joins, bounded by count and age.

Evicted request ids are remembered in a second bounded record, so late feedback gets "expired"
(HTTP 410) rather than "unknown" (HTTP 404); an id that has also fallen out of that record is
reported as unknown.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.monitoring.metrics import FEEDBACK_EXPIRED, FEEDBACK_UNKNOWN_ID
from serve_app.quality.windows import Outcome

Clock = Callable[[], float]
EvictionCallback = Callable[[str, str, int], None]  # (reason, model_name, n_predictions)

EVICTED_BY_AGE = "age"
EVICTED_BY_SIZE = "size"
FOUND = "found"


@dataclass
class StoredRequest:
    """Top-1 predictions of one request, and the labels joined to them so far."""

    request_id: str
    model_name: str
    model_version: str
    timestamp: float
    predictions: dict[int, tuple[int, float]]  # image index -> (class id, score)
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # image index -> joined label


@dataclass(frozen=True)
class Lookup:
    """Result of a store lookup: found (with the entry), expired, or unknown."""

    status: str  # FOUND | FEEDBACK_EXPIRED | FEEDBACK_UNKNOWN_ID
    entry: StoredRequest | None = None
    model_name: str | None = None  # known for found and expired ids
    eviction_reason: str | None = None


class PredictionStore:
    """Predictions by request id, bounded by image count and age, evictions counted."""

    def __init__(
        self,
        max_predictions: int,
        max_age_s: float,
        evicted_ids_max: int,
        clock: Clock = time.time,
        on_evict: EvictionCallback | None = None,
    ):
        self.max_predictions = max_predictions
        self.max_age_s = max_age_s
        self.evicted_ids_max = evicted_ids_max
        self._clock = clock
        self._on_evict = on_evict
        self._entries: OrderedDict[str, StoredRequest] = OrderedDict()  # oldest first
        self._evicted: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> (model, reason)
        self.size = 0  # predictions (images) held
        self.evicted = {EVICTED_BY_AGE: 0, EVICTED_BY_SIZE: 0}  # predictions evicted, by reason
        self.evicted_ids_forgotten = 0  # ids dropped from the evicted record: now answered 404
        self.replaced = 0  # requests stored again under an id already held (latest wins)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredRequest) -> None:
        """Store one request's predictions (replacing one with the same id), then apply bounds."""
        old = self._entries.pop(entry.request_id, None)
        if old is not None:
            self.size -= len(old.predictions)
            self.replaced += 1
        self._evicted.pop(entry.request_id, None)
        self._entries[entry.request_id] = entry
        self.size += len(entry.predictions)
        self.expire()
        while self.size > self.max_predictions and self._entries:
            self._evict_oldest(EVICTED_BY_SIZE)

    def expire(self) -> None:
        """Evict entries older than max_age_s (age >= max_age_s is expired)."""
        horizon = self._clock() - self.max_age_s
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.timestamp > horizon:
                break
            self._evict_oldest(EVICTED_BY_AGE)

    def _evict_oldest(self, reason: str) -> None:
        request_id, entry = self._entries.popitem(last=False)
        n = len(entry.predictions)
        self.size -= n
        self.evicted[reason] += n
        self._evicted[request_id] = (entry.model_name, reason)
        while len(self._evicted) > self.evicted_ids_max:
            self._evicted.popitem(last=False)
            self.evicted_ids_forgotten += 1
        if self._on_evict is not None:
            self._on_evict(reason, entry.model_name, n)

    def lookup(self, request_id: str) -> Lookup:
        """Find a request id: found, expired (evicted, still remembered) or unknown."""
        self.expire()
        entry = self._entries.get(request_id)
        if entry is not None:
            return Lookup(FOUND, entry, entry.model_name)
        evicted = self._evicted.get(request_id)
        if evicted is not None:
            return Lookup(FEEDBACK_EXPIRED, None, evicted[0], evicted[1])
        return Lookup(FEEDBACK_UNKNOWN_ID)

    def stats(self) -> dict[str, Any]:
        """Bounds, fill and eviction counts (part of the quality snapshot)."""
        return {
            "requests": len(self._entries),
            "predictions": self.size,
            "max_predictions": self.max_predictions,
            "max_age_s": self.max_age_s,
            "evicted_predictions": dict(self.evicted),
            "evicted_ids_remembered": len(self._evicted),
            "evicted_ids_max": self.evicted_ids_max,
            "evicted_ids_forgotten": self.evicted_ids_forgotten,
            "replaced_requests": self.replaced,
        }
