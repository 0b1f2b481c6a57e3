"""Refreshing the tokens that expire soon, found with an indexed query.

The query uses the partial index on ``token_expires_at``; each candidate then goes
through `TokenLifecycle.refresh`, which decides with the token's own lead time and
guarantees one token request per instance even when several runs overlap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefect_integrations.db import Database
from prefect_integrations.exceptions import OAuthError
from prefect_integrations.oauth.lifecycle import RefreshOutcome, TokenLifecycle
from prefect_integrations.store.instances import expiring_instance_ids

__all__ = ["RefreshReport", "expiring_instances", "refresh_expiring"]


def expiring_instances(db: Database, *, horizon: float, limit: int = 100_000) -> list[str]:
    """Active instances whose token expires within ``horizon`` seconds, soonest first."""
    with db.transaction("find expiring tokens") as session:
        return expiring_instance_ids(session, horizon=horizon, limit=limit)


@dataclass(slots=True)
class RefreshReport:
    """What one `refresh_expiring` run did."""

    candidates: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "candidates": self.candidates,
            "results": dict(Counter(self.outcomes.values())),
            "failed": self.failures,
        }


def refresh_expiring(
    db: Database, lifecycle: TokenLifecycle, *, horizon: float = 900.0, workers: int = 8
) -> RefreshReport:
    """Refresh every token expiring within ``horizon`` seconds.

    One failure never stops the others.
    """
    ids = expiring_instances(db, horizon=horizon)
    report = RefreshReport(candidates=len(ids))
    for instance_id, outcome in zip(ids, lifecycle.refresh_many(ids, workers=workers), strict=True):
        if isinstance(outcome, RefreshOutcome):
            report.outcomes[instance_id] = outcome.result
        else:
            assert isinstance(outcome, OAuthError)
            report.outcomes[instance_id] = "failed"
            report.failures[instance_id] = outcome.reason
    return report
