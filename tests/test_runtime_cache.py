"""The resolution cache of `Runtime`, kept honest by PostgreSQL LISTEN/NOTIFY.

Everything runs against the per-test database: changes are committed by another
connection (as an admin would), the trigger of migration 0004 notifies, and the listener
thread of the runtime forgets what it remembered. Resolution queries are counted with a
``before_cursor_execute`` listener on the runtime's engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import InstanceNotFound, InstanceUnavailable, NoInstanceFound
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import RUNTIME_ROLE
from prefect_integrations.resolution_cache import (
    LISTENER_APPLICATION_NAME,
    ResolutionCache,
    listener_conninfo,
)
from prefect_integrations.runtime import Runtime, reset_runtime, runtime
from prefect_integrations.scope import Context, Scope
from prefect_integrations.store import instances

from .factories import make_echo
from .provider import FakeProvider

ACME = Context(client_id="acme")
BOUND = 20.0  # seconds; a bound on waiting for the listener, never a measured time


def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition another thread or process brings about."""
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def counted(rt: Runtime) -> Iterator[list[str]]:
    """The SQL statements the runtime's engine sends while the block runs."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(rt.db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(rt.db.engine, "before_cursor_execute", record)


def _cache(rt: Runtime) -> ResolutionCache:
    cache = rt.resolutions
    assert cache is not None
    assert cache.wait_until_listening(BOUND)
    return cache


def _warm(rt: Runtime, context: Context = ACME, explicit: str | None = None) -> str:
    """Resolve until the answer is remembered, and prove the next call sends no query."""
    _cache(rt)
    chosen = rt.resolve("echo", context, explicit)
    with counted(rt) as statements:
        assert rt.resolve("echo", context, explicit) == chosen
    assert statements == []
    return chosen


# A state change and its undoing in one transaction: it notifies, and changes nothing.
TOGGLE_STATE = (
    "UPDATE integration_instances SET status = jsonb_set(status, '{state}', '\"error\"') "
    "|| jsonb_build_object('was', status->'state') {where}",
    "UPDATE integration_instances SET status = jsonb_set(status - 'was', '{state}', "
    "status->'was') {where}",
)


def _toggle_state(s: Any, where: str = "") -> None:
    for statement in TOGGLE_STATE:
        s.execute(sa.text(statement.replace("{where}", where)))


_LOGGERS = ("prefect_integrations.runtime", "prefect_integrations.resolution_cache")


def _runtime_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the runtime and its resolution cache logged."""
    return [r for r in caplog.records if r.name in _LOGGERS]


def _listeners(db: Database) -> list[int]:
    with db.transaction() as s:
        return list(
            s.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name "
                    "AND datname = current_database()"
                ),
                {"name": LISTENER_APPLICATION_NAME},
            ).scalars()
        )


