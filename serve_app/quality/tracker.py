"""Model quality from feedback labels, and drift without labels, for every model. No Ray.

``QualityTracker`` is the state the QualityMonitor deployment owns: it stores predictions in a
``QualityStore`` (store.py), joins feedback labels to them (labels.py resolves the label), counts
the outcomes in sliding windows (windows.py) and follows confidence and drift (drift.py).

What survives a restart: every write goes to the store in one transaction (predictions with the
per-version state they changed; a label with its outcome). A new tracker on the same store
replays the outcomes the windows still count, in arrival order, which rebuilds the same windows
(windows keep no state but their outcomes); the drift and confidence state and the counters are
loaded as saved, since the drift reference (the first predictions) and the windowed drift sample
need not be in the store any more.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from serve_app.config import QualityConfig
from serve_app.monitoring.metrics import (
    FEEDBACK_EXPIRED,
    FEEDBACK_JOINED,
    FEEDBACK_RESULTS,
    FEEDBACK_UNKNOWN_ID,
    FEEDBACK_UNKNOWN_LABEL,
    UNKNOWN_MODEL,
)
from serve_app.quality.drift import ConfidenceHistogram, DriftTracker
from serve_app.quality.feedback import FeedbackItem
from serve_app.quality.labels import ClassLabels, UnknownLabel
from serve_app.quality.store import (
    Clock,
    EvictionCallback,
    QualityStore,
    SQLiteQualityStore,
    StoredRequest,
    VersionKey,
)
from serve_app.quality.windows import Outcome, QualityWindows, Scores, window_specs
from serve_app.quality.wire import FeedbackResult, RecordResult, prediction_problem

FEEDBACK_COUNTERS = "feedback"  # store counter kind: model -> feedback result -> count


class QualityTracker:
    """Prediction store, feedback join, quality windows, confidence and drift for all models."""

    def __init__(
        self,
        config: QualityConfig | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        clock: Clock = time.time,
        on_evict: EvictionCallback | None = None,
        store: QualityStore | None = None,
    ):
        """``labels``: each model's class names (a model without any takes class ids only);
        ``store``: where the state lives and is restored from (default: memory, with the config's
        bounds and ``on_evict``)."""
        self.config = config or QualityConfig()
        self._clock = clock
        if store is None:
            store = SQLiteQualityStore(
                None,
                self.config.store_max_items,
                self.config.store_max_age_s,
                self.config.store_evicted_ids_max,
                clock,
                on_evict,
            )
        self.store: QualityStore = store
        self.window_specs = window_specs(self.config.window_size, self.config.window_seconds)
        self.windows = QualityWindows(self.window_specs)
        self.labels = ClassLabels(labels)
        self._drift: dict[tuple[str, str], DriftTracker] = {}
        self._confidence: dict[tuple[str, str], ConfidenceHistogram] = {}
        self._recorded: Counter = Counter()  # (model, version) -> predictions recorded
        # model -> result -> count; ids matching nothing are counted under UNKNOWN_MODEL
        self._feedback: dict[str, Counter] = {}
        # (request id, image index) -> (store seq, outcome) of labels a window may still count
        self._live: dict[tuple[str, int], tuple[int, Outcome]] = {}
        self._restore()

    def _restore(self) -> None:
        """Load counters, drift and confidence, and replay the windows' outcomes from the store."""
        for model_name, counts in self.store.counters(FEEDBACK_COUNTERS).items():
            self._feedback[model_name] = Counter(counts)
        for key, state in self.store.version_states().items():
            self._recorded[key] = state["recorded"]
            self._drift_for(key).load(state["drift"])
            self._confidence.setdefault(key, ConfidenceHistogram()).load(state["confidence"])
        for stored in self.store.outcomes():
            self.windows.add(stored.model_name, stored.model_version, stored.outcome)
            self._live[(stored.request_id, stored.index)] = (stored.seq, stored.outcome)
        self.maintain()

    def maintain(self) -> None:
        """Evict expired predictions; drop stored outcomes that no window counts any more."""
        self.store.expire()
        self.windows.advance(self._clock())
        done = [key for key, (_, outcome) in self._live.items() if not outcome.holders]
        if done:
            self.store.forget_outcomes([self._live.pop(key)[0] for key in done])

    def _version_state(self, key: VersionKey) -> dict[str, Any]:
        return {
            "recorded": self._recorded[key],
            "drift": self._drift[key].dump(),
            "confidence": self._confidence[key].dump(),
        }

    # ... predictions

    def record(self, predictions: Iterable[Mapping[str, Any]]) -> RecordResult:
        """Store top-1 prediction records (see wire.py); bad ones are reported, not stored.

        Each is stamped with this tracker's clock, so store age and windows use one clock whatever
        replica sent it; other keys (e.g. a caller's timestamp) are ignored.
        """
        now = self._clock()
        grouped: OrderedDict[str, StoredRequest] = OrderedDict()
        accepted: list[int] = []
        rejected: list[str] = []
        for i, p in enumerate(predictions):
            problem = prediction_problem(p)
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
        touched = {(e.model_name, e.model_version) for e in grouped.values()}
        self.store.put(list(grouped.values()), {k: self._version_state(k) for k in touched})
        return RecordResult(sum(len(e.predictions) for e in grouped.values()), accepted, rejected)

    def _drift_for(self, key: tuple[str, str]) -> DriftTracker:
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

    def _count(self, model_name: str, status: str) -> None:
        self._feedback.setdefault(model_name, Counter())[status] += 1
        if status != FEEDBACK_JOINED:  # a join is counted in the store with its label
            self.store.count((FEEDBACK_COUNTERS, model_name, status))

    def _refused(
        self,
        item: FeedbackItem,
        status: str,
        message: str,
        model_name: str | None = None,
        model_version: str | None = None,
    ) -> FeedbackResult:
        # feedback whose id matches nothing names no model: counted under UNKNOWN_MODEL
        self._count(model_name or UNKNOWN_MODEL, status)
        return FeedbackResult(
            status, item.request_id, item.index, message, model_name, model_version
        )

    def feedback(self, item: FeedbackItem) -> FeedbackResult:
        """Join a true label to the stored prediction of (request_id, image index)."""
        request_id, index = item.request_id, item.index
        found = self.store.lookup(request_id)
        if found.status == FEEDBACK_EXPIRED:
            return self._refused(
                item,
                FEEDBACK_EXPIRED,
                f"prediction {request_id!r} was evicted from the store ({found.eviction_reason} "
                f"bound: store_max_age_s={self.store.max_age_s}, store_max_items="
                f"{self.store.max_predictions}); send feedback sooner or raise the bounds",
                found.model_name,
            )
        if found.status == FEEDBACK_UNKNOWN_ID:
            return self._refused(
                item, FEEDBACK_UNKNOWN_ID, f"no prediction with request_id {request_id!r}"
            )
        entry = found.entry
        assert entry is not None
        model = (entry.model_name, entry.model_version)
        prediction = entry.predictions.get(index)
        if prediction is None:
            return self._refused(
                item,
                FEEDBACK_UNKNOWN_ID,
                f"request {request_id!r} has image indices {sorted(entry.predictions)}, "
                f"not {index}",
                *model,
            )
        try:
            truth = self.labels.class_id(entry.model_name, item.label)
        except UnknownLabel as problem:
            return self._refused(item, FEEDBACK_UNKNOWN_LABEL, str(problem), *model)
        predicted = prediction[0]
        replaced = index in entry.labels
        # the earlier label's outcome, if a window may still count it
        previous = self._live.pop((request_id, index), None) if replaced else None
        outcome = Outcome(self._clock(), truth, predicted)
        seq = self.store.join(
            entry,
            index,
            outcome,
            previous[0] if previous else None,
            (FEEDBACK_COUNTERS, entry.model_name, FEEDBACK_JOINED),
        )
        if previous is not None:
            self.windows.retract(entry.model_name, entry.model_version, previous[1])
        self._live[(request_id, index)] = (seq, outcome)
        self.windows.add(entry.model_name, entry.model_version, outcome)
        self._count(entry.model_name, FEEDBACK_JOINED)
        return FeedbackResult(
            FEEDBACK_JOINED,
            request_id,
            index,
            "label replaced the earlier one" if replaced else "label joined",
            model_name=entry.model_name,
            model_version=entry.model_version,
            label=truth,
            predicted_class_id=predicted,
            correct=truth == predicted,
            replaced=replaced,
        )

    # ... reading

    def versions(self, model_name: str | None = None) -> list[tuple[str, str]]:
        """(model, version) pairs with predictions or labels, optionally of one model."""
        keys = set(self._recorded) | set(self.windows.keys())
        return sorted(k for k in keys if model_name is None or k[0] == model_name)

    def window_scores(self, model_name: str, model_version: str) -> dict[str, Scores]:
        """Scores of every window of one model version, now."""
        return self.windows.scores(model_name, model_version, self._clock())

    def drift_psi(self, model_name: str, model_version: str) -> float | None:
        """Current PSI of one model version (None until reference and window are full)."""
        tracker = self._drift.get((model_name, model_version))
        return None if tracker is None else tracker.psi()

    def snapshot(self, model_name: str) -> dict[str, Any]:
        """One model's quality per version (windows, confidence, drift), feedback and store."""
        self.maintain()
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
                {"name": w.name, "size": w.size, "seconds": w.seconds} for w in self.window_specs
            ],
            "versions": versions,
            "feedback": {
                r: self._feedback.get(model_name, Counter()).get(r, 0) for r in FEEDBACK_RESULTS
            },
            "store": self.store.stats(),
        }
