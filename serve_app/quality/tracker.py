"""Model quality from feedback labels, and drift without labels. Pure Python: no Ray, no I/O.

- ``PredictionStore``: the top-1 prediction of every image, kept for feedback joins, bounded by
  count and age. Evicted request ids are remembered in a second bounded record so late feedback
  gets "expired" (HTTP 410) rather than "unknown" (HTTP 404); an id that has also fallen out of
  that record is reported as unknown.
- ``QualityWindows``: per (model, version), accuracy and macro precision / recall / F1 over
  sliding windows (last N labelled predictions, last T seconds), kept as confusion counts that
  are updated incrementally when outcomes enter and leave a window.
- ``DriftTracker``: population stability index of the predicted-class distribution against a
  reference, plus a top-1 confidence histogram.
- ``QualityTracker``: the facade the QualityMonitor deployment owns.

Definitions (docs/METRICS.md repeats them):
- accuracy = correct / labelled.
- Classes present in a window = classes that appear as truth or as prediction in it. For each
  present class c: precision_c = tp/(tp+fp), recall_c = tp/(tp+fn), F1_c = 2·p·r/(p+r), each 0
  when its denominator is 0. Macro precision, recall and F1 are the unweighted means over the
  present classes (the same as scikit-learn's ``average="macro"`` with ``zero_division=0``):
  macro F1 is the mean of per-class F1, not the harmonic mean of macro precision and recall.
- Windows are timed by when the label arrived (the join), so they slide in arrival order.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from serve_app.monitoring.metrics import (
    CONFIDENCE_BUCKETS,
    FEEDBACK_EXPIRED,
    FEEDBACK_JOINED,
    FEEDBACK_RESULTS,
    FEEDBACK_UNKNOWN_ID,
    FEEDBACK_UNKNOWN_LABEL,
    UNKNOWN_MODEL,
)

Clock = Callable[[], float]

HTTP_STATUS = {
    FEEDBACK_JOINED: 200,
    FEEDBACK_UNKNOWN_ID: 404,
    FEEDBACK_EXPIRED: 410,
    FEEDBACK_UNKNOWN_LABEL: 422,
}
FEEDBACK_INVALID = "invalid"  # malformed item (no request id, label of the wrong type): 422
HTTP_STATUS[FEEDBACK_INVALID] = 422

EVICTED_BY_AGE = "age"
EVICTED_BY_SIZE = "size"


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """A sliding window: the last ``size`` labelled predictions, or the last ``seconds``."""

    name: str
    size: Optional[int] = None
    seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("window name must be non-empty, e.g. 'last_1000'")
        if (self.size is None) == (self.seconds is None):
            raise ValueError(
                f"window {self.name!r}: give exactly one of size (e.g. 1000) or seconds (e.g. 3600)"
            )
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1
        ):
            raise ValueError(f"window {self.name!r}: size must be an int >= 1, got {self.size!r}")
        if self.seconds is not None and not (self.seconds > 0):
            raise ValueError(f"window {self.name!r}: seconds must be > 0, got {self.seconds!r}")


def duration_name(seconds: float) -> str:
    """Short name of a duration for window labels: 3600 -> "1h", 90 -> "90s", 300 -> "5m"."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and float(seconds) % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class QualityConfig:
    """Bounds and windows of the quality state; keys mirror ``quality:`` in serve_config.yaml.

    Two windows per model version: ``last_<window_size>`` (count) and ``last_<window_seconds>``
    (time, e.g. ``last_1h``); those names are the ``window`` label of the quality gauges.
    """

    store_max_items: int = 100_000  # predictions (images) held for feedback joins
    store_max_age_s: float = 86_400.0  # feedback later than this after the prediction: 410
    store_evicted_ids_max: int = 200_000  # evicted request ids remembered to answer 410, not 404
    window_size: int = 1000  # count window: the last N labelled predictions
    window_seconds: float = 3600.0  # time window: labels joined in the last T seconds
    reference_size: int = 1000  # the first N predictions per model version form the drift reference
    drift_window_size: int = 1000  # current drift window: the last N predictions
    drift_bins: int = 20  # PSI bins: the reference's top (bins - 1) classes, plus one "other" bin
    drift_epsilon: float = 0.5  # pseudo-count added to every PSI bin (no ln(0) on empty bins)
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)  # model -> class names
    # model -> {class id: count}: a fixed drift reference (e.g. top-1 counts on a validation
    # set) instead of the first reference_size predictions after start
    drift_reference: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    refresh_interval_s: float = 10.0  # how often the monitor re-exports gauges (time windows decay)
    feedback_grace_s: float = (
        0.5  # feedback for a not-yet-seen id waits this long for its prediction
    )

    def __post_init__(self) -> None:
        for key in (
            "store_max_items",
            "store_evicted_ids_max",
            "window_size",
            "reference_size",
            "drift_window_size",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"quality.{key} must be an int >= 1, got {value!r}")
        if (
            isinstance(self.drift_bins, bool)
            or not isinstance(self.drift_bins, int)
            or self.drift_bins < 2
        ):
            raise ValueError(f"quality.drift_bins must be an int >= 2, got {self.drift_bins!r}")
        for key in (
            "store_max_age_s",
            "window_seconds",
            "drift_epsilon",
            "refresh_interval_s",
            "feedback_grace_s",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"quality.{key} must be a number > 0, got {value!r}")

    @property
    def windows(self) -> Tuple[WindowSpec, ...]:
        """The count window and the time window, named as their ``window`` label."""
        return (
            WindowSpec(f"last_{self.window_size}", size=self.window_size),
            WindowSpec(
                f"last_{duration_name(self.window_seconds)}", seconds=float(self.window_seconds)
            ),
        )

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> "QualityConfig":
        """Build from a plain dict (serve_app.config's quality section); unknown keys are an error."""
        data = dict(data or {})
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown quality config key(s) {unknown}; allowed: {sorted(allowed)}")
        if data.get("drift_reference") is not None:
            data["drift_reference"] = {
                str(model): {int(k): float(v) for k, v in ref.items()}
                for model, ref in data["drift_reference"].items()
            }
        if data.get("labels") is not None:
            data["labels"] = {str(model): list(names) for model, names in data["labels"].items()}
        data = {k: v for k, v in data.items() if v is not None}  # None: keep the default
        return cls(**data)


