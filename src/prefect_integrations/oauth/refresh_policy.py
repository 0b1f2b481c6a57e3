"""When an OAuth2 token should be refreshed: pure decisions, no I/O and no clock.

Refresh when there is no access token, or when the token is within its lead time of
expiry: a share of its lifetime, at least a floor, but never more than half the lifetime.
The cap matters for short-lived tokens: with a 4-second token and a 60-second floor, a
new token would be due the moment it arrives and every call would refresh again; capped,
it is used for the first half of its life.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect_integrations.credentials import Credentials, epoch_or_none, oauth2_section

__all__ = [
    "LEAD_FLOOR",
    "LEAD_SHARE",
    "RefreshDecision",
    "grant_type_can_refresh",
    "refresh_due",
    "should_refresh",
]

LEAD_SHARE = 0.1
LEAD_FLOOR = 60.0


@dataclass(frozen=True, slots=True)
class RefreshDecision:
    """Whether to refresh now, and why."""

    refresh: bool
    reason: str


def refresh_due(
    values: Mapping[str, Any], *, share: float = LEAD_SHARE, floor: float = LEAD_FLOOR
) -> float | None:
    """When the token enters its lead time (epoch seconds); None without an expiry.

    ``values`` are plain spec-shaped credentials; the times are read from the ``oauth2``
    section (ISO 8601, or epoch seconds). That is ``expires_at`` less a share of the
    token's lifetime, at least ``floor``, at most half the lifetime (``floor`` alone when
    the lifetime is unknown).
    """
    section = oauth2_section(values)
    expires_at = epoch_or_none(section.get("expires_at"))
    if expires_at is None:
        return None
    obtained_at = epoch_or_none(section.get("obtained_at"))
    if obtained_at is None or expires_at <= obtained_at:
        return expires_at - floor  # lifetime unknown
    lifetime = expires_at - obtained_at
    return expires_at - min(max(floor, share * lifetime), lifetime / 2)


def should_refresh(
    values: Mapping[str, Any],
    *,
    now: float,
    grant_type: str = "authorization_code",
    share: float = LEAD_SHARE,
    floor: float = LEAD_FLOOR,
) -> RefreshDecision:
    """Decide from plain spec-shaped credential values (pure: no I/O, no clock)."""
    section = oauth2_section(values)
    can_refresh = grant_type == "client_credentials" or bool(section.get("refresh_token"))
    if not section.get("access_token"):
        if can_refresh:
            return RefreshDecision(True, "no_access_token")
        return RefreshDecision(False, "not_connected")
    expires_at = epoch_or_none(section.get("expires_at"))
    due = refresh_due(values, share=share, floor=floor)
    if due is None or expires_at is None:
        return RefreshDecision(False, "no_expiry")
    if now < due:
        return RefreshDecision(False, "fresh")
    if not can_refresh:
        return RefreshDecision(False, "expiring_without_refresh_token")
    return RefreshDecision(True, "expired" if now >= expires_at else "expiring")


def grant_type_can_refresh(creds: Credentials, grant: str) -> bool:
    """True when a forced refresh is possible (a refresh token, or client credentials)."""
    return grant == "client_credentials" or creds.secret("oauth2", "refresh_token") is not None
