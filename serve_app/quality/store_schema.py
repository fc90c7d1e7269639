"""The tables of the quality store's SQLite file (store.py); SCHEMA_VERSION names this layout."""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,               -- insertion order: eviction takes the lowest first
    request_id TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    images INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_age ON requests (recorded_at);
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    class_id INTEGER NOT NULL,
    score REAL NOT NULL,
    label INTEGER,                         -- the joined true class id, NULL until feedback
    PRIMARY KEY (request_id, image_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evicted (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    model_name TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY,               -- arrival order of the labels
    request_id TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    labelled_at REAL NOT NULL,
    truth INTEGER NOT NULL,
    predicted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS version_state (
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,                   -- JSON: predictions recorded, confidence, drift
    PRIMARY KEY (model_name, model_version)
);
CREATE TABLE IF NOT EXISTS counters (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (kind, key, name)
);
"""