# --- prediction store -------------------------------------------------------------------------


@dataclass
class StoredRequest:
    """Top-1 predictions of one request, and the labels joined to them so far."""

    request_id: str
    model_name: str
    model_version: str
    timestamp: float
    predictions: Dict[int, Tuple[int, float]]  # image index -> (class id, score)
    outcomes: Dict[int, "Outcome"] = field(default_factory=dict)  # image index -> joined label


@dataclass(frozen=True)
class Lookup:
    """Result of a store lookup: found (with the entry), expired, or unknown."""

    status: str  # "found" | FEEDBACK_EXPIRED | FEEDBACK_UNKNOWN_ID
    entry: Optional[StoredRequest] = None
    model_name: Optional[str] = None  # known for found and expired ids
    eviction_reason: Optional[str] = None


class PredictionStore:
    """Predictions by request id, bounded by image count and age, evictions counted."""

    def __init__(
        self,
        max_predictions: int,
        max_age_s: float,
        evicted_ids_max: int,
        clock: Clock = time.time,
        on_evict: Optional[Callable[[str, str, int], None]] = None,
    ):
        self.max_predictions = max_predictions
        self.max_age_s = max_age_s
        self.evicted_ids_max = evicted_ids_max
        self._clock = clock
        self._on_evict = on_evict  # (reason, model_name, n_predictions)
        self._entries: "OrderedDict[str, StoredRequest]" = OrderedDict()  # oldest first
        self._evicted: "OrderedDict[str, Tuple[str, str]]" = OrderedDict()  # id -> (model, reason)
        self.size = 0  # predictions (images) held
        self.evicted = {EVICTED_BY_AGE: 0, EVICTED_BY_SIZE: 0}  # predictions evicted, by reason
        self.evicted_ids_forgotten = 0  # ids dropped from the evicted record: now answered 404
        self.replaced = 0  # requests stored again under an id already held (latest wins)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredRequest) -> None:
        """Store one request's predictions (replacing an entry with the same id), then enforce
        bounds."""
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
            return Lookup("found", entry, entry.model_name)
        evicted = self._evicted.get(request_id)
        if evicted is not None:
            return Lookup(FEEDBACK_EXPIRED, None, evicted[0], evicted[1])
        return Lookup(FEEDBACK_UNKNOWN_ID)

    def stats(self) -> Dict[str, Any]:
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


