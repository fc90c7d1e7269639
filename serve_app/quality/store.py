"""Where predictions, joined labels and the quality state live, so they survive a restart of the
QualityMonitor and a redeploy.

``QualityStore`` is the interface the tracker uses; ``SQLiteQualityStore`` implements it with one
embedded SQLite file (WAL journal, synchronous=NORMAL: a commit is not an fsync), or in memory
when no folder is given. A server database for a cluster would implement the same interface.

Predictions are bounded by image count and age, oldest request first; every eviction is counted.
Evicted request ids are remembered in a second bounded table, so late feedback gets "expired"
(HTTP 410) rather than "unknown" (HTTP 404); an id that has also fallen out of that table is
reported as unknown.

A write the storage refuses (disk full, read-only, I/O error) is handled by store_health.py:
predictions are dropped and counted, feedback gets 503, the state change is logged once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from serve_app.errors import StoreUnavailable
from serve_app.monitoring.metrics import FEEDBACK_EXPIRED, FEEDBACK_UNKNOWN_ID
from serve_app.paths import REPO_ROOT
from serve_app.quality.store_health import STORAGE_ERRORS, HealthCallback, StoreHealth
from serve_app.quality.store_schema import SCHEMA, SCHEMA_VERSION
from serve_app.quality.windows import Outcome

Clock = Callable[[], float]
EvictionCallback = Callable[[str, str, int], None]  # (reason, model_name, n_predictions)
VersionKey = tuple[str, str]  # (model_name, model_version)
CounterKey = tuple[str, str, str]  # (kind, key, name), e.g. ("feedback", model, "joined")

EVICTED_BY_AGE = "age"
EVICTED_BY_SIZE = "size"
FOUND = "found"
STORE_FILE = "quality.sqlite3"
IN_MEMORY = ":memory:"


@dataclass
class StoredRequest:
    """Top-1 predictions of one request, and the labels joined to them so far."""

    request_id: str
    model_name: str
    model_version: str
    timestamp: float
    predictions: dict[int, tuple[int, float]]  # image index -> (class id, score)
    labels: dict[int, int] = field(default_factory=dict)  # image index -> joined true class id


@dataclass(frozen=True)
class Lookup:
    """Result of a store lookup: found (with the entry), expired, or unknown."""

    status: str  # FOUND | FEEDBACK_EXPIRED | FEEDBACK_UNKNOWN_ID
    entry: StoredRequest | None = None
    model_name: str | None = None  # known for found and expired ids
    eviction_reason: str | None = None


@dataclass(frozen=True)
class StoredOutcome:
    """A labelled prediction still counted by a quality window, in arrival order (``seq``)."""

    seq: int
    request_id: str
    index: int
    model_name: str
    model_version: str
    outcome: Outcome


class QualityStore(Protocol):
    """What the tracker needs from a store; each write method is one transaction."""

    max_predictions: int
    max_age_s: float
    size: int  # predictions (images) held

    def put(self, entries: Sequence[StoredRequest], states: Mapping[VersionKey, dict]) -> None:
        """Store requests (same id: latest wins) and per-version state, then apply the bounds;
        what the storage refuses is dropped and counted, never raised."""

    def lookup(self, request_id: str) -> Lookup:
        """Find a request id: found, expired (evicted, still remembered) or unknown."""

    def join(
        self,
        entry: StoredRequest,
        index: int,
        outcome: Outcome,
        replaces: int | None,
        counter: CounterKey,
    ) -> int:
        """Save a label and its outcome (dropping outcome ``replaces``) and add 1 to ``counter``;
        returns the outcome's seq. Raises StoreUnavailable (503) when the storage refuses."""

    def forget_outcomes(self, seqs: Sequence[int]) -> None:
        """Drop outcomes that no quality window counts any more."""

    def count(self, key: CounterKey, n: int = 1) -> None:
        """Add ``n`` to a named counter."""

    def counters(self, kind: str) -> dict[str, dict[str, int]]:
        """Counters of one kind: key -> name -> value."""

    def version_states(self) -> dict[VersionKey, dict]:
        """The last saved state of every model version."""

    def outcomes(self) -> Iterator[StoredOutcome]:
        """Outcomes still counted by a window, in arrival order."""

    def expire(self) -> None:
        """Evict predictions older than max_age_s."""

    def stats(self) -> dict[str, Any]:
        """Bounds, fill and eviction counts."""

    def close(self) -> None:
        """Release the store (pending work is already committed)."""


