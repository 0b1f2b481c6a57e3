"""A cache of resolutions that PostgreSQL keeps honest (LISTEN/NOTIFY).

A trigger on ``integration_instances`` (migration 0004, recreated by 0005) sends a
notification on `INSTANCE_CHANGES_CHANNEL` when a transaction that can change a
resolution commits; the `ResolutionCache` listener thread forgets everything when one
arrives. The cache is only used while that listener is connected and listening;
otherwise every call resolves afresh. `prefect_integrations.runtime` owns one per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from prefect_integrations.scope import Context
from prefect_integrations.store.notify import INSTANCE_CHANGES_CHANNEL, listen

__all__ = [
    "INSTANCE_CHANGES_CHANNEL",
    "LISTENER_APPLICATION_NAME",
    "ResolutionCache",
    "ResolutionKey",
    "listener_conninfo",
]

LISTENER_APPLICATION_NAME = "prefect-integrations-listener"
"""The ``application_name`` of the listener's connection (visible in pg_stat_activity)."""

ResolutionKey = tuple[str, Context, str | None]

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
        self._entries: dict[ResolutionKey, tuple[float, str]] = {}
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

    def get(self, key: ResolutionKey) -> str | None:
        """The remembered instance id of ``key``, if the listener is listening."""
        with self._cond:
            found = self._entries.get(key) if self._serving() else None
            if found is None or time.monotonic() - found[0] >= self.max_age:
                return None
            return found[1]

    def store(self, key: ResolutionKey, instance_id: str, generation: int | None) -> bool:
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
                    listen(conn)
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
