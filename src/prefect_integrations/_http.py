"""Small HTTP helpers shared by the client and the OAuth token endpoint."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

import httpx

__all__ = ["retry_after_seconds"]


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta or HTTP date).

    None when absent or unreadable: a malformed header is as good as none.
    """
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True, float("²") fails
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
