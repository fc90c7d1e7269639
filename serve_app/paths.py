"""Where the project's own files are, found from this package rather than the working directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
CONFIGS_DIR = REPO_ROOT / "configs"