class StoreSchemaError(RuntimeError):
    """The store folder holds data of another schema version."""


STORE_COUNTERS = "store"  # counter kind of the store's own eviction and replacement counts


def store_path(store_dir: str | None) -> Path | None:
    """The SQLite file for ``quality.store_dir`` (relative to the project folder), None: memory."""
    if not store_dir:
        return None
    folder = Path(store_dir).expanduser()
    return (folder if folder.is_absolute() else REPO_ROOT / folder) / STORE_FILE


class SQLiteQualityStore:
    """The quality store in one SQLite file (or in memory), bounded by image count and age."""

    def __init__(
        self,
        path: Path | None,
        max_predictions: int,
        max_age_s: float,
        evicted_ids_max: int,
        clock: Clock = time.time,
        on_evict: EvictionCallback | None = None,
        on_health: HealthCallback | None = None,
    ):
        """``path``: the SQLite file (its folder is created); None keeps everything in memory.
        ``on_health``: called with the problem when writes start failing, None when they work."""
        self.path = path
        self.max_predictions = max_predictions
        self.max_age_s = max_age_s
        self.evicted_ids_max = evicted_ids_max
        self._clock = clock
        self._on_evict = on_evict
        self.health = StoreHealth(IN_MEMORY if path is None else str(path), on_health, clock)
        self._unforgotten: list[int] = []  # outcome seqs a failed forget_outcomes left behind
        try:
            self._db = self._open(path)
        except STORAGE_ERRORS as exc:
            # The monitor must start whatever the disk does: an empty store that refuses every
            # write, until a restart finds the folder writable.
            self.health.failed(exc, "; the stored state was not restored (restart once fixed)")
            self._db = self._open(None)
            self._db.execute("PRAGMA query_only = ON")
        self._load_counts()

    def _open(self, path: Path | None) -> sqlite3.Connection:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # One replica owns the file; its calls are serialised by the replica's event loop.
        db = sqlite3.connect(
            IN_MEMORY if path is None else str(path), isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreSchemaError(
                    f"{path} holds quality data of schema {version}; this version reads schema "
                    f"{SCHEMA_VERSION}: move that folder aside (quality.store_dir) to start empty"
                )
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _load_counts(self) -> None:
        """The counts kept beside the tables, as committed (after a write that failed, too)."""
        counts = self.counters(STORE_COUNTERS).get("", {})
        self.evicted = {r: counts.get(f"evicted_{r}", 0) for r in (EVICTED_BY_AGE, EVICTED_BY_SIZE)}
        self.evicted_ids_forgotten = counts.get("evicted_ids_forgotten", 0)
        self.replaced = counts.get("replaced_requests", 0)
        self.size = self._db.execute("SELECT COALESCE(SUM(images), 0) FROM requests").fetchone()[0]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a storage failure rolls back and raises StoreUnavailable."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite ends it itself after a full disk, I/O errors
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except STORAGE_ERRORS as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._load_counts()  # the in-memory counts moved with the writes rolled back
            raise self.health.failed(exc) from exc
        self.health.succeeded()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    # ... writes

    def put(self, entries: Sequence[StoredRequest], states: Mapping[VersionKey, dict]) -> None:
        """Store requests (same id: latest wins) and per-version state, then apply the bounds;
        when the storage refuses, the entries are dropped and counted (the clients have their
        answers; the next put saves the state anew)."""
        try:
            self._put(entries, states)
        except StoreUnavailable:
            self.health.dropped_predictions += sum(len(e.predictions) for e in entries)

    def _put(self, entries: Sequence[StoredRequest], states: Mapping[VersionKey, dict]) -> None:
        with self._transaction() as db:
            for entry in entries:
                old = db.execute(
                    "SELECT images FROM requests WHERE request_id = ?", (entry.request_id,)
                ).fetchone()
                if old is not None:
                    db.execute("DELETE FROM predictions WHERE request_id = ?", (entry.request_id,))
                    db.execute("DELETE FROM requests WHERE request_id = ?", (entry.request_id,))
                    self.size -= old[0]
                    self.replaced += 1
                    self._add(db, (STORE_COUNTERS, "", "replaced_requests"), 1)
            db.executemany(
                "DELETE FROM evicted WHERE request_id = ?", [(e.request_id,) for e in entries]
            )
            db.executemany(
                "INSERT INTO requests (request_id, model_name, model_version, recorded_at, images)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (e.request_id, e.model_name, e.model_version, e.timestamp, len(e.predictions))
                    for e in entries
                ],
            )
            db.executemany(
                "INSERT INTO predictions (request_id, image_index, class_id, score, label)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (e.request_id, i, c, s, e.labels.get(i))
                    for e in entries
                    for i, (c, s) in e.predictions.items()
                ],
            )
            self.size += sum(len(e.predictions) for e in entries)
            db.executemany(
                "INSERT OR REPLACE INTO version_state (model_name, model_version, state)"
                " VALUES (?, ?, ?)",
                [(model, version, json.dumps(s)) for (model, version), s in states.items()],
            )
            self._expire(db)
            self._evict_over_size(db)

    def join(
        self,
        entry: StoredRequest,
        index: int,
        outcome: Outcome,
        replaces: int | None,
        counter: CounterKey,
    ) -> int:
        """Save a label and its outcome (dropping outcome ``replaces``) and add 1 to ``counter``;
        returns the outcome's seq."""
        with self._transaction() as db:
            self._add(db, counter, 1)
            db.execute(
                "UPDATE predictions SET label = ? WHERE request_id = ? AND image_index = ?",
                (outcome.truth, entry.request_id, index),
            )
            if replaces is not None:
                db.execute("DELETE FROM outcomes WHERE seq = ?", (replaces,))
            cursor = db.execute(
                "INSERT INTO outcomes (request_id, image_index, model_name, model_version,"
                " labelled_at, truth, predicted) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.request_id,
                    index,
                    entry.model_name,
                    entry.model_version,
                    outcome.timestamp,
                    outcome.truth,
                    outcome.predicted,
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def forget_outcomes(self, seqs: Sequence[int]) -> None:
        """Drop outcomes that no quality window counts any more (those a failed write left, too)."""
        seqs = self._unforgotten + list(seqs)
        try:
            with self._transaction() as db:
                db.executemany("DELETE FROM outcomes WHERE seq = ?", [(s,) for s in seqs])
        except StoreUnavailable:
            self._unforgotten = seqs
            return
        self._unforgotten = []

    def count(self, key: CounterKey, n: int = 1) -> None:
        """Add ``n`` to a named counter."""
        with self._transaction() as db:
            self._add(db, key, n)

    @staticmethod
    def _add(db: sqlite3.Connection, key: CounterKey, n: int) -> None:
        db.execute(
            "INSERT INTO counters (kind, key, name, value) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (kind, key, name) DO UPDATE SET value = value + excluded.value",
            (*key, n),
        )

    # ... eviction

    def expire(self) -> None:
        """Evict predictions older than max_age_s (age >= max_age_s is expired)."""
        horizon = self._clock() - self.max_age_s
        # the common case (nothing to evict) is one index probe, without a write transaction
        if self._db.execute(
            "SELECT 1 FROM requests WHERE recorded_at <= ? LIMIT 1", (horizon,)
        ).fetchone():
            try:
                with self._transaction() as db:
                    self._expire(db)
            except StoreUnavailable:
                pass  # tried again on the next call; feedback still finds what it looks for

    def _expire(self, db: sqlite3.Connection) -> None:
        horizon = self._clock() - self.max_age_s
        self._evict(db, EVICTED_BY_AGE, "recorded_at <= ?", horizon)

    def _evict_over_size(self, db: sqlite3.Connection) -> None:
        excess = self.size - self.max_predictions
        if excess <= 0:
            return
        freed, last = 0, None
        for seq, images in db.execute("SELECT seq, images FROM requests ORDER BY seq"):
            freed, last = freed + images, seq
            if freed >= excess:
                break
        self._evict(db, EVICTED_BY_SIZE, "seq <= ?", last)

    def _evict(self, db: sqlite3.Connection, reason: str, where: str, value: float) -> None:
        """Move the requests matching ``where`` to the evicted ids, counting their images."""
        per_model = db.execute(
            f"SELECT model_name, SUM(images) FROM requests WHERE {where} GROUP BY model_name",
            (value,),
        ).fetchall()
        if not per_model:
            return
        db.execute(
            "DELETE FROM predictions WHERE request_id IN"
            f" (SELECT request_id FROM requests WHERE {where})",
            (value,),
        )
        db.execute(
            "INSERT OR REPLACE INTO evicted (request_id, model_name, reason)"
            f" SELECT request_id, model_name, ? FROM requests WHERE {where} ORDER BY seq",
            (reason, value),
        )
        db.execute(f"DELETE FROM requests WHERE {where}", (value,))
        n = sum(images for _, images in per_model)
        self.size -= n
        self.evicted[reason] += n
        self._add(db, (STORE_COUNTERS, "", f"evicted_{reason}"), n)
        remembered = db.execute("SELECT COUNT(*) FROM evicted").fetchone()[0]
        forget = remembered - self.evicted_ids_max
        if forget > 0:
            db.execute(
                "DELETE FROM evicted WHERE seq IN (SELECT seq FROM evicted ORDER BY seq LIMIT ?)",
                (forget,),
            )
            self.evicted_ids_forgotten += forget
            self._add(db, (STORE_COUNTERS, "", "evicted_ids_forgotten"), forget)
        if self._on_evict is not None:
            for model_name, images in per_model:
                self._on_evict(reason, model_name, images)

    # ... reads

    def lookup(self, request_id: str) -> Lookup:
        """Find a request id: found, expired (evicted, still remembered) or unknown."""
        try:
            return self._lookup(request_id)
        except STORAGE_ERRORS as exc:  # a disk that fails reads fails writes too
            raise self.health.failed(exc) from exc

    def _lookup(self, request_id: str) -> Lookup:
        self.expire()
        row = self._db.execute(
            "SELECT model_name, model_version, recorded_at FROM requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is not None:
            entry = StoredRequest(request_id, row[0], row[1], row[2], {})
            for index, class_id, score, label in self._db.execute(
                "SELECT image_index, class_id, score, label FROM predictions WHERE request_id = ?",
                (request_id,),
            ):
                entry.predictions[index] = (class_id, score)
                if label is not None:
                    entry.labels[index] = label
            return Lookup(FOUND, entry, entry.model_name)
        evicted = self._db.execute(
            "SELECT model_name, reason FROM evicted WHERE request_id = ?", (request_id,)
        ).fetchone()
        if evicted is not None:
            return Lookup(FEEDBACK_EXPIRED, None, evicted[0], evicted[1])
        return Lookup(FEEDBACK_UNKNOWN_ID)

    def counters(self, kind: str) -> dict[str, dict[str, int]]:
        """Counters of one kind: key -> name -> value."""
        out: dict[str, dict[str, int]] = {}
        for key, name, value in self._db.execute(
            "SELECT key, name, value FROM counters WHERE kind = ?", (kind,)
        ):
            out.setdefault(key, {})[name] = value
        return out

    def version_states(self) -> dict[VersionKey, dict]:
        """The last saved state of every model version."""
        rows = self._db.execute("SELECT model_name, model_version, state FROM version_state")
        return {(model, version): json.loads(state) for model, version, state in rows}

    def outcomes(self) -> Iterator[StoredOutcome]:
        """Outcomes still counted by a window, in arrival order."""
        for seq, rid, index, model, version, at, truth, predicted in self._db.execute(
            "SELECT seq, request_id, image_index, model_name, model_version, labelled_at, truth,"
            " predicted FROM outcomes ORDER BY seq"
        ).fetchall():
            yield StoredOutcome(seq, rid, index, model, version, Outcome(at, truth, predicted))

    def stats(self) -> dict[str, Any]:
        """Bounds, fill, eviction counts and where the data lives (part of the quality snapshot)."""
        remembered = self._db.execute("SELECT COUNT(*) FROM evicted").fetchone()[0]
        return {
            "requests": len(self),
            "predictions": self.size,
            "max_predictions": self.max_predictions,
            "max_age_s": self.max_age_s,
            "evicted_predictions": dict(self.evicted),
            "evicted_ids_remembered": remembered,
            "evicted_ids_max": self.evicted_ids_max,
            "evicted_ids_forgotten": self.evicted_ids_forgotten,
            "replaced_requests": self.replaced,
            "location": IN_MEMORY if self.path is None else str(self.path),
            **self.health.stats(),
        }

    def close(self) -> None:
        """Close the database (a clean close also folds the WAL back into the file)."""
        self._db.close()
