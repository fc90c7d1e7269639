"""Accuracy and macro precision / recall / F1 of labelled predictions over sliding windows.

Per (model, version), each window (the last N labelled predictions, or the last T seconds) keeps
confusion counts that are updated incrementally as outcomes enter and leave it.

Definitions (docs/METRICS.md repeats them):
- accuracy = correct / labelled.
- Classes present in a window = classes that appear as truth or as prediction in it. For each
  present class c: precision_c = tp/(tp+fp), recall_c = tp/(tp+fn), F1_c = 2·p·r/(p+r), each 0
  when its denominator is 0. Macro precision, recall and F1 are the unweighted means over the
  present classes (the same as scikit-learn's ``average="macro"`` with ``zero_division=0``):
  macro F1 is the mean of per-class F1, not the harmonic mean of macro precision and recall.
- Windows are timed by when the label arrived (the join), so they slide in arrival order.

Replaying the live outcomes in arrival order rebuilds the same windows, which is how the tracker
restores them from the store after a restart.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WindowSpec:
    """A sliding window: the last ``size`` labelled predictions, or the last ``seconds``."""

    name: str
    size: int | None = None
    seconds: float | None = None

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


def window_specs(window_size: int, window_seconds: float) -> tuple[WindowSpec, ...]:
    """The count window and the time window, named as the ``window`` label of the quality gauges:
    ``last_<window_size>`` and ``last_<window_seconds>`` (e.g. ``last_1000``, ``last_1h``)."""
    return (
        WindowSpec(f"last_{window_size}", size=window_size),
        WindowSpec(f"last_{duration_name(window_seconds)}", seconds=float(window_seconds)),
    )


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
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    classes: int  # classes present (as truth or prediction) in the window

    def as_dict(self) -> dict[str, Any]:
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
        self._queue: deque[Outcome] = deque()  # arrival order; may hold retracted outcomes
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
        self._windows: dict[tuple[str, str], list[SlidingWindow]] = {}

    def _for(self, key: tuple[str, str]) -> list[SlidingWindow]:
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

    def advance(self, now: float) -> None:
        """Drop what every time window no longer covers at ``now``."""
        for windows in self._windows.values():
            for w in windows:
                w.advance(now)

    def keys(self) -> list[tuple[str, str]]:
        """(model, version) pairs with windows."""
        return list(self._windows)

    def scores(self, model_name: str, model_version: str, now: float) -> dict[str, Scores]:
        """Scores of each window by window name."""
        return {w.spec.name: w.scores(now) for w in self._for((model_name, model_version))}