# --- sliding windows --------------------------------------------------------------------------


@dataclass(eq=False)
class Outcome:
    """One labelled prediction; ``holders`` are the windows that still count it."""

    timestamp: float
    truth: int
    predicted: int
    holders: set = field(default_factory=set)


@dataclass(frozen=True)
class Scores:
    """Quality of one window; metrics are None while the window holds no labelled prediction."""

    labelled: int
    accuracy: Optional[float]
    precision: Optional[float]
    recall: Optional[float]
    f1: Optional[float]
    classes: int  # classes present (as truth or prediction) in the window

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "classes": self.classes,
        }


class ConfusionCounts:
    """Per-class tp / fp / fn and totals, updated by +1 / -1 as outcomes enter and leave."""

    def __init__(self) -> None:
        self.tp: Counter = Counter()
        self.fp: Counter = Counter()
        self.fn: Counter = Counter()
        self.total = 0
        self.correct = 0

    def add(self, truth: int, predicted: int, sign: int = 1) -> None:
        """Count (sign=1) or uncount (sign=-1) one labelled prediction."""
        self.total += sign
        if truth == predicted:
            self.correct += sign
            self.tp[truth] += sign
        else:
            self.fp[predicted] += sign
            self.fn[truth] += sign
        for counts in (self.tp, self.fp, self.fn):  # keep "present classes" exact
            for c in (truth, predicted):
                if counts.get(c) == 0:
                    del counts[c]

    def scores(self) -> Scores:
        """Accuracy and macro precision / recall / F1 over the classes present."""
        if self.total == 0:
            return Scores(0, None, None, None, None, 0)
        classes = set(self.tp) | set(self.fp) | set(self.fn)
        p_sum = r_sum = f_sum = 0.0
        for c in classes:
            tp, fp, fn = self.tp.get(c, 0), self.fp.get(c, 0), self.fn.get(c, 0)
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            p_sum += p
            r_sum += r
            f_sum += 2 * p * r / (p + r) if p + r else 0.0
        k = len(classes)
        return Scores(self.total, self.correct / self.total, p_sum / k, r_sum / k, f_sum / k, k)


