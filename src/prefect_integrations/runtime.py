"""The process-wide runtime: settings, database, registry, keyring, clients.

Everything is built on first use (so ``--help`` or an import touches nothing) and shared
by the CLI, the Prefect block and the generated tasks of one process. One pooled
`IntegrationClient` is kept per instance.

Resolutions are remembered by a `ResolutionCache` that the database keeps honest: a
trigger on ``integration_instances`` sends a notification on
`INSTANCE_CHANGES_CHANNEL` when a transaction that can change a resolution commits, and
a listener thread forgets everything when one arrives. The cache is only used while that
listener is connected and listening; otherwise every call resolves afresh.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.keyring import Keyring, load_keyring
from prefect_integrations.resolve import resolve
from prefect_integrations.scope import Context
from prefect_integrations.settings import Settings, current_actor, get_settings
from prefect_integrations.store.usage import UsageRecorder

__all__ = [
    "INSTANCE_CHANGES_CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "ResolutionCache",
    "Runtime",
    "listener_conninfo",
    "reset_runtime",
    "runtime",
]

INSTANCE_CHANGES_CHANNEL = "integration_instance_changes"
"""The channel the ``integration_instances`` trigger notifies (migration 0004)."""

LISTENER_APPLICATION_NAME = "prefect-integrations-listener"
"""The ``application_name`` of the listener's connection (visible in pg_stat_activity)."""

_ResolutionKey = tuple[str, Context, str | None]

_logger = logging.getLogger(__name__)


