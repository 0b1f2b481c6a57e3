"""The process-wide runtime: settings, database, registry, keyring, clients.

Everything is built on first use (so ``--help`` or an import touches nothing) and shared
by the CLI, the Prefect block and the generated tasks of one process. One pooled
`IntegrationClient` is kept per instance, and resolutions are remembered by one
`~prefect_integrations.resolution_cache.ResolutionCache`, which PostgreSQL keeps honest.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import psycopg
from sqlalchemy.orm import Session

from prefect_integrations import logfilter
from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient
from prefect_integrations.client_factory import ClientFactory
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.definitions.checked import CHECKED_FOLDER
from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.keyring import Keyring, load_keyring
from prefect_integrations.resolution_cache import (
    ResolutionCache,
    ResolutionKey,
    listener_conninfo,
)
from prefect_integrations.resolve import resolve
from prefect_integrations.scope import Context
from prefect_integrations.settings import Settings, current_actor, get_settings
from prefect_integrations.store.notify import notify_instance_change
from prefect_integrations.store.usage import UsageRecorder

__all__ = ["Runtime", "reset_runtime", "runtime"]

_logger = logging.getLogger(__name__)


class Runtime:
    """What commands, blocks and tasks need, built lazily and shared.

    Building one installs the log filter that masks decrypted credentials in the HTTP
    libraries' log records (`prefect_integrations.logfilter.install`, idempotent), so
    every entry point that goes through the runtime (CLI, block, generated tasks,
    maintenance flows) has it before the first decryption.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        logfilter.install()
        if settings is not None:
            self.__dict__["settings"] = settings
        self._clients: dict[str, IntegrationClient] = {}
        self._lock = threading.Lock()
        self._cache: ResolutionCache | None = None
        self._closed = False
        self._uncached = False  # no listener can be built for the database URL

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
        return load_registry(
            self.settings.extra_definition_paths,
            checked_folder=self.settings.home / CHECKED_FOLDER,
        )

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

    @cached_property
    def clients(self) -> ClientFactory:
        """The one factory of clients, with this runtime's dependencies."""
        return ClientFactory(
            db=self.db,
            registry=self.registry,
            keyring=self.keyring,
            actor=self.actor,
            recorder=self.recorder,
        )

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

    @property
    def resolutions(self) -> ResolutionCache | None:
        """The cache of resolutions (its listener starts on first use).

        None once closed, and when no listener connection string can be built from the
        database URL (say, a query option of the driver that libpq does not know): then
        every call resolves afresh.
        """
        with self._lock:
            if self._cache is not None and self._cache.forked:
                self._cache = None  # inherited from the parent; its listener is not here
            if self._cache is None and not self._closed and not self._uncached:
                try:
                    conninfo = listener_conninfo(self.db.url)
                except (psycopg.Error, ValueError) as exc:  # never log the URL: a password
                    self._uncached = True
                    _logger.warning(
                        "Resolutions are not remembered: no listener connection can be "
                        "made from the database URL (%s; a query option libpq does not "
                        "know?)",
                        type(exc).__name__,
                    )
                    return None
                self._cache = ResolutionCache(conninfo)
            return self._cache

    def resolve(self, integration_id: str, context: Context, instance_id: str | None = None) -> str:
        """The instance id resolution chooses in ``context``.

        Remembered until the database announces a change of instances: an instance moved
        to another tenant, deactivated or deleted is out of reach as soon as the
        notification of that commit has reached this process (see `wait_for_changes`).
        Failures are never remembered; while the listener is down nothing is.
        """
        key: ResolutionKey = (integration_id, context, instance_id)
        cache = self.resolutions
        generation = None
        if cache is not None:
            generation = cache.generation  # read before the query: see ResolutionCache
            found = cache.get(key)
            if found is not None:
                return found
        with self.db.transaction(f"resolve an instance of '{integration_id}'") as session:
            chosen = resolve(session, integration_id, context, instance_id=instance_id)
        if cache is not None:
            cache.store(key, chosen.instance_id, generation)
        return chosen.instance_id

    def wait_for_changes(self, timeout: float = 10.0) -> bool:
        """Wait until every change of instances committed so far is seen by `resolve`.

        Sends a token through the notification channel after those commits and waits
        for the listener to receive it (notifications arrive in commit order). Returns
        True when done, or at once when nothing is remembered (the listener is not
        listening); False if the token did not arrive within ``timeout`` seconds.
        """
        cache = self._cache
        if cache is None:
            return True

        def send(token: str) -> None:
            with self.db.connect("wait for instance changes") as connection:
                notify_instance_change(connection, token)

        return cache.sync(send, timeout)

    def client(self, instance_id: str) -> IntegrationClient:
        """The shared synchronous client of one instance."""
        with self._lock:
            found = self._clients.get(instance_id)
            if found is None:
                found = self._clients[instance_id] = self.clients.sync(instance_id)
            return found

    def async_client(self, instance_id: str) -> AsyncIntegrationClient:
        """A new asynchronous client of one instance (bound to the running event loop)."""
        return self.clients.asynchronous(instance_id)

    def close(self) -> None:
        """Stop the listener, close clients, flush the audit queue, release connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            cache, self._cache, self._closed = self._cache, None, True
        if cache is not None:
            cache.close()
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