@pytest.fixture
def echo_acme(
    env: None, echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> Database:
    """A global echo instance and one of client acme, committed; the runtime is fresh."""
    make_echo(echo_db, echo_registry, keyring, provider.url, "echo_global")
    make_echo(
        echo_db, echo_registry, keyring, provider.url, "echo_acme", scope=Scope("client", "acme")
    )
    return echo_db


def test_conninfo_keeps_socket_host_and_names_the_listener(cluster: EmbeddedCluster) -> None:
    embedded = conninfo_to_dict(listener_conninfo(cluster.url(database="d1", user="u1")))
    assert embedded["host"] == str(cluster.socket_dir)
    assert embedded["dbname"] == "d1" and embedded["user"] == "u1"
    assert embedded["application_name"] == LISTENER_APPLICATION_NAME
    tcp = conninfo_to_dict(listener_conninfo("postgresql://me:p%40ss@db.example:6543/prod"))
    assert (tcp["host"], tcp["port"], tcp["user"], tcp["password"], tcp["dbname"]) == (
        "db.example",
        "6543",
        "me",
        "p@ss",
        "prod",
    )


def test_a_remembered_resolution_sends_no_query(echo_acme: Database) -> None:
    rt = runtime()
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements, "the first resolution queries the database"
    assert _warm(rt) == "echo_acme"
    assert _warm(rt, Context()) == "echo_global"
    assert _warm(rt, ACME, "echo_global") == "echo_global"
    assert len(_listeners(echo_acme)) == 1


def _move(db: Database, registry: Registry, keyring: Keyring, url: str) -> None:
    with db.transaction() as s:
        instances.update_instance(
            s, registry, "echo_acme", scope=Scope("client", "beta"), actor="tests"
        )


def _deactivate(db: Database, registry: Registry, keyring: Keyring, url: str) -> None:
    with db.transaction() as s:
        instances.update_instance(s, registry, "echo_acme", status={"state": "inactive"}, actor="t")


def _delete(db: Database, registry: Registry, keyring: Keyring, url: str) -> None:
    with db.transaction() as s:
        instances.delete_instance(s, "echo_acme", actor="tests")


def _more_specific(db: Database, registry: Registry, keyring: Keyring, url: str) -> None:
    make_echo(db, registry, keyring, url, "echo_alice", scope=Scope("user", "alice"))


# change -> what naming the changed instance explicitly raises afterwards
CHANGES = {
    "move": (_move, InstanceNotFound),
    "deactivate": (_deactivate, InstanceUnavailable),
    "delete": (_delete, InstanceNotFound),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_is_seen_by_the_next_resolve_once_notified(
    echo_acme: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    change: str,
) -> None:
    rt = runtime()
    assert _warm(rt) == "echo_acme"
    assert _warm(rt, ACME, "echo_acme") == "echo_acme"
    cache = _cache(rt)
    before = cache.generation
    apply, explicit_error = CHANGES[change]
    apply(echo_acme, echo_registry, keyring, provider.url)
    assert rt.wait_for_changes(BOUND)
    after = cache.generation
    assert before is not None and after is not None and after > before
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_global"  # acme's own is out of reach
        with pytest.raises(explicit_error):
            rt.resolve("echo", ACME, "echo_acme")
    assert len(statements) == 2


def test_a_more_specific_instance_wins_once_notified(
    echo_acme: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    rt = runtime()
    alice = Context(client_id="acme", user_id="alice")
    assert _warm(rt, alice) == "echo_acme"
    _more_specific(echo_acme, echo_registry, keyring, provider.url)
    assert rt.wait_for_changes(BOUND)
    assert rt.resolve("echo", alice) == "echo_alice"


def test_usage_columns_do_not_forget_resolutions(echo_acme: Database) -> None:
    """Only columns resolution reads notify: recording use keeps the cache warm."""
    rt = runtime()
    _warm(rt)
    cache = _cache(rt)
    before = cache.generation
    with echo_acme.transaction() as s:
        s.execute(sa.text("UPDATE integration_instances SET last_used_at = now(), name = 'x'"))
    assert rt.wait_for_changes(BOUND)
    assert cache.generation == before
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements == []


def test_status_writes_keeping_the_state_do_not_forget_resolutions(echo_acme: Database) -> None:
    """Health checks and OAuth refreshes rewrite status active -> active: no notification.
    A change of the state does notify."""
    rt = runtime()
    _warm(rt)
    cache = _cache(rt)
    before = cache.generation
    with echo_acme.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET last_checked_at = now(), status = status "
                "|| jsonb_build_object('error', 'timed out', 'checked_at', now()::text)"
            )
        )
    assert rt.wait_for_changes(BOUND)
    assert cache.generation == before
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements == []

    with echo_acme.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET status = jsonb_set(status, '{state}', "
                "'\"inactive\"') WHERE instance_id = 'echo_acme'"
            )
        )
    assert rt.wait_for_changes(BOUND)
    after = cache.generation
    assert before is not None and after is not None and after > before
    assert rt.resolve("echo", ACME) == "echo_global"


