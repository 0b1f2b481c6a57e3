"""Testing one instance's connection now, as Airflow's ``connections test`` does.

`check_connection` runs the instance's health check at once, outside the schedule, with
the same pipeline and the same status rules as the sweep: an instance that works again
becomes ``active`` at once, and the check is audited as every check is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import InstanceUnavailable
from prefect_integrations.keyring import Keyring
from prefect_integrations.maintenance.health import HealthChecker, HealthResult
from prefect_integrations.store.instances import require_instance

__all__ = ["check_connection"]

_T = TypeVar("_T")


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion, in a thread of its own inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="connection-test")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


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
    report = _run(checker.run(instance_ids=[instance_id]))
    if not report.results:
        raise InstanceUnavailable(
            f"Instance '{instance_id}' is being checked by a maintenance run; try again"
        )
    return report.results[0]
