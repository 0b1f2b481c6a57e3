"""The process-wide runtime: settings, database, registry, keyring, clients.

Everything is built on first use (so ``--help`` or an import touches nothing) and shared
by the CLI, the Prefect block and the generated tasks of one process. One pooled
`IntegrationClient` is kept per instance.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from sqlalchemy.orm import Session

from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient
from prefect_integrations.db import Database
from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.keyring import Keyring, load_keyring
from prefect_integrations.registry import Registry, load_registry
from prefect_integrations.resolve import resolve
from prefect_integrations.scope import Context
from prefect_integrations.settings import Settings, current_actor, get_settings
from prefect_integrations.store.usage import UsageRecorder

__all__ = ["Runtime", "reset_runtime", "runtime"]


class Runtime:
    """What commands, blocks and tasks need, built lazily and shared."""

    def __init__(self, settings: Settings | None = None) -> None:
        if settings is not None:
            self.__dict__["settings"] = settings
        self._clients: dict[str, IntegrationClient] = {}
        self._lock = threading.Lock()

    @cached_property
    def settings(self) -> Settings:
        """The settings from the environment."""
        return get_settings()

    @cached_property
    def db(self) -> Database:
        """The configured database (the embedded cluster is started when needed)."""
        return Database.from_settings(self.settings)

    @cached_property
    def registry(self) -> Registry:
        """Shipped plus configured extra definitions."""
        return load_registry(self.settings.extra_definition_paths)

    @cached_property
    def keyring(self) -> Keyring:
        """The encryption keyring."""
        return load_keyring(self.settings)

    @cached_property
    def actor(self) -> str:
        """Who acts, for the audit log."""
        return current_actor(self.settings)

    @cached_property
    def recorder(self) -> UsageRecorder:
        """The audit queue of method calls."""
        return UsageRecorder(self.db)

    @contextmanager
    def transaction(self, operation: str) -> Iterator[Session]:
        """A session in one transaction."""
        with self.db.transaction(operation) as session:
            yield session

    def require_embedded(self, command: str) -> None:
        """Refuse commands that only make sense for the embedded cluster."""
        if not self.settings.embedded:
            raise ConfigurationError(
                f"`{command}` manages the embedded cluster, but "
                "PREFECT_INTEGRATIONS_DATABASE_URL points at another database"
            )

    def resolve(self, integration_id: str, context: Context, instance_id: str | None = None) -> str:
        """The instance id resolution chooses now, in ``context``.

        Never remembered: an instance moved to another tenant, deactivated or deleted is
        out of reach of the very next call (one indexed query per resolution).
        """
        with self.db.transaction(f"resolve an instance of '{integration_id}'") as session:
            return resolve(session, integration_id, context, instance_id=instance_id).instance_id

    def client(self, instance_id: str) -> IntegrationClient:
        """The shared synchronous client of one instance."""
        with self._lock:
            found = self._clients.get(instance_id)
            if found is None:
                found = self._clients[instance_id] = IntegrationClient(
                    instance_id,
                    db=self.db,
                    registry=self.registry,
                    keyring=self.keyring,
                    actor=self.actor,
                    recorder=self.recorder,
                )
            return found

    def async_client(self, instance_id: str) -> AsyncIntegrationClient:
        """A new asynchronous client of one instance (bound to the running event loop)."""
        return AsyncIntegrationClient(
            instance_id,
            db=self.db,
            registry=self.registry,
            keyring=self.keyring,
            actor=self.actor,
            recorder=self.recorder,
        )

    def close(self) -> None:
        """Close clients, flush the audit queue and release database connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        if "recorder" in self.__dict__:
            self.recorder.close()
        if "db" in self.__dict__:
            self.db.dispose()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process-wide `Runtime`."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


def reset_runtime() -> None:
    """Close and forget the process-wide runtime (e.g. after the environment changed)."""
    global _runtime
    with _runtime_lock:
        current, _runtime = _runtime, None
    if current is not None:
        current.close()
    get_settings.cache_clear()


atexit.register(reset_runtime)
