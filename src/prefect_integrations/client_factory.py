"""One way to build the clients of instances: the dependencies they share, named once.

The runtime keeps one `ClientFactory`; maintenance code that calls methods is given one
explicitly. Every client it builds shares the database, registry, keyring, actor and the
usage recorder (the audit queue of method calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.keyring import Keyring
from prefect_integrations.store.usage import UsageRecorder

__all__ = ["ClientFactory"]


@dataclass(frozen=True, slots=True)
class ClientFactory:
    """Builds `IntegrationClient` and `AsyncIntegrationClient` with shared dependencies."""

    db: Database
    registry: Registry
    keyring: Keyring
    actor: str
    recorder: UsageRecorder

    def _keywords(self, options: dict[str, Any]) -> dict[str, Any]:
        shared = {
            "db": self.db,
            "registry": self.registry,
            "keyring": self.keyring,
            "actor": self.actor,
            "recorder": self.recorder,
        }
        return {**shared, **options}

    def sync(self, instance_id: str, **options: Any) -> IntegrationClient:
        """A new synchronous client of one instance (``options``: the client's keywords)."""
        return IntegrationClient(instance_id, **self._keywords(options))

    def asynchronous(self, instance_id: str, **options: Any) -> AsyncIntegrationClient:
        """A new asynchronous client of one instance (bound to the running event loop)."""
        return AsyncIntegrationClient(instance_id, **self._keywords(options))
