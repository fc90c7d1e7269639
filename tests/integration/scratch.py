"""Short scratch folders under /tmp for the tests that start Ray (its unix socket paths must stay
under 107 bytes, too short for pytest's own temporary folders), removed when the tests are done."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


def scratch_dir(prefix: str) -> Path:
    """A fresh folder /tmp/<prefix>XXXXXXXX, readable by this user only."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def discard_unless_failed(session: pytest.Session, path: Path) -> None:
    """Remove `path` once what ran in it is stopped; keep it, logs included, when a test of the
    session failed, so the failure can be read from them."""
    if session.testsfailed:
        print(f"\nkept for the failed test's logs: {path}")
        return
    shutil.rmtree(path, ignore_errors=True)