def test_an_unknown_query_option_of_the_url_resolves_uncached(
    echo_acme: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver option libpq does not know: no listener, one warning, resolve still works.

    The URL is swapped in after the engine was built: SQLAlchemy hands query options to
    psycopg.connect as strings, which this test does not mean to exercise.
    """
    url = (
        make_url(echo_acme.url)
        .set(password="pi-s3cret")
        .update_query_dict({"prepare_threshold": "0"})
        .render_as_string(hide_password=False)
    )
    reset_runtime()
    for name in _LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    try:
        rt = runtime()
        rt.__dict__["db"] = dataclasses.replace(rt.db, url=url)
        for _ in range(2):
            with counted(rt) as statements:
                assert rt.resolve("echo", ACME) == "echo_acme"
                assert rt.resolve("echo", ACME, "echo_global") == "echo_global"
            assert len(statements) >= 2, "nothing is remembered: every call queries"
        assert rt.resolutions is None
        assert rt.wait_for_changes(BOUND)
        [record] = _runtime_records(caplog)
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "ProgrammingError" in message
        assert "pi-s3cret" not in message and echo_acme.url not in message
    finally:
        reset_runtime()


def test_failures_are_never_remembered(
    echo_acme: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    rt = runtime()
    _cache(rt)
    nobody = Context(client_id="acme")
    for _ in range(2):
        with counted(rt) as statements, pytest.raises(NoInstanceFound):
            rt.resolve("echo_v2", nobody)
        assert statements, "a failure is resolved afresh every time"
        with counted(rt) as statements, pytest.raises(InstanceNotFound):
            rt.resolve("echo", nobody, "echo_missing")
        assert statements


def test_the_move_is_seen_by_the_next_task_call_once_waited_for(
    echo_acme: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    """The task path (`call_method`) resolves through the same cache."""
    from prefect_integrations.context import integration_context
    from prefect_integrations.tasks import call_method

    from .provider import Reply

    provider.reply("GET", "/echo_acme/items/1", Reply(200, {"id": 1, "name": "echo_acme"}))
    with integration_context(client_id="acme"):
        for _ in range(2):
            assert call_method("echo", "get_item", {"item_id": 1})["name"] == "echo_acme"
        _move(echo_acme, echo_registry, keyring, provider.url)
        assert runtime().wait_for_changes(BOUND)
        with pytest.raises(InstanceNotFound):
            call_method("echo", "get_item", {"item_id": 1}, "echo_acme")
    assert len(provider.requests) == 2


def test_a_change_during_the_query_is_not_remembered(echo_acme: Database) -> None:
    """The generation is read before the query; a notification meanwhile refuses the store."""
    rt = runtime()
    cache = _cache(rt)
    fired = threading.Event()

    def change_now(*args: Any) -> None:
        if fired.is_set() or "integration_instances" not in args[2]:
            return
        fired.set()
        before = cache.generation
        with echo_acme.transaction() as s:  # another connection, committed mid-resolution
            _toggle_state(s)
        _until(lambda: cache.generation != before, "the notification")

    sa.event.listen(rt.db.engine, "before_cursor_execute", change_now)
    try:
        assert rt.resolve("echo", ACME) == "echo_acme"
    finally:
        sa.event.remove(rt.db.engine, "before_cursor_execute", change_now)
    assert fired.is_set()
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements, "the result read while a change was announced was not kept"
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements == []  # a quiet query is kept


def test_a_lost_listener_turns_the_cache_off_until_it_is_back(
    echo_acme: Database,
    cluster: EmbeddedCluster,
    database_name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Killed listener: nothing is served from memory while it cannot listen; after it
    reconnects (backoff) the cache starts empty and works again."""
    role = "pi_cache_listener_test"
    password = secrets.token_urlsafe(24)
    with echo_acme.transaction() as s:
        s.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        s.execute(sa.text(f"CREATE ROLE {role} LOGIN IN ROLE {RUNTIME_ROLE}"))
        s.execute(sa.text(f"ALTER ROLE {role} PASSWORD '{password}'"))
    passfile = tmp_path / f"{role}.pgpass"  # every role of the cluster logs in with a password
    passfile.write_text(f"*:*:*:{role}:{password}\n")
    passfile.chmod(0o600)
    url = cluster.url(database=database_name, user=role)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DATABASE_URL", f"{url}&passfile={passfile}")
    reset_runtime()
    try:
        rt = runtime()
        _warm(rt)
        cache = _cache(rt)
        [pid] = _listeners(echo_acme)
        assert pid == cache.backend_pid
        with echo_acme.transaction() as s:
            s.execute(sa.text(f"ALTER ROLE {role} NOLOGIN"))  # it cannot come back yet
            assert s.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        _until(lambda: cache.generation is None, "the listener to notice")
        for _ in range(2):
            with counted(rt) as statements:
                assert rt.resolve("echo", ACME) == "echo_acme"
            assert statements, "while the listener is down every call queries"
        assert rt.wait_for_changes(BOUND)  # nothing remembered: nothing to wait for

        with echo_acme.transaction() as s:
            s.execute(sa.text(f"ALTER ROLE {role} LOGIN"))
        assert cache.wait_until_listening(BOUND)
        assert cache.backend_pid not in (None, pid)
        assert _listeners(echo_acme) == [cache.backend_pid]
        assert _warm(rt) == "echo_acme"
        assert rt.wait_for_changes(BOUND)  # the runtime role may send the token
    finally:
        reset_runtime()
        with echo_acme.transaction() as s:
            s.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))


def test_close_stops_the_listener(echo_acme: Database) -> None:
    rt = runtime()
    _warm(rt)
    cache = _cache(rt)
    assert cache.thread.is_alive() and cache.thread.daemon
    reset_runtime()
    assert not cache.thread.is_alive()
    assert cache.generation is None
    _until(lambda: not _listeners(echo_acme), "the listener's backend to exit")
    # a closed runtime still resolves, afresh, and starts no listener again
    assert rt.resolutions is None
    assert rt.resolve("echo", ACME) == "echo_acme"
    assert not [t for t in threading.enumerate() if t.name == cache.thread.name]


