"""Where the project keeps generated data and Ultralytics' settings (never a user's global dirs)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root for built-in datasets and other generated files: ``$DERO_CACHE_DIR`` or ``<repo>/.cache``."""
    path = Path(os.environ.get("DERO_CACHE_DIR", REPO_ROOT / ".cache")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
