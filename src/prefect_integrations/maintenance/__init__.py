"""Per-instance maintenance: health checks, token refresh, key and credential rotation."""

from __future__ import annotations