def test_an_unreachable_database_leaves_the_cache_off(
    cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    for name in _LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    cache = ResolutionCache(
        listener_conninfo(cluster.url(database="pi_no_such_database")), max_backoff=0.05
    )
    try:
        assert not cache.wait_until_listening(0.3)
        assert cache.generation is None
        key = ("echo", ACME, None)
        assert not cache.store(key, "echo_acme", 0)
        assert cache.get(key) is None
        _until(lambda: len(_runtime_records(caplog)) >= 3, "repeated failures")
    finally:
        cache.close()
    assert not cache.thread.is_alive()
    records = _runtime_records(caplog)
    # one warning, then debug while it keeps failing; never the connection string
    assert [r.levelno for r in records[:3]] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    for record in records:
        assert "OperationalError" in record.getMessage()
        assert "pi_no_such_database" not in record.getMessage()
        assert str(cluster.socket_dir) not in record.getMessage()


def test_an_unexpected_error_does_not_end_the_listener(
    echo_acme: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in _LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    calls: list[int] = []
    listen = ResolutionCache._listen

    def flaky(self: ResolutionCache, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug, with the conninfo in its text")
        listen(self, conn)

    monkeypatch.setattr(ResolutionCache, "_listen", flaky)
    cache = ResolutionCache(listener_conninfo(echo_acme.url), max_backoff=0.05)
    try:
        _until(lambda: len(calls) >= 2 and cache.generation is not None, "it to listen again")
        assert cache.thread.is_alive()
    finally:
        cache.close()
    assert not cache.thread.is_alive()
    [record] = _runtime_records(caplog)
    assert record.levelno == logging.WARNING
    assert "RuntimeError" in record.getMessage() and "conninfo" not in record.getMessage()


def test_the_listener_works_with_descriptors_above_1023(echo_acme: Database) -> None:
    """select.select refuses descriptors >= FD_SETSIZE (1024); the selectors do not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    fillers: list[int] = []
    cache: ResolutionCache | None = None
    try:
        while not fillers or fillers[-1] < 1024:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        cache = ResolutionCache(listener_conninfo(echo_acme.url), max_backoff=0.05)
        assert cache._wake_r.fileno() >= 1024
        assert cache.wait_until_listening(BOUND)
        before = cache.generation
        assert before is not None
        with echo_acme.transaction() as s:
            s.execute(sa.text("SELECT pg_notify('integration_instance_changes', '')"))
        _until(lambda: cache is not None and cache.generation != before, "the notification")
        assert cache.generation is not None
        started = time.monotonic()
        cache.close()
        assert time.monotonic() - started < BOUND / 2
        assert not cache.thread.is_alive()
    finally:
        if cache is not None:
            cache.close()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_trigger_notifies_once_per_transaction(echo_acme: Database) -> None:
    with psycopg.connect(
        listener_conninfo(echo_acme.url), autocommit=True
    ) as conn:  # a plain listener, as another process would hold
        conn.execute("LISTEN integration_instance_changes")
        with echo_acme.transaction() as s:
            _toggle_state(s)
            s.execute(sa.text("UPDATE integration_instances SET context_id = context_id || '~'"))
        received = list(conn.notifies(timeout=BOUND, stop_after=1))
        received += list(conn.notifies(timeout=0.2))
        with echo_acme.transaction() as s:  # rewrites of what resolution reads: no change
            s.execute(
                sa.text(
                    "UPDATE integration_instances SET status = status, context_id = context_id, "
                    "context_type = context_type, "
                    "integration_definition_id = integration_definition_id"
                )
            )
        received += list(conn.notifies(timeout=0.2))
    assert [(n.channel, n.payload) for n in received] == [("integration_instance_changes", "")]


def test_both_roles_still_write_and_their_writes_notify(
    echo_acme: Database, admin_db: Database, runtime_db: Database
) -> None:
    """The trigger needs no privilege the admin and runtime roles lack."""
    with psycopg.connect(listener_conninfo(runtime_db.url), autocommit=True) as conn:
        conn.execute("LISTEN integration_instance_changes")
        with runtime_db.transaction() as s:  # the runtime role: status only
            _toggle_state(s, "WHERE instance_id = 'echo_acme'")
        assert len(list(conn.notifies(timeout=BOUND, stop_after=1))) == 1
        with admin_db.transaction() as s:  # the admin role: delete
            s.execute(sa.text("DELETE FROM integration_instances WHERE instance_id = 'echo_acme'"))
        assert len(list(conn.notifies(timeout=BOUND, stop_after=1))) == 1


def test_an_entry_is_served_at_most_max_age_seconds(
    echo_acme: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bound on staleness should notifications stop arriving without an error."""
    rt = runtime()
    cache = _cache(rt)
    assert _warm(rt) == "echo_acme"
    monkeypatch.setattr(cache, "max_age", 0.0)
    with counted(rt) as statements:
        assert rt.resolve("echo", ACME) == "echo_acme"
    assert statements, "an entry older than max_age is resolved afresh"
