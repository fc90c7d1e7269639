"""Planned events: parsing, coverage, merging with Prophet's figure, and the file operators edit
live."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from serve_app.autoscaling.planned_events import (
    PlannedEventsFile,
    merge_forecast,
    parse_planned_events,
    planned_qps,
)

T0 = 1_763_000_000.0  # 2025-11-13T02:13:20Z


def iso(t: float, offset_h: int = 8) -> str:
    return datetime.fromtimestamp(t, timezone(timedelta(hours=offset_h))).isoformat()


SALE = {"name": "sale", "start": iso(T0 + 600), "end": iso(T0 + 1800), "qps": 500}


@pytest.mark.parametrize(
    "prophet, planned, expected",
    [
        (120.0, None, 120.0),  # no event covers the time: Prophet's figure
        (120.0, 500.0, 500.0),  # the event asks for more: max(120, 500)
        (620.0, 500.0, 620.0),  # Prophet already expects more: max(620, 500)
        (None, 500.0, 500.0),  # no Prophet model (too little history): the plan alone
        (None, None, None),  # nothing known: nothing published
    ],
)
def test_merge_takes_the_larger_known_figure(prophet, planned, expected):
    assert merge_forecast(prophet, planned) == expected


@pytest.mark.parametrize(
    "when, model, expected",
    [
        (T0 + 599, "m", None),  # a second before start
        (T0 + 600, "m", 500),  # start is inclusive
        (T0 + 1799, "m", 500),
        (T0 + 1800, "m", None),  # end is exclusive
        (T0 + 300, "other", 200),  # only the event naming `other` covers it
        (T0 + 300, "m", None),  # ... and it does not concern `m`
        (T0 + 1000, "other", 500),  # both cover it (the sale names no model): max(200, 500)
    ],
)
def test_planned_qps_inside_events_only(when, model, expected):
    events = parse_planned_events(
        json.dumps(
            [SALE, {"start": iso(T0), "end": iso(T0 + 3600, 0), "qps": 200, "models": ["other"]}]
        )
    )
    assert planned_qps(events, model, when) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("{name: x}", "expected a list"),
        (
            "[{start: '2026-01-01T09:00:00', end: '2026-01-01T10:00:00+08:00', qps: 5}]",
            "no UTC offset",
        ),
        (json.dumps([{**SALE, "end": SALE["start"]}]), "must be after start"),
        (json.dumps([SALE, {**SALE, "qps": -1}]), "event 1: qps"),
        (json.dumps([{**SALE, "qsp": 5}]), "qsp: Extra inputs are not permitted"),
        ("[{unclosed", "not valid YAML/JSON"),
    ],
)
def test_bad_planned_events_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_planned_events(text)


def test_empty_file_is_no_events():
    assert parse_planned_events("") == [] and parse_planned_events("[]") == []


def test_planned_events_file_follows_edits_and_keeps_the_last_good_plan(tmp_path, caplog):
    path = tmp_path / "events.yaml"
    planned = PlannedEventsFile(path)
    assert planned.read() == [] and "does not exist" in planned.error
    path.write_text(
        f"- name: sale\n  start: '{SALE['start']}'\n  end: '{SALE['end']}'\n  qps: 500\n"
    )
    assert [e.name for e in planned.read()] == ["sale"] and planned.error is None
    path.write_text("- name: [broken")
    with caplog.at_level("WARNING", logger="ray.serve"):
        for _ in range(3):
            assert [e.name for e in planned.read()] == [
                "sale"
            ]  # a typo does not cancel the promotion
    assert "ignored" in planned.error
    assert (
        sum("ignored" in r.getMessage() for r in caplog.records) == 1
    )  # logged once per change, not per read
    path.unlink()
    assert planned.read() == []  # a removed file removes the plan