class SlidingWindow:
    """Confusion counts over the last ``size`` outcomes or the last ``seconds``."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self._queue: Deque[Outcome] = deque()  # arrival order; may hold retracted outcomes
        self.counts = ConfusionCounts()
        self.live = 0

    def add(self, outcome: Outcome) -> None:
        """Count a new outcome, then drop what the window no longer covers."""
        self._queue.append(outcome)
        outcome.holders.add(self)
        self.counts.add(outcome.truth, outcome.predicted)
        self.live += 1
        if self.spec.size is not None:
            while self.live > self.spec.size:
                self._pop_oldest()
        self.advance(outcome.timestamp)

    def retract(self, outcome: Outcome) -> None:
        """Uncount an outcome that a corrected label replaces (no-op if already out)."""
        if self in outcome.holders:
            outcome.holders.discard(self)
            self.counts.add(outcome.truth, outcome.predicted, -1)
            self.live -= 1
            # retracted outcomes stay queued until they reach the front; compact if they pile up
            if len(self._queue) > 2 * self.live + 64:
                self._queue = deque(o for o in self._queue if self in o.holders)

    def advance(self, now: float) -> None:
        """Drop outcomes older than the time window (age >= seconds)."""
        if self.spec.seconds is None:
            return
        horizon = now - self.spec.seconds
        while self._queue and self._queue[0].timestamp <= horizon:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        outcome = self._queue.popleft()
        if self in outcome.holders:
            outcome.holders.discard(self)
            self.counts.add(outcome.truth, outcome.predicted, -1)
            self.live -= 1

    def scores(self, now: float) -> Scores:
        """Scores of what the window covers at ``now``."""
        self.advance(now)
        return self.counts.scores()


class QualityWindows:
    """The configured windows for every (model, version) that received a label."""

    def __init__(self, specs: Sequence[WindowSpec]):
        self.specs = tuple(specs)
        self._windows: Dict[Tuple[str, str], List[SlidingWindow]] = {}

    def _for(self, key: Tuple[str, str]) -> List[SlidingWindow]:
        windows = self._windows.get(key)
        if windows is None:
            windows = self._windows[key] = [SlidingWindow(s) for s in self.specs]
        return windows

    def add(self, model_name: str, model_version: str, outcome: Outcome) -> None:
        """Count one labelled prediction in every window of the model version."""
        for w in self._for((model_name, model_version)):
            w.add(outcome)

    def retract(self, model_name: str, model_version: str, outcome: Outcome) -> None:
        """Uncount an outcome from every window still holding it."""
        for w in self._for((model_name, model_version)):
            w.retract(outcome)

    def keys(self) -> List[Tuple[str, str]]:
        """(model, version) pairs with windows."""
        return list(self._windows)

    def scores(self, model_name: str, model_version: str, now: float) -> Dict[str, Scores]:
        """Scores of each window by window name."""
        return {w.spec.name: w.scores(now) for w in self._for((model_name, model_version))}


# --- drift and confidence ---------------------------------------------------------------------


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
    for c, r in zip(current, reference):
        p = (c + epsilon) / n_cur
        q = (r + epsilon) / n_ref
        total += (p - q) * math.log(p / q)
    return total


class DriftTracker:
    """Predicted-class distribution of the last N predictions against a reference, as PSI."""

    OTHER = "other"

    def __init__(
        self,
        reference_size: int,
        window_size: int,
        bins: int,
        epsilon: float,
        reference: Optional[Mapping[int, float]] = None,
    ):
        self.reference_size = reference_size
        self.window_size = window_size
        self.max_bins = bins
        self.epsilon = epsilon
        self.configured_reference = reference is not None
        self._reference: Counter = Counter(reference or {})
        self._reference_n = sum(self._reference.values())
        self._reference_complete = self.configured_reference
        self._current: Deque[int] = deque()
        self._current_counts: Counter = Counter()
        self._bins: Optional[List[int]] = None
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

    def _binned(self, counts: Mapping[int, float]) -> List[float]:
        assert self._bins is not None
        own = [float(counts.get(c, 0)) for c in self._bins]
        other = float(sum(counts.values())) - sum(own)
        return own + [other]

    def psi(self) -> Optional[float]:
        """PSI once the reference is complete and the current window is full, else None."""
        if not self._reference_complete or len(self._current) < self.window_size:
            return None
        return psi(self._binned(self._current_counts), self._binned(self._reference), self.epsilon)

    def state(self) -> Dict[str, Any]:
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

    def state(self) -> Dict[str, Any]:
        """Cumulative buckets like Prometheus (``le``), plus count and mean."""
        cumulative, running = [], 0
        for le, c in zip(self.boundaries + ["+Inf"], self.counts):
            running += c
            cumulative.append({"le": le, "count": running})
        return {
            "buckets": cumulative,
            "count": self.total,
            "mean": self.sum / self.total if self.total else None,
        }


# --- facade ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackResult:
    """Outcome of one feedback item; ``http_status`` is what a single-item request answers."""

    status: str  # one of FEEDBACK_RESULTS, or FEEDBACK_INVALID
    request_id: Optional[str]
    index: Optional[int]
    message: str
    model_name: Optional[str] = None
    model_version: Optional[str] = None
    label: Optional[int] = None  # the class id the label resolved to
    predicted_class_id: Optional[int] = None
    correct: Optional[bool] = None
    replaced: bool = False  # a label for this image had been joined before; this one replaces it

    @property
    def http_status(self) -> int:
        """HTTP status for this result (200, 404, 410 or 422)."""
        return HTTP_STATUS[self.status]

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready form, including http_status."""
        return {
            "status": self.status,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "index": self.index,
            "message": self.message,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "label": self.label,
            "predicted_class_id": self.predicted_class_id,
            "correct": self.correct,
            "replaced": self.replaced,
        }


