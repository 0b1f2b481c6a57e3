"""Prefect events about instances, so users can build Automations on them.

Events are named ``integration.instance.<what>`` (``degraded``, ``recovered``, ...), with
the instance as the resource (``prefect-integrations.instance.<instance_id>``). Emitting
never fails the caller: without a configured Prefect API (``PREFECT_API_URL``) or when
it cannot be reached, the event is dropped with a debug log line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_integrations.store.instance_model import Instance

__all__ = ["emit_event", "emit_instance_event", "instance_resource"]

_logger = logging.getLogger(__name__)


def instance_resource(instance: Instance) -> dict[str, str]:
    """The Prefect resource describing an instance."""
    return {
        "prefect.resource.id": f"prefect-integrations.instance.{instance.instance_id}",
        "prefect.resource.name": instance.name,
        "prefect-integrations.integration": instance.integration_id,
        "prefect-integrations.context": str(instance.scope),
    }


def emit_event(event: str, resource: dict[str, str], **payload: Any) -> None:
    """Emit one Prefect event (no secrets in ``payload``); never raises."""
    try:
        from prefect.events import emit_event as prefect_emit
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            # No Prefect API: emitting would start a temporary server just for this.
            _logger.debug("No PREFECT_API_URL: event %s not emitted", event)
            return
        prefect_emit(event=event, resource=resource, payload=payload)
    except Exception as exc:  # events are best effort; the audit log is the record
        _logger.debug(
            "Could not emit %s for %s: %s",
            event,
            resource.get("prefect.resource.id"),
            type(exc).__name__,
        )


def emit_instance_event(event: str, instance: Instance, **payload: Any) -> None:
    """Emit one event about ``instance`` (no secrets in ``payload``)."""
    emit_event(event, instance_resource(instance), **payload)
