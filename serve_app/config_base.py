"""The base of every configuration section: unknown keys are refused.

Its own module so that config.py and the sections kept beside it (overload_config.py,
quality_config.py) share one definition without importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base: unknown keys are errors, so a typo in YAML never passes silently."""

    model_config = ConfigDict(extra="forbid")
