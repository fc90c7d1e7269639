"""The base of the application args' sections: unknown keys are refused.

Its own module so that config.py and the sections kept apart from it (overload_config.py,
quality_config.py, autoscaling/forecaster_config.py) share one definition without importing each
other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base: unknown keys are errors, so a typo in YAML never passes silently."""

    model_config = ConfigDict(extra="forbid")
