"""Planned events: announced load (a promotion, a launch) that request-rate history cannot know
about.

Operators write them in a YAML or JSON list of `{name, start, end, qps, models}`; the Forecaster
re-reads the file at every publish and publishes, for each moment, the larger of Prophet's forecast
and the qps of an event covering it.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.validation import validation_problems

logger = logging.getLogger("ray.serve")


class PlannedEvent(BaseModel):
    """An announced period of load, e.g. a promotion: at least `qps` requests per second from start
    to end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="Shown in the status and the logs.")
    start: datetime = Field(..., description="ISO-8601 with an offset, inclusive.")
    end: datetime = Field(..., description="ISO-8601 with an offset, exclusive.")
    qps: float = Field(
        ..., ge=0, allow_inf_nan=False, description="Expected requests per second during the event."
    )
    models: list[str] | None = Field(
        None, description="model_name labels it applies to; empty: every forecast model."
    )

    @field_validator("start", "end")
    @classmethod
    def _has_offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{value.isoformat()} has no UTC offset: write e.g. 2026-11-11T09:00:00+08:00"
            )
        return value

    @model_validator(mode="after")
    def _ends_after_start(self) -> "PlannedEvent":
        if self.end <= self.start:
            raise ValueError(
                f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})"
            )
        return self

    def applies_to(self, model: str) -> bool:
        """Whether this event concerns `model`."""
        return not self.models or model in self.models

    def covers(self, when: float) -> bool:
        """Whether unix time `when` is inside [start, end)."""
        return self.start.timestamp() <= when < self.end.timestamp()


def parse_planned_events(text: str) -> list[PlannedEvent]:
    """Events from YAML or JSON text (a list; empty text is no events); ValueError naming each bad
    entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON: {exc}") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(
            f"expected a list of events ({{name, start, end, qps}}), got {type(raw).__name__}"
        )
    events, problems = [], []
    for index, item in enumerate(raw):
        try:
            events.append(PlannedEvent.model_validate(item))
        except ValidationError as exc:
            problems.append(f"event {index}: {validation_problems(exc, 'event')}")
    if problems:
        raise ValueError("; ".join(problems))
    return events


def planned_qps(events: list[PlannedEvent], model: str, when: float) -> float | None:
    """The largest qps of the events covering `when` for `model`; None when no event does."""
    covering = [e.qps for e in events if e.applies_to(model) and e.covers(when)]
    return max(covering) if covering else None


def merge_forecast(prophet: float | None, planned: float | None) -> float | None:
    """The published value: the larger of Prophet's forecast and the planned qps, whichever
    exist."""
    present = [v for v in (prophet, planned) if v is not None]
    return max(present) if present else None


class PlannedEventsFile:
    """Re-reads the planned-events file on every call; a bad or missing file is logged once per
    change.

    A file that stops parsing keeps the last good events in force (a typo while editing must not
    cancel an announced promotion); the status shows the error until the file is fixed.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.events: list[PlannedEvent] = []
        self.error: str | None = None
        self._last_text: str | None = None
        self._last_problem: str | None = None

    def read(self) -> list[PlannedEvent]:
        """The events now in force."""
        if self.path is None:
            return []
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self._problem(
                f"planned events file {self.path} does not exist: no planned events", clear=True
            )
            return self.events
        except OSError as exc:
            self._problem(
                f"planned events file {self.path} unreadable ({exc}); keeping {len(self.events)} "
                "event(s)"
            )
            return self.events
        if text == self._last_text:
            return self.events
        self._last_text = text
        try:
            self.events = parse_planned_events(text)
        except ValueError as exc:
            self._problem(
                f"planned events file {self.path} ignored: {exc}; keeping the last good "
                f"{len(self.events)} event(s)"
            )
            return self.events
        self.error = self._last_problem = None
        logger.info("forecaster: %d planned event(s) from %s", len(self.events), self.path)
        return self.events

    def _problem(self, message: str, clear: bool = False) -> None:
        if clear:
            self.events, self._last_text = [], None
        self.error = message
        if message != self._last_problem:  # once per change, not once per publish
            self._last_problem = message
            logger.warning("forecaster: %s", message)
