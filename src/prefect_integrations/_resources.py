"""Locate the data shipped with the package: definitions and migrations.

In a wheel they live in ``prefect_integrations/_bundled/``; in a source checkout
(editable install) they are the top-level ``definitions/`` and ``migrations/`` folders.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_path"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_path(name: str) -> Path:
    """Return the folder of shipped data called ``name`` (``definitions`` or ``migrations``)."""
    packaged = _PACKAGE_DIR / "_bundled" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent.parent / name
