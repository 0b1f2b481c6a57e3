"""The maintenance flows: health checks, token refresh, credential rotation.

Each flow builds its dependencies from the process-wide runtime (database, registry,
keyring from ``PREFECT_INTEGRATIONS_*``) and hands them to the maintenance code
explicitly. Each first checks that its worker's settings match the store
(`worker_checks`): a worker fault fails the run with a message naming the setting and
changes no instance's status. Each takes no secret as a parameter, audits every
outcome, emits events on status changes, publishes a table artifact of what it did and
ends by publishing a signed checkpoint of the audit log (`checkpoints`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact, create_table_artifact

from prefect_integrations.maintenance.checkpoints import apublish_checkpoint, publish_checkpoint
from prefect_integrations.maintenance.health import HealthChecker
from prefect_integrations.maintenance.refresh import refresh_expiring
from prefect_integrations.maintenance.summaries import (
    credential_rotation_text,
    health_text,
    key_rotation_text,
    refresh_text,
)
from prefect_integrations.maintenance.worker_checks import check_worker, faults_fail_the_run
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.runtime import runtime

__all__ = ["SCHEDULES", "health_check", "refresh_tokens", "rotate_credentials"]

#: Default cron schedules of the deployments (UTC).
SCHEDULES = {
    "health-check": "*/15 * * * *",
    "refresh-tokens": "*/5 * * * *",
    "rotate-credentials": "30 3 * * *",
}


@flow(name="integration-health-check")
async def health_check(
    integrations: list[str] | None = None,
    instance_ids: list[str] | None = None,
    batch_size: int = 200,
    concurrency: int = 50,
    min_interval_seconds: float = 60.0,
) -> dict[str, Any]:
    """Check every due instance with its definition's healthCheck; update statuses."""
    rt = runtime()  # the checker checks this worker's settings first
    checker = HealthChecker(
        rt.db,
        rt.registry,
        rt.keyring,
        actor=rt.actor,
        batch_size=batch_size,
        concurrency=concurrency,
        min_interval=min_interval_seconds,
    )
    report = await checker.run(integrations=integrations, instance_ids=instance_ids)
    summary = report.summary()
    get_run_logger().info("Health check: %s", health_text(summary))
    await acreate_table_artifact(
        key="integration-health",
        table=[r.as_row() for r in report.results] or [{"instance": "(none due)"}],
        description=f"Instance health: {health_text(summary)}",
    )
    await apublish_checkpoint(rt.db, rt.keyring)
    return summary


@flow(name="integration-refresh-tokens")
def refresh_tokens(horizon_seconds: float = 900.0, workers: int = 8) -> dict[str, Any]:
    """Refresh OAuth2 tokens that expire within the horizon (one request per instance)."""
    rt = runtime()
    check_worker(rt.db, rt.registry, rt.keyring, flow="refresh-tokens", actor=rt.actor)
    lifecycle = TokenLifecycle(rt.db, rt.registry, rt.keyring, actor=rt.actor)
    with faults_fail_the_run(rt.db, flow="refresh-tokens", actor=rt.actor):
        report = refresh_expiring(rt.db, lifecycle, horizon=horizon_seconds, workers=workers)
    summary = report.summary()
    get_run_logger().info("Token refresh: %s", refresh_text(summary))
    create_table_artifact(
        key="integration-token-refresh",
        table=[
            {"instance": i, "result": r, "reason": report.failures.get(i, "")}
            for i, r in sorted(report.outcomes.items())
        ]
        or [{"instance": "(none due)"}],
        description=f"Token refresh (horizon {horizon_seconds:.0f} s): {refresh_text(summary)}",
    )
    publish_checkpoint(rt.db, rt.keyring)
    return summary


@flow(name="integration-rotate-credentials")
def rotate_credentials(batch_size: int = 5000, provider_rotation: bool = True) -> dict[str, Any]:
    """Re-encrypt credentials under the primary key; rotate provider credentials.

    Provider credentials are rotated only where the definition declares how.
    """
    from prefect_integrations.maintenance.credential_rotation import ProviderCredentialRotation
    from prefect_integrations.store.rekey import rotate_keys

    rt = runtime()
    logger = get_run_logger()
    check_worker(rt.db, rt.registry, rt.keyring, flow="rotate-credentials", actor=rt.actor)
    with faults_fail_the_run(rt.db, flow="rotate-credentials", actor=rt.actor):
        keys = rotate_keys(rt.db, rt.keyring, actor=rt.actor, batch_size=batch_size)
    logger.info("Key rotation: %s", key_rotation_text(keys.as_dict()))
    rows: list[dict[str, Any]] = [
        {"instance": i, "step": "encryption key", "result": "failed", "detail": reason}
        for i, reason in keys.failed
    ]
    provider: dict[str, Any] = {}
    if provider_rotation:
        with faults_fail_the_run(rt.db, flow="rotate-credentials", actor=rt.actor):
            results = ProviderCredentialRotation(
                rt.db, rt.registry, rt.keyring, clients=rt.clients
            ).run()
        provider = {k: v.result for k, v in results.items()}
        rows += [
            {"instance": i, "step": "provider credentials", "result": r.result, "detail": r.detail}
            for i, r in sorted(results.items())
        ]
    summary = {
        "keys": {
            "rotated": keys.rotated,
            "failed": dict(keys.failed),
            "before": keys.before,
            "after": keys.after,
            "verified": keys.verified,
        },
        "provider": provider,
    }
    create_table_artifact(
        key="integration-credential-rotation",
        table=rows or [{"instance": "(nothing to report)"}],
        description=f"Primary key '{rt.keyring.primary_id}'; {credential_rotation_text(summary)}",
    )
    logger.info("Credential rotation: %s", credential_rotation_text(summary))
    publish_checkpoint(rt.db, rt.keyring)
    return summary
