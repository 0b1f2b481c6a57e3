"""What a health sweep found: one `HealthResult` per instance, the `HealthReport` of a sweep.

Also the status document a result leads to (`status_document`), written by
`prefect_integrations.maintenance.health`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefect_integrations.store.instances import Instance

__all__ = ["HealthReport", "HealthResult", "replace_result", "result_of", "status_document"]


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The check of one instance and the status it led to."""

    instance_id: str
    integration_id: str
    reason: str
    state_before: str
    state_after: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    outage: bool = False

    def as_row(self) -> dict[str, Any]:
        """A row of the health table artifact."""
        return {
            "instance": self.instance_id,
            "integration": self.integration_id,
            "state": self.state_after,
            "previous": self.state_before,
            "result": self.reason,
            "outage": "yes" if self.outage else "",
            "http": self.status_code or "",
            "ms": round(self.duration_ms, 1),
            "error": (self.error or "")[:200],
        }


@dataclass(slots=True)
class HealthReport:
    """What one sweep did."""

    run_id: str
    results: list[HealthResult] = field(default_factory=list)
    outages: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many instances ended in each result."""
        return dict(Counter(r.reason for r in self.results))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "run_id": self.run_id,
            "checked": len(self.results),
            "results": self.counts(),
            "outages": self.outages,
            "degraded": [
                r.instance_id
                for r in self.results
                if r.state_before != "error" and r.state_after == "error"
            ],
            "recovered": [
                r.instance_id
                for r in self.results
                if r.state_before == "error" and r.state_after == "active"
            ],
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


def result_of(
    instance: Instance,
    reason: str,
    started: float,
    *,
    error: str | None = None,
    status_code: int | None = None,
    keep: bool = False,
) -> HealthResult:
    """The result of one check that ended with ``reason`` (``keep``: the state stays)."""
    if reason == "ok":
        after = "active"
    elif keep:
        after = instance.state
    else:
        after = "error"
    return HealthResult(
        instance_id=instance.instance_id,
        integration_id=instance.integration_id,
        reason=reason,
        state_before=instance.state,
        state_after=after,
        status_code=status_code,
        error=error,
        duration_ms=(time.perf_counter() - started) * 1000,
    )


def replace_result(result: HealthResult, **changes: Any) -> HealthResult:
    """``result`` with some fields changed."""
    values = {name: getattr(result, name) for name in HealthResult.__slots__}
    values.update(changes)
    return HealthResult(**values)


def status_document(instance: Instance, result: HealthResult, checked_at: str) -> dict[str, Any]:
    """The status ``result`` gives ``instance`` (a kept state keeps its last error)."""
    if result.reason == "not_applicable":
        return {**instance.status, "lastChecked": checked_at}
    details: dict[str, Any] = {"reason": result.reason}
    if result.outage:
        details["outage"] = True
    if result.status_code is not None:
        details["status_code"] = result.status_code
    kept = result.outage or (result.reason != "ok" and result.state_after != "error")
    if kept:  # the check failed, but not in a way that says this instance is broken
        error = instance.status.get("error")
        details["last_error"] = (result.error or "")[:500]
    else:
        error = result.error if result.state_after == "error" else None
    return {
        "state": result.state_after,
        "lastChecked": checked_at,
        "error": error[:4000] if isinstance(error, str) else None,
        "details": details,
    }