@dataclass(frozen=True)
class RecordResult:
    """How many predictions were stored, which input positions were, and why others were not."""

    stored: int
    accepted: List[int]  # positions in the input list
    rejected: List[str]  # one reason per rejected position


def predictions_from_response(response: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Prediction dicts for ``QualityTracker.record`` from a /v1 predict response body."""
    out = []
    for p in response.get("predictions", []):
        top = p["top_k"][0]
        out.append(
            {
                "request_id": response["request_id"],
                "index": p["index"],
                "model_name": response["model_name"],
                "model_version": str(response["model_version"]),
                "class_id": top["class_id"],
                "score": top["score"],
            }
        )
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prediction(p: Any) -> Optional[str]:
    """Why a prediction dict cannot be stored, or None if it can."""
    if not isinstance(p, Mapping):
        return f"prediction must be a dict, got {type(p).__name__}"
    for key in ("request_id", "model_name", "model_version"):
        if not isinstance(p.get(key), str) or not p.get(key):
            return f"prediction needs a non-empty string {key!r}, got {p.get(key)!r}"
    if not _is_int(p.get("index")) or p["index"] < 0:
        return f"prediction needs an int index >= 0, got {p.get('index')!r}"
    if not _is_int(p.get("class_id")) or p["class_id"] < 0:
        return f"prediction needs an int class_id >= 0, got {p.get('class_id')!r}"
    score = p.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not (0.0 <= score <= 1.0):
        return f"prediction needs a score in [0, 1], got {score!r}"
    return None


class QualityTracker:
    """Prediction store, feedback join, quality windows, confidence and drift for all models."""

    def __init__(
        self,
        config: Optional[QualityConfig] = None,
        clock: Clock = time.time,
        on_evict: Optional[Callable[[str, str, int], None]] = None,
    ):
        self.config = config or QualityConfig()
        self._clock = clock
        self.store = PredictionStore(
            self.config.store_max_items,
            self.config.store_max_age_s,
            self.config.store_evicted_ids_max,
            clock,
            on_evict,
        )
        self.windows = QualityWindows(self.config.windows)
        self._drift: Dict[Tuple[str, str], DriftTracker] = {}
        self._confidence: Dict[Tuple[str, str], ConfidenceHistogram] = {}
        self._recorded: Counter = Counter()  # (model, version) -> predictions recorded
        # model -> result -> count; ids matching nothing are counted under UNKNOWN_MODEL
        self._feedback: Dict[str, Counter] = {}
        self._label_index = {
            model: self._index_labels(names) for model, names in self.config.labels.items()
        }

    @staticmethod
    def _index_labels(names: Sequence[str]) -> Dict[str, List[int]]:
        index: Dict[str, List[int]] = {}
        for class_id, name in enumerate(names):
            index.setdefault(name, []).append(class_id)
        return index

    # ... predictions

    def record(self, predictions: Iterable[Mapping[str, Any]]) -> RecordResult:
        """Store top-1 predictions ({request_id, index, model_name, model_version, class_id,
        score}).

        Each is stamped with this tracker's clock, so store age and windows use one clock whatever
        replica sent it; other keys (e.g. a caller's timestamp) are ignored.
        """
        now = self._clock()
        grouped: "OrderedDict[str, StoredRequest]" = OrderedDict()
        accepted: List[int] = []
        rejected: List[str] = []
        for i, p in enumerate(predictions):
            problem = _check_prediction(p)
            if problem is None:
                entry = grouped.get(p["request_id"])
                if entry is None:
                    entry = grouped[p["request_id"]] = StoredRequest(
                        p["request_id"], p["model_name"], p["model_version"], now, {}
                    )
                elif (entry.model_name, entry.model_version) != (
                    p["model_name"],
                    p["model_version"],
                ):
                    problem = (
                        f"request {p['request_id']!r} already has predictions of "
                        f"{entry.model_name}:{entry.model_version} in this batch"
                    )
                elif p["index"] in entry.predictions:
                    problem = f"request {p['request_id']!r} lists image index {p['index']} twice"
            if problem is not None:
                rejected.append(f"prediction #{i}: {problem}")
                continue
            accepted.append(i)
            entry.predictions[p["index"]] = (p["class_id"], float(p["score"]))
            key = (entry.model_name, entry.model_version)
            self._drift_for(key).add(p["class_id"])
            self._confidence.setdefault(key, ConfidenceHistogram()).observe(float(p["score"]))
            self._recorded[key] += 1
        for entry in grouped.values():
            self.store.put(entry)
        return RecordResult(sum(len(e.predictions) for e in grouped.values()), accepted, rejected)

    def _drift_for(self, key: Tuple[str, str]) -> DriftTracker:
        tracker = self._drift.get(key)
        if tracker is None:
            c = self.config
            tracker = self._drift[key] = DriftTracker(
                c.reference_size,
                c.drift_window_size,
                c.drift_bins,
                c.drift_epsilon,
                c.drift_reference.get(key[0]),
            )
        return tracker

    # ... feedback

    def _resolve_label(self, model_name: str, label: Any) -> Tuple[Optional[int], str]:
        """Class id for a label name or id, or None with the reason."""
        names = self.config.labels.get(model_name)
        if _is_int(label):
            if label < 0:
                return None, f"label {label} is negative; class ids start at 0"
            if names is not None and label >= len(names):
                return (
                    None,
                    f"label {label} is not a class of {model_name} (ids 0..{len(names) - 1})",
                )
            return label, ""
        if isinstance(label, str):
            if names is None:
                return (
                    None,
                    f"no label names configured for {model_name}; send the class id instead",
                )
            ids = self._label_index[model_name].get(label)
            if not ids:
                return None, f"label {label!r} is not a class of {model_name}"
            if len(ids) > 1:
                return (
                    None,
                    f"label {label!r} names classes {ids} of {model_name}; send the class id",
                )
            return ids[0], ""
        return None, f"label must be a class name or class id, got {type(label).__name__}"

    def _count(self, model_name: str, status: str) -> None:
        self._feedback.setdefault(model_name, Counter())[status] += 1

    def feedback(self, request_id: Any, index: Any, label: Any) -> FeedbackResult:
        """Join a true label to the stored prediction of (request_id, image index)."""
        if not isinstance(request_id, str) or not request_id:
            return FeedbackResult(
                FEEDBACK_INVALID,
                None,
                None,
                f"request_id must be a non-empty string, got {request_id!r}",
            )
        if not _is_int(index) or index < 0:
            return FeedbackResult(
                FEEDBACK_INVALID, request_id, None, f"index must be an int >= 0, got {index!r}"
            )
        found = self.store.lookup(request_id)
        if found.status == FEEDBACK_EXPIRED:
            self._count(found.model_name or UNKNOWN_MODEL, FEEDBACK_EXPIRED)
            return FeedbackResult(
                FEEDBACK_EXPIRED,
                request_id,
                index,
                f"prediction {request_id!r} was evicted from the store ({found.eviction_reason} "
                f"bound: store_max_age_s={self.store.max_age_s}, store_max_items="
                f"{self.store.max_predictions}); send feedback sooner or raise the bounds",
                model_name=found.model_name,
            )
        if found.status == FEEDBACK_UNKNOWN_ID:
            self._count(UNKNOWN_MODEL, FEEDBACK_UNKNOWN_ID)
            return FeedbackResult(
                FEEDBACK_UNKNOWN_ID,
                request_id,
                index,
                f"no prediction with request_id {request_id!r}",
            )
        entry = found.entry
        assert entry is not None
        prediction = entry.predictions.get(index)
        if prediction is None:
            self._count(entry.model_name, FEEDBACK_UNKNOWN_ID)
            return FeedbackResult(
                FEEDBACK_UNKNOWN_ID,
                request_id,
                index,
                f"request {request_id!r} has image indices {sorted(entry.predictions)}, not {index}",
                model_name=entry.model_name,
                model_version=entry.model_version,
            )
        truth, problem = self._resolve_label(entry.model_name, label)
        if truth is None:
            self._count(entry.model_name, FEEDBACK_UNKNOWN_LABEL)
            return FeedbackResult(
                FEEDBACK_UNKNOWN_LABEL,
                request_id,
                index,
                problem,
                model_name=entry.model_name,
                model_version=entry.model_version,
            )
        predicted = prediction[0]
        previous = entry.outcomes.get(index)
        if previous is not None:
            self.windows.retract(entry.model_name, entry.model_version, previous)
        outcome = Outcome(self._clock(), truth, predicted)
        entry.outcomes[index] = outcome
        self.windows.add(entry.model_name, entry.model_version, outcome)
        self._count(entry.model_name, FEEDBACK_JOINED)
        return FeedbackResult(
            FEEDBACK_JOINED,
            request_id,
            index,
            "label replaced the earlier one" if previous is not None else "label joined",
            model_name=entry.model_name,
            model_version=entry.model_version,
            label=truth,
            predicted_class_id=predicted,
            correct=truth == predicted,
            replaced=previous is not None,
        )

    # ... reading

    def versions(self, model_name: Optional[str] = None) -> List[Tuple[str, str]]:
        """(model, version) pairs with predictions or labels, optionally of one model."""
        keys = set(self._recorded) | set(self.windows.keys())
        return sorted(k for k in keys if model_name is None or k[0] == model_name)

    def window_scores(self, model_name: str, model_version: str) -> Dict[str, Scores]:
        """Scores of every window of one model version, now."""
        return self.windows.scores(model_name, model_version, self._clock())

    def drift_psi(self, model_name: str, model_version: str) -> Optional[float]:
        """Current PSI of one model version (None until reference and window are full)."""
        tracker = self._drift.get((model_name, model_version))
        return None if tracker is None else tracker.psi()

    def snapshot(self, model_name: str) -> Dict[str, Any]:
        """Quality of one model, per version: windows, confidence, drift; plus feedback and store."""
        self.store.expire()
        versions = {}
        for name, version in self.versions(model_name):
            key = (name, version)
            confidence = self._confidence.get(key)
            drift = self._drift.get(key)
            versions[version] = {
                "predictions_recorded": self._recorded.get(key, 0),
                "windows": {w: s.as_dict() for w, s in self.window_scores(name, version).items()},
                "confidence": confidence.state() if confidence else None,
                "drift": drift.state() if drift else None,
            }
        return {
            "model_name": model_name,
            "windows": [
                {"name": w.name, "size": w.size, "seconds": w.seconds} for w in self.config.windows
            ],
            "versions": versions,
            "feedback": {
                r: self._feedback.get(model_name, Counter()).get(r, 0) for r in FEEDBACK_RESULTS
            },
            "store": self.store.stats(),
        }
