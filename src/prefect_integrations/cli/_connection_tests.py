"""What `instances test` prints: one line (or JSON object) per tested connection."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect_integrations.cli._common import echo, emit_json, runtime
from prefect_integrations.cli._progress import progress
from prefect_integrations.exceptions import InstanceNotFound
from prefect_integrations.maintenance.health_report import HealthResult
from prefect_integrations.store import instances as store

__all__ = ["PASSED", "check_many", "echo_result", "result_row"]


#: Results of a connection test that pass.
PASSED = ("ok", "not_applicable")


def check_many(
    instance_ids: list[str] | None, integrations: list[str] | None, *, as_json: bool
) -> list[HealthResult]:
    """Several instances (or all) in one sweep, with progress; one line (or row) each."""
    from prefect_integrations.maintenance.connection_check import check_connections

    rt = runtime()
    for integration_id in integrations or ():
        rt.registry.get(integration_id)  # an unknown one is an error, not "tested 0"
    with rt.db.transaction("count the instances to test") as session:
        found = store.list_instances(session)
    unknown = sorted(set(instance_ids or ()) - {i.instance_id for i in found})
    if unknown:  # before any progress line
        raise InstanceNotFound(unknown[0])
    testable = [
        i.instance_id
        for i in found
        if i.state != "inactive"
        and (not integrations or i.integration_id in integrations)
        and (not instance_ids or i.instance_id in instance_ids)
    ]
    with progress("testing connections", total=len(testable), enabled=not as_json) as advance:
        report = check_connections(
            rt.db,
            rt.registry,
            rt.keyring,
            actor=rt.actor,
            instance_ids=instance_ids,
            integrations=integrations,
            on_batch=lambda done: advance(len(done)),
        )
    results = sorted(report.results, key=lambda r: r.instance_id)
    skipped = sorted(set(instance_ids or ()) - {r.instance_id for r in results})
    if as_json:
        emit_json([result_row(r) for r in results])
        return results
    for result in results:
        echo_result(result)
    for instance_id in skipped:
        echo(
            f"{instance_id}: not tested (inactive, or being checked by a maintenance run)",
            one_line=True,
        )
    counts = Counter(r.reason for r in results)
    tally = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) or "nothing"
    echo(f"tested {len(results)} instance(s): {tally}", one_line=True)
    return results


def result_row(result: HealthResult) -> dict[str, Any]:
    """The JSON object of one tested connection."""
    return {
        "instanceId": result.instance_id,
        "integrationId": result.integration_id,
        "passed": result.reason in PASSED,
        "reason": result.reason,
        "statusCode": result.status_code,
        "durationMs": round(result.duration_ms, 1),
        "state": result.state_after,
        "previousState": result.state_before,
        "error": result.error,
    }


def echo_result(result: HealthResult) -> None:
    """One line per tested connection (its error on standard error when it failed).

    Every line is escaped to one line (`safe_text`): a line feed in a provider's error
    cannot forge another result line or the tally.
    """
    http = f"HTTP {result.status_code}, " if result.status_code is not None else ""
    moved = (
        f"; state {result.state_after} (was {result.state_before})"
        if result.state_after != result.state_before
        else f"; state {result.state_after}"
    )
    echo(
        f"{result.instance_id}: {result.reason} ({http}{result.duration_ms:.1f} ms){moved}",
        one_line=True,
    )
    if result.error and result.reason not in PASSED:
        # a provider's text: one line, so that it cannot pass for a result or the tally
        echo(f"error: {result.error}", err=True, one_line=True)
