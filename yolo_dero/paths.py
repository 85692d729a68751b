"""Where the project keeps generated data and Ultralytics' settings (never a user's global dirs),
and where its own model and data YAMLs are (:func:`shipped`)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def shipped(kind: str) -> Path:
    """The folder of the project's own YAMLs, ``kind`` = ``"cfg"`` (models) or ``"data"`` (datasets):
    ``<repo>/<kind>`` in a checkout, else ``<package>/<kind>``, where an installed wheel has them as package data
    (in the checkout ``yolo_dero/cfg`` and ``yolo_dero/data`` are links to the repository's folders)."""
    repo = REPO_ROOT / kind
    return repo if repo.is_dir() else PACKAGE_DIR / kind


def cache_dir() -> Path:
    """Root for built-in datasets and other generated files: ``$DERO_CACHE_DIR`` or ``<repo>/.cache``."""
    path = Path(os.environ.get("DERO_CACHE_DIR", REPO_ROOT / ".cache")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
