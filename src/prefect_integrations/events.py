"""Prefect events about instances, so users can build Automations on them.

Events are named ``integration.instance.<what>`` (``degraded``, ``recovered``, ...), with
the instance as the resource (``prefect-integrations.instance.<instance_id>``). Emitting
never fails the caller: without a reachable Prefect API the event is dropped with a
debug log line.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect_integrations.store.instances import Instance

__all__ = ["emit_instance_event", "instance_resource"]

_logger = logging.getLogger(__name__)


def instance_resource(instance: Instance) -> dict[str, str]:
    """The Prefect resource describing an instance."""
    return {
        "prefect.resource.id": f"prefect-integrations.instance.{instance.instance_id}",
        "prefect.resource.name": instance.name,
        "prefect-integrations.integration": instance.integration_id,
        "prefect-integrations.context": str(instance.scope),
    }


def emit_instance_event(event: str, instance: Instance, **payload: Any) -> None:
    """Emit one event about ``instance`` (no secrets in ``payload``)."""
    try:
        from prefect.events import emit_event

        emit_event(event=event, resource=instance_resource(instance), payload=payload)
    except Exception as exc:  # events are best effort; the audit log is the record
        _logger.debug(
            "Could not emit %s for %s: %s", event, instance.instance_id, type(exc).__name__
        )