def listener_conninfo(url: str) -> str:
    """A libpq connection string for the database of a SQLAlchemy ``url``.

    Query parameters (such as ``host=/socket/dir`` of the embedded cluster) are kept and
    win over the URL's parts; the listener's application name and TCP keepalives are
    added so a dead peer is noticed while idle.
    """
    parsed = make_url(url)
    params: dict[str, str | int | None] = {
        "host": parsed.host,
        "port": parsed.port,
        "dbname": parsed.database,
        "user": parsed.username,
        "password": parsed.password,
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    for key, value in parsed.query.items():
        params[key] = ",".join(value) if isinstance(value, tuple) else value
    params["application_name"] = LISTENER_APPLICATION_NAME
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


class ResolutionCache:
    """Resolutions remembered until the database announces a change of instances.

    A daemon thread holds its own autocommit connection, runs ``LISTEN`` on
    `INSTANCE_CHANGES_CHANNEL` and, for every notification, bumps `generation` and
    forgets every entry. Entries are served and stored only while the listener is
    listening; when its connection fails everything is forgotten and the cache stays off
    (callers resolve afresh) until it has reconnected, with backoff, and listens again.

    A caller reads `generation` before its resolution query and passes it to `store`,
    which refuses the entry if a notification arrived meanwhile, so a result read before
    a change is never kept after it. A change is seen once its notification has reached
    this process; `sync` waits for that explicitly.
    """

    max_entries = 4096
    """Beyond this many entries the cache is emptied (contexts can be many)."""

    max_age = 60.0
    """Seconds an entry is served at most: a bound on staleness should notifications stop
    arriving without the connection failing (a silent network partition, or a proxy that
    does not support LISTEN, such as PgBouncer in transaction pooling mode)."""

    def __init__(self, conninfo: str, *, max_backoff: float = 5.0) -> None:
        self._conninfo = conninfo
        self._max_backoff = max_backoff
        self._cond = threading.Condition()
        self._entries: dict[_ResolutionKey, tuple[float, str]] = {}
        self._generation = 0
        self._listening = False
        self._pid = os.getpid()
        self._backend_pid: int | None = None
        self._epoch = 0  # counts changes of `_listening`
        self._tokens: dict[str, bool] = {}  # awaited token -> arrived
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name="prefect-integrations-listener", daemon=True
        )
        self._thread.start()

    @property
    def generation(self) -> int | None:
        """The current generation, or None while the listener is not listening."""
        with self._cond:
            return self._generation if self._serving() else None

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection, None while not listening."""
        with self._cond:
            return self._backend_pid if self._listening else None

    @property
    def forked(self) -> bool:
        """True in a forked child: the listener thread did not come along."""
        return os.getpid() != self._pid

    @property
    def thread(self) -> threading.Thread:
        """The listener thread."""
        return self._thread

    def get(self, key: _ResolutionKey) -> str | None:
        """The remembered instance id of ``key``, if the listener is listening."""
        with self._cond:
            found = self._entries.get(key) if self._serving() else None
            if found is None or time.monotonic() - found[0] >= self.max_age:
                return None
            return found[1]

    def store(self, key: _ResolutionKey, instance_id: str, generation: int | None) -> bool:
        """Remember ``instance_id`` unless a change was announced since ``generation``."""
        with self._cond:
            if generation is None or not self._serving() or generation != self._generation:
                return False
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic(), instance_id)
            return True

    def wait_until_listening(self, timeout: float) -> bool:
        """Wait until the listener listens; False after ``timeout`` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._listening or self._stopping, timeout)
            return self._serving()

    def sync(self, send: Callable[[str], None], timeout: float) -> bool:
        """Wait until every change committed before ``send`` is seen.

        ``send(token)`` must notify `INSTANCE_CHANGES_CHANNEL` with ``token`` as payload
        and commit. Notifications arrive in commit order, so once the token has arrived
        every change committed before it has been seen. True if it arrived, or the
        listener lost its connection meanwhile (which forgets everything), or the cache is
        off (nothing remembered can be stale); False after ``timeout`` seconds.
        """
        token = secrets.token_hex(16)
        with self._cond:
            if not self._serving():
                return True
            self._tokens[token] = False
            epoch = self._epoch
        try:
            send(token)
            with self._cond:
                return self._cond.wait_for(
                    lambda: self._tokens[token] or self._epoch != epoch, timeout
                )
        finally:
            with self._cond:
                del self._tokens[token]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener, close its connection and wait for the thread to end."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else it still selects on them; the GC closes them
            self._wake_w.close()
            self._wake_r.close()

    def _serving(self) -> bool:
        return self._listening and not self.forked

    def _announce(self, payload: str) -> None:
        with self._cond:
            if payload:  # a token of `sync`, not a change
                if payload in self._tokens:
                    self._tokens[payload] = True
            else:
                self._generation += 1
                self._entries.clear()
            self._cond.notify_all()

    def _set_listening(self, listening: bool, pid: int | None = None) -> None:
        with self._cond:
            self._generation += 1
            self._entries.clear()
            self._listening = listening
            self._backend_pid = pid
            self._epoch += 1
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 0.1
        failing = False  # a failure was logged since the listener last listened
        while not self._stopping:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {INSTANCE_CHANGES_CHANNEL}")
                    self._set_listening(True, conn.info.backend_pid)
                    backoff = 0.1
                    failing = False
                    self._listen(conn)
            except Exception as exc:  # the thread must never die; never log the conninfo
                if not self._stopping:
                    _logger.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "The instance-change listener failed (%s); resolutions are not "
                        "remembered until it listens again",
                        type(exc).__name__,
                    )
                    failing = True
            finally:
                self._set_listening(False)
            if not self._stopping:
                self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        # selectors, not select.select: that fails for descriptors of 1024 and above.
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ, "conn")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping:
                ready = {key.data for key, _ in selector.select()}
                if "wake" in ready:
                    self._drain_wake()
                if "conn" in ready:
                    for notify in conn.notifies(timeout=0):
                        self._announce(notify.payload)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping and (left := deadline - time.monotonic()) > 0:
                selector.select(left)
                self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(64):
                pass


class Runtime:
    """What commands, blocks and tasks need, built lazily and shared."""

    def __init__(self, settings: Settings | None = None) -> None:
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
        key: _ResolutionKey = (integration_id, context, instance_id)
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
                connection.execute(
                    sa.text("SELECT pg_notify(:channel, :token)"),
                    {"channel": INSTANCE_CHANGES_CHANNEL, "token": token},
                )

        return cache.sync(send, timeout)

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
