"""Testing one instance's connection now, as Airflow's ``connections test`` does.

`check_connection` runs the instance's health check at once, outside the schedule, with
the same pipeline and the same status rules as the sweep: an instance that works again
becomes ``active`` at once, and the check is audited as every check is.
`check_connections` does the same for several instances (or all that are not
``inactive``) in one sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import InstanceUnavailable
from prefect_integrations.keyring import Keyring
from prefect_integrations.maintenance.health import HealthChecker, HealthReport, HealthResult
from prefect_integrations.store.instances import require_instance

__all__ = ["check_connection", "check_connections"]


def check_connection(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    instance_id: str,
    *,
    actor: str,
    timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HealthResult:
    """Check ``instance_id`` now with its definition's health check; record the status.

    `InstanceNotFound` for an unknown id; `InstanceUnavailable` for an ``inactive``
    instance (it is activated or connected first) and for one a maintenance run is
    checking at this moment.
    """
    with db.transaction(f"read instance '{instance_id}'") as session:
        instance = require_instance(session, instance_id)
    if instance.state == "inactive":
        raise InstanceUnavailable(
            f"Instance '{instance_id}' is inactive: connect it (`oauth connect`) or "
            "activate it (`instances update --status`) before testing it"
        )
    checker = HealthChecker(
        db,
        registry,
        keyring,
        actor=actor,
        batch_size=1,
        concurrency=1,
        timeout=timeout,
        min_interval=0.0,
        transport=transport,
    )
    # Prefect's bridge: runs the sweep here, or in a thread when a loop already runs
    report = run_coro_as_sync(checker.run(instance_ids=[instance_id]))
    if report is None or not report.results:
        raise InstanceUnavailable(
            f"Instance '{instance_id}' is being checked by a maintenance run; try again"
        )
    return report.results[0]


def check_connections(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    actor: str,
    instance_ids: Sequence[str] | None = None,
    integrations: Sequence[str] | None = None,
    on_batch: Callable[[list[HealthResult]], None] | None = None,
    concurrency: int = 10,
    timeout: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HealthReport:
    """Check these instances (default: every one not ``inactive``) now; record statuses.

    ``instance_ids`` must exist (`InstanceNotFound` otherwise); an ``inactive`` one is
    not checked, as the sweep never checks one. ``on_batch`` sees each batch's results.
    """
    if instance_ids:
        with db.transaction("read the instances to test") as session:
            for instance_id in instance_ids:
                require_instance(session, instance_id)
    checker = HealthChecker(
        db,
        registry,
        keyring,
        actor=actor,
        batch_size=50,
        concurrency=concurrency,
        timeout=timeout,
        min_interval=0.0,
        transport=transport,
    )
    report = run_coro_as_sync(
        checker.run(instance_ids=instance_ids, integrations=integrations, on_batch=on_batch)
    )
    assert report is not None
    return report
