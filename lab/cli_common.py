"""What the lab's commands share: the error exit, and reading a `--policy KEY=VALUE`."""

from __future__ import annotations

import sys
from typing import Any


def fail(message: str) -> int:
    """Print the error, return the exit status of a usage error."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def policy_setting(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` as (key, value), the value read as YAML (true, 0.9, a list)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--policy takes KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)
