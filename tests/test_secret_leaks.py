"""Secret canaries: one unique secret per credential kind, every path, every sink, zero hits.

Each credential kind (API key in a header and in the query string, OAuth2 access and
refresh tokens and client secret, custom HMAC secret and basic password, provider-rotated
keys) and each data-encryption key of the keyring gets its own random canary. The test
then runs every path that touches them (successful and failing calls from tasks, the
client, blocks and the CLI; providers that echo the secret back; transport errors; token
refresh that succeeds, fails with an echo, or is refused; the health, refresh and rotation
flows; key rotation) and scans every sink a secret could leak into: Prefect logs, flow-run
and task-run states, artifacts, events and block documents read back through the Prefect
API, result storage, every audit row and every other database row, CLI output, the
PostgreSQL server log written with ``log_statement = all``, the text of every exception
raised (with its chain and traceback) and Python log records at DEBUG.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, quote, quote_plus, urlsplit
from uuid import uuid4

import psycopg
import pytest
import sqlalchemy as sa
from prefect import flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import LogFilter
from prefect.client.schemas.objects import State
from prefect.events.filters import EventFilter, EventOccurredFilter
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from psycopg import sql

import prefect_integrations.tasks as generated
from prefect_integrations.blocks import IntegrationInstance
from prefect_integrations.client import IntegrationClient
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import DecryptionError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.maintenance.flows import health_check, refresh_tokens, rotate_credentials
from prefect_integrations.models import ADMIN_ROLE, RUNTIME_ROLE
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.runtime import reset_runtime, runtime
from prefect_integrations.store import instances, vault

from .clirunner import Cli, assert_one_error, write
from .oauth import CLIENT_ID as OAUTH_CLIENT_ID
from .oauth import start_oauth_server
from .provider import FakeProvider, Reply
from .test_oauth import REDIRECT_URI, _app, _callback, _create, _creds, _start
from .test_prefect import _stored_results

#: Python loggers captured at DEBUG.
CAPTURED_LOGGERS = ("prefect_integrations", "httpx", "httpcore", "authlib")
ITEM = Reply(200, {"id": 1, "name": "one"})
ITEMS = Reply(200, {"items": [{"id": 1}], "client_id": "public-client"})
CLIENT_ID = "public-client"
#: Statements ``log_statement = all`` must have written: proof the server log was captured.
STATEMENT_MARKERS = (
    "pgp_sym_encrypt(",
    "integration_try_decrypt(",
    "INSERT INTO integration_audit_log",
)


def _canary(kind: str) -> str:
    """A unique secret whose percent-, form- and base64-encodings differ from it."""
    return f"{kind}-{uuid4().hex[:16]}/+={uuid4().hex[:16]}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _encodings(secret: str) -> list[str]:
    """The forms a secret travels in besides itself: percent, form and base64 encoded."""
    return [quote(secret, safe=""), quote_plus(secret), _b64(secret), _b64(secret).rstrip("=")]


def _basic(user: str, password: str) -> str:
    """The value of an ``Authorization: Basic`` header."""
    return _b64(f"{user}:{password}")


@dataclass
class Canaries:
    """One unique secret per credential kind, plus the keyring's keys."""

    api_key: str = field(default_factory=lambda: _canary("apikey"))
    query_key: str = field(default_factory=lambda: _canary("querykey"))
    down_key: str = field(default_factory=lambda: _canary("downkey"))
    access_token: str = field(default_factory=lambda: _canary("access"))
    refresh_token: str = field(default_factory=lambda: _canary("refresh"))
    client_secret: str = field(default_factory=lambda: _canary("clientsecret"))
    new_access_token: str = field(default_factory=lambda: _canary("access2"))
    new_refresh_token: str = field(default_factory=lambda: _canary("refresh2"))
    expiring_refresh_token: str = field(default_factory=lambda: _canary("refresh3"))
    refreshed_access_token: str = field(default_factory=lambda: _canary("access3"))
    hmac_secret: str = field(default_factory=lambda: _canary("hmac"))
    password: str = field(default_factory=lambda: _canary("password"))
    rotating_key: str = field(default_factory=lambda: _canary("rotold"))
    minted_key: str = field(default_factory=lambda: _canary("rotnew"))
    keys: dict[str, str] = field(default_factory=dict)

    def all(self) -> dict[str, str]:
        """Every canary by name, in each of its encodings (``name@N``).

        Keyring keys are named ``keyring:<kid>``; the ``Basic`` values of the OAuth client
        and of the user/password login are canaries of their own.
        """
        found = {k: v for k, v in vars(self).items() if isinstance(v, str)}
        found.update({f"keyring:{kid}": key for kid, key in self.keys.items()})
        found["basic:oauth-client"] = _basic(CLIENT_ID, self.client_secret)
        found["basic:userpass"] = _basic("alice", self.password)
        for name, secret in list(found.items()):
            for n, form in enumerate(_encodings(secret)):
                if form != secret:
                    found[f"{name}@{n}"] = form
        return found

    def ring(self, *kids: str) -> Keyring:
        """A keyring of the named keys (first is primary), new ones generated on first use."""
        for kid in kids:
            self.keys.setdefault(kid, generate_key())
        return parse_keyring(",".join(f"{kid}:{self.keys[kid]}" for kid in kids))


def hits(text: str, secret: str) -> int:
    """Occurrences of ``secret`` in ``text``, also when cut short (truncated messages)."""
    return text.count(secret[:16]) + text.count(secret[-16:])


def _around(text: str, secret: str, width: int = 100) -> str:
    """The text around the first (partial) occurrence of ``secret``."""
    at = max(text.find(secret[:16]), text.find(secret[-16:]))
    return text[max(0, at - width) : at + len(secret) + width]


def exception_text(exc: BaseException) -> str:
    """Traceback, then ``str``, ``repr`` and attributes of the exception and its chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def assert_no_canaries(
    sinks: dict[str, str], canaries: dict[str, str], exercised: dict[str, list[str]]
) -> None:
    """No canary in any sink; each sink holds its markers (so it really was exercised)."""
    assert set(exercised) == set(sinks)
    missing = {
        sink: [m for m in markers if m not in sinks[sink]] for sink, markers in exercised.items()
    }
    assert not any(missing.values()), missing
    found = {
        (sink, name): hits(text, secret)
        for sink, text in sinks.items()
        for name, secret in canaries.items()
        if hits(text, secret)
    }
    scanned = sum(len(t.encode()) for t in sinks.values())
    print(
        f"\ncanary scan: {len(canaries)} canaries x {len(sinks)} sinks, "
        f"{scanned} bytes, {sum(found.values())} found"
    )
    assert found == {}, "secrets leaked:\n" + "\n".join(
        f"{name} in {sink}: ...{_around(sinks[sink], canaries[name])}..." for sink, name in found
    )


class Raised:
    """Every exception the scenario saw, for the scan."""

    def __init__(self) -> None:
        self.seen: list[BaseException] = []

    def expect(self, call: Callable[[], object]) -> BaseException:
        """Run ``call``, which must raise; keep the exception."""
        try:
            call()
        except Exception as exc:
            self.seen.append(exc)
            return exc
        raise AssertionError(f"{call} did not raise")

    def failed(self, state: State[Any]) -> BaseException:
        """The exception of a failed Prefect state; kept."""
        assert state.is_failed(), state
        exc = state.result(raise_on_failure=False)
        assert isinstance(exc, BaseException), exc
        self.seen.append(exc)
        return exc

    def text(self) -> str:
        return "\n".join(exception_text(e) for e in self.seen)


@dataclass
class ServerLog:
    """The PostgreSQL server log from a starting offset."""

    path: Path
    start: int

    def read(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", errors="replace")


def _set_database(cluster: EmbeddedCluster, database: str, setting: str, value: str) -> None:
    with psycopg.connect(cluster.dsn(database="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(database), sql.Identifier(setting), sql.Literal(value)
            )
        )


@pytest.fixture
def server_log(
    cluster: EmbeddedCluster, database_name: str, echo_db: Database
) -> Iterator[ServerLog]:
    """``log_statement = all`` for the test database; the server log written from now on.

    Set before any connection of the code under test opens (settings apply per session),
    and the test's own pooled connections are dropped so they reconnect with it.
    """
    _set_database(cluster, database_name, "log_statement", "all")
    echo_db.dispose()
    yield ServerLog(cluster.log_file, cluster.log_file.stat().st_size)
    _set_database(cluster, database_name, "log_statement", "none")


def _use_keyring(monkeypatch: pytest.MonkeyPatch, ring: Keyring) -> None:
    """Run everything from now on with ``ring`` (as a deployment would after a key change)."""
    text = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in ring)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", text)
    reset_runtime()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echoed(secrets: tuple[str, ...]) -> str:
    """``secrets`` as is and encoded, the way a provider echoes a request it refused."""
    return " ".join(form for secret in secrets for form in (secret, *_encodings(secret)))


def _echo(status: int, *secrets: str) -> Reply:
    """An error reply that echoes ``secrets`` in every field a client might report."""
    joined = _echoed(secrets)
    return Reply(
        status,
        {
            "error": {"code": f"E-{secrets[0]}", "message": f"rejected: {joined}"},
            "error_description": f"bad credentials {joined}",
            "message": f"you sent {joined}",
        },
        headers={
            "X-Echo": joined,
            "WWW-Authenticate": f'Bearer error="invalid_token", token="{secrets[0]}"',
        },
    )


def _token_error(status: int, error: str, *secrets: str) -> Reply:
    """A token endpoint's refusal echoing the request: its form body and Basic header."""
    clients = [secret for secret in secrets if secret.startswith("clientsecret-")]
    basic = " ".join(f"Authorization: Basic {_basic(CLIENT_ID, secret)}" for secret in clients)
    joined = f"{_echoed(secrets)} {basic}"
    return Reply(
        status,
        {"error": error, "error_description": f"credentials {joined} refused"},
        headers={"X-Echo": joined},
    )


def _token(access: str, refresh: str | None = None, expires_in: int = 3600) -> Reply:
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }
    if refresh is not None:
        body["refresh_token"] = refresh
    return Reply(200, body)


@flow(name="canary-call")
def call_flow(integration: str, method: str, inputs: dict[str, Any], instance: str) -> Any:
    """Call one generated task (instance and inputs are not secret)."""
    return getattr(getattr(generated, integration), method)(**inputs, instance=instance)


def _call(integration: str, method: str, inputs: dict[str, Any], instance: str) -> State[Any]:
    return cast(State[Any], call_flow(integration, method, inputs, instance, return_state=True))


async def _all(read: Callable[[int, int], Awaitable[list[Any]]], size: int = 200) -> list[Any]:
    """Every item of a paged Prefect API listing."""
    items: list[Any] = []
    while True:
        page = await read(size, len(items))
        items += page
        if len(page) < size:
            return items


def _events_since(since: datetime) -> EventFilter:
    return EventFilter(occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)))


async def _events(client: PrefectClient, since: datetime) -> list[Any]:
    page = await client.read_events(_events_since(since), limit=50)
    events = list(page.events)
    while page.next_page is not None:
        page = await client.read_events_page(str(page.next_page))
        events += page.events
    return events


async def _prefect_sinks(since: datetime) -> dict[str, str]:
    """Logs, runs, artifacts, events and block documents, read back through the API."""
    async with get_client() as client:
        found = {
            "prefect logs": await _all(
                lambda n, at: client.read_logs(LogFilter(), limit=n, offset=at)
            ),
            "flow runs": await _all(lambda n, at: client.read_flow_runs(limit=n, offset=at)),
            "task runs": await _all(lambda n, at: client.read_task_runs(limit=n, offset=at)),
            "artifacts": await _all(lambda n, at: client.read_artifacts(limit=n, offset=at)),
            "events": await _events(client, since),
            "block documents": await _all(
                lambda n, at: client.read_block_documents(include_secrets=True, limit=n, offset=at)
            ),
        }
    return {
        sink: json.dumps([item.model_dump(mode="json") for item in items])
        for sink, items in found.items()
    }


async def _event_names(since: datetime) -> set[str]:
    async with get_client() as client:
        return {e.event for e in await _events(client, since)}


def _wait_for_event(name: str, since: datetime) -> None:
    """Events reach the API asynchronously: wait (bounded) until ``name`` was stored."""
    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    while name not in asyncio.run(_event_names(since)):
        assert time.monotonic() < deadline, f"event {name} never reached the Prefect API"
        time.sleep(0.2)


def _database_rows(db: Database) -> str:
    """Every row of every table, as JSON (credentials columns hold only ciphertext)."""
    chunks: list[str] = []
    with db.transaction() as s:
        tables = s.execute(
            sa.text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ).scalars()
        for table in list(tables):
            rows = s.execute(sa.text(f'SELECT row_to_json(t)::text FROM "{table}" t')).scalars()
            chunks += [f"{table}: {row}" for row in rows]
    return "\n".join(chunks)


def _audit_rows(db: Database) -> str:
    with db.transaction() as s:
        rows = s.execute(
            sa.text("SELECT row_to_json(a)::text FROM integration_audit_log a ORDER BY id")
        ).scalars()
        return "\n".join(rows)


def _log_records(caplog: pytest.LogCaptureFixture, prefix: str = "") -> str:
    """The captured log records (of loggers named ``prefix...``), formatted."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records if r.name.startswith(prefix))


@pytest.mark.usefixtures("env")
def test_no_canary_reaches_any_sink(
    harness: Path,
    echo_db: Database,
    server_log: ServerLog,
    keyring: Keyring,
    provider: FakeProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for logger in CAPTURED_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=logger)
    started = datetime.now(UTC) - timedelta(seconds=5)
    c = Canaries()
    c.keys["k1"] = keyring.primary.get_secret_value()
    raised = Raised()
    cli = Cli(capsys, monkeypatch)
    url = provider.url
    now = time.time()

    # -- instances, created and shown through the CLI -----------------------------------
    oauth_client = {"client_id": CLIENT_ID, "client_secret": c.client_secret}

    def oauth_config(path: str) -> str:
        return json.dumps(
            {
                "base_url": f"{url}/{path}",
                "token_url": f"{url}/{path}/token",
                "authorization_url": f"{url}/{path}/auth",
            }
        )

    created: dict[str, tuple[str, str, dict[str, Any]]] = {
        "echo_main": (
            "echo",
            json.dumps({"base_url": f"{url}/echo_main"}),
            {"apikey": {"key": c.api_key}},
        ),
        "echo_q": (
            "echo_query",
            json.dumps({"base_url": f"{url}/echo_q"}),
            {"apikey": {"key": c.query_key}},
        ),
        "echo_down": (
            "echo",
            json.dumps({"base_url": f"http://127.0.0.1:{_free_port()}/down"}),
            {"apikey": {"key": c.down_key}},
        ),
        "signer": (
            "echo_hmac",
            json.dumps({"base_url": f"{url}/signer"}),
            {"custom": {"key_id": "kid-public", "secret": c.hmac_secret}},
        ),
        "userpass": (
            "echo_userpass",
            json.dumps({"base_url": f"{url}/userpass"}),
            {"custom": {"username": "alice", "password": c.password}},
        ),
        "rot": (
            "echo_rotating",
            json.dumps({"base_url": f"{url}/rot"}),
            {"apikey": {"key": c.rotating_key, "key_id": "key-1"}},
        ),
        "items": (
            "authsrv",
            oauth_config("items"),
            {
                "oauth2": {
                    "access_token": c.access_token,
                    "refresh_token": c.refresh_token,
                    "token_type": "Bearer",
                    "obtained_at": now - 4000,
                    "expires_at": now - 400,
                    **oauth_client,
                }
            },
        ),
    }
    for name, path in (("soon", "soon"), ("soon_bad", "bad")):
        created[name] = (
            "authsrv",
            oauth_config(path),
            {
                "oauth2": {
                    "access_token": c.access_token,
                    "refresh_token": c.expiring_refresh_token,
                    "obtained_at": now - 3500,
                    "expires_at": now + 100,
                    **oauth_client,
                }
            },
        )
    for instance_id, (integration, config, creds) in created.items():
        create = ["instances", "create", instance_id, "--integration", integration]
        create += ["--name", instance_id, "--config", config]
        if instance_id == "signer":  # one from standard input
            cli.ok(*create, "--credentials-file", "-", stdin=json.dumps(creds))
        else:
            cli.ok(*create, "--credentials-file", write(tmp_path, f"{instance_id}.json", creds))
    cli.ok("instances", "set-credentials", "echo_main", stdin=json.dumps(created["echo_main"][2]))
    cli.ok("instances", "list")
    cli.ok("instances", "list", "--json")
    for instance_id in created:
        cli.ok("instances", "show", instance_id)
        cli.ok("instances", "show", instance_id, "--json")

    # -- successful calls: generated tasks in a flow, the client, a refresh first -------
    provider.reply("GET", "/echo_main/items/1", ITEM)
    provider.reply("GET", "/echo_q/items/1", ITEM)
    provider.reply("POST", "/signer/items", Reply(201, {"id": 2, "name": "s"}))
    provider.reply("GET", "/userpass/items/1", ITEM)
    provider.reply("POST", "/items/token", _token(c.new_access_token, c.new_refresh_token))
    provider.reply("GET", "/items/api/items", ITEMS)

    @flow(name="canary-good", log_prints=True)
    def good() -> list[Any]:
        return [
            generated.echo.get_item(item_id=1, instance="echo_main"),
            generated.echo_query.get_item(item_id=1, instance="echo_q"),
            generated.echo_hmac.create_item(name="s", instance="signer"),
            generated.echo_userpass.get_item(item_id=1, instance="userpass"),
            generated.authsrv.list_items(instance="items"),
        ]

    assert good()[-1]["items"] == [{"id": 1}]
    assert runtime().client("echo_main").call("get_item", {"item_id": 1})["id"] == 1
    sent = {r.path: r for r in provider.requests}
    assert sent["/echo_main/items/1"].headers["x-api-key"] == c.api_key  # keys were used
    assert sent["/echo_q/items/1"].query["key"] == [c.query_key]
    assert sent["/items/api/items"].headers["authorization"] == f"Bearer {c.new_access_token}"
    assert parse_qs(sent["/items/token"].body.decode())["client_secret"] == [c.client_secret]

    # -- failing calls: providers echo the secret back; transport errors ----------------
    provider.reply("GET", "/echo_main/items/2", _echo(400, c.api_key))
    provider.reply("GET", "/echo_main/items/3", _echo(500, c.api_key))
    provider.reply("GET", "/echo_q/items/2", _echo(401, c.query_key))
    provider.reply("POST", "/signer/items", _echo(403, c.hmac_secret, "kid-public"))
    provider.reply("GET", "/userpass/items/2", _echo(400, c.password, "alice"))
    provider.reply("GET", "/items/api/items", _echo(401, c.new_access_token))
    provider.reply(
        "POST",
        "/items/token",
        _token_error(400, "invalid_client", c.client_secret, c.new_refresh_token),
    )
    failing: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("echo", "get_item", {"item_id": 2}, "echo_main", "rejected"),
        ("echo", "get_item", {"item_id": 3}, "echo_main", "HTTP 500"),
        ("echo_query", "get_item", {"item_id": 2}, "echo_q", "HTTP 401"),
        ("echo_hmac", "create_item", {"name": "s"}, "signer", "HTTP 403"),
        ("echo_userpass", "get_item", {"item_id": 2}, "userpass", "HTTP 400"),
        ("echo", "get_item", {"item_id": 1}, "echo_down", "ConnectError"),
        ("authsrv", "list_items", {}, "items", "invalid_client"),
    ]
    for integration, method, inputs, instance_id, fragment in failing:
        exc = raised.failed(_call(integration, method, inputs, instance_id))
        assert fragment in str(exc), (instance_id, str(exc))
    client_error = raised.expect(
        lambda: runtime().client("echo_main").call("get_item", {"item_id": 2})
    )
    assert "rejected" in str(client_error)

    # -- CLI calls, token refresh through the CLI ---------------------------------------
    cli.ok("call", "echo.get_item", "--instance", "echo_main", "--input", '{"item_id": 1}')
    assert_one_error(
        cli("call", "echo.get_item", "--instance", "echo_main", "--input", '{"item_id": 2}'),
        "provider_error",
        "rejected",
    )
    # the failed refresh above put 'items' in error: its error is shown, without secrets
    assert cli("call", "authsrv.list_items", "--instance", "items").code == 1
    active = json.dumps({"state": "active"})
    cli.ok("instances", "update", "items", "--status", active)
    provider.reply(
        "POST",
        "/items/token",
        *[_token_error(503, "temporarily_unavailable", c.client_secret, c.new_refresh_token)] * 3,
    )
    assert cli("oauth", "refresh", "items", "--force").code == 1
    provider.reply(
        "POST",
        "/items/token",
        _token_error(400, "invalid_grant", c.new_refresh_token, c.client_secret),
    )
    assert_one_error(cli("oauth", "refresh", "items", "--force"), "invalid_grant", "items")
    cli.ok("instances", "show", "items")
    cli.ok("instances", "update", "items", "--status", active)
    provider.reply("POST", "/items/token", _token(c.new_access_token, c.new_refresh_token))
    assert "refreshed" in cli.ok("oauth", "refresh", "items", "--force").out
    provider.reply("GET", "/items/api/items", ITEMS)
    cli.ok("call", "authsrv.list_items", "--instance", "items", "--json")

    # -- maintenance flows ---------------------------------------------------------------
    provider.reply("GET", "/echo_main/items/1", _echo(400, c.api_key))
    provider.reply("GET", "/echo_q/items/1", ITEM)
    provider.reply("GET", "/signer/items/1", _echo(401, c.hmac_secret))
    provider.reply("GET", "/userpass/items/1", _echo(500, c.password))
    provider.reply("GET", "/rot/items/1", ITEM)
    health = asyncio.run(health_check(min_interval_seconds=0))
    assert health["results"]["ok"] == 2 and "echo_main" in health["degraded"], health

    provider.reply("POST", "/soon/token", _token(c.refreshed_access_token))
    provider.reply(
        "POST",
        "/bad/token",
        _token_error(400, "invalid_request", c.expiring_refresh_token, c.client_secret),
    )
    refreshed = refresh_tokens(horizon_seconds=900)
    assert refreshed["results"] == {"refreshed": 1, "failed": 1}, refreshed

    _use_keyring(monkeypatch, c.ring("k2", "k1"))
    cli.ok("keys", "register")  # the operator's new primary key, which workers must hold
    provider.reply("POST", "/rot/keys", Reply(201, {"secret": c.minted_key, "id": "key-2"}))
    provider.reply("GET", "/rot/items/1", _echo(401, c.minted_key))
    first = rotate_credentials()
    assert first["provider"]["rot"] == "failed" and first["keys"]["after"] == {"k2": 9}, first
    provider.reply("GET", "/rot/items/1", ITEM)
    provider.reply("DELETE", "/rot/keys/key-1", _echo(500, c.rotating_key, c.minted_key))
    second = rotate_credentials()
    assert second["provider"]["rot"] == "revoke_failed", second

    # -- key rotation and reading through the CLI; a wrong key -------------------------
    _use_keyring(monkeypatch, c.ring("k3", "k2", "k1"))
    commands: list[tuple[str, ...]] = [
        ("keys", "status"),
        ("keys", "status", "--json"),
        ("keys", "rotate"),
        ("keys", "rotate", "--json"),
        ("audit", "tail", "-n", "10000"),
        ("audit", "tail", "-n", "10000", "--json"),
        ("audit", "verify"),
        ("instances", "list", "--json"),
        ("instances", "show", "items", "--json"),
        ("instances", "show", "echo_main"),
        ("definitions", "stored"),
        ("blocks", "sync"),
    ]
    for command in commands:
        cli.ok(*command)
    c.keys["wrong"] = generate_key()
    wrong_ring = parse_keyring(f"k3:{c.keys['wrong']}")

    def read_with_wrong_key() -> None:
        with echo_db.transaction() as s:
            vault.fetch_credentials(s, wrong_ring, "echo_q", actor="t", purpose="canary")

    assert isinstance(raised.expect(read_with_wrong_key), DecryptionError)

    # -- the block ------------------------------------------------------------------------
    block = cast(IntegrationInstance, IntegrationInstance.load("echo-q"))
    provider.reply("GET", "/echo_q/items/1", ITEM)
    assert block.call("get_item", {"item_id": 1})["id"] == 1
    assert asyncio.run(block.acall("get_item", {"item_id": 1}))["id"] == 1
    provider.reply("GET", "/echo_q/items/5", _echo(400, c.query_key))
    raised.expect(lambda: block.call("get_item", {"item_id": 5}))
    raised.expect(lambda: asyncio.run(block.acall("get_item", {"item_id": 5})))
    unavailable = cast(IntegrationInstance, IntegrationInstance.load("echo-main"))
    raised.expect(lambda: unavailable.call("get_item", {"item_id": 1}))

    # -- the scan ---------------------------------------------------------------------------
    runtime().recorder.flush()
    APILogWorker.drain_all()
    _wait_for_event("integration.instance.degraded", started)
    sinks = asyncio.run(_prefect_sinks(started))
    sinks["result storage"] = _stored_results(harness)
    sinks["audit log"] = _audit_rows(echo_db)
    sinks["database rows"] = _database_rows(echo_db)
    sinks["cli output"] = "\n".join(
        f"$ {' '.join(args)}\n{r.out}\n{r.err}" for args, r in cli.transcript
    )
    sinks["exceptions"] = raised.text()
    sinks["python logging"] = _log_records(caplog)
    sinks["postgres log"] = server_log.read()

    # Every sink was exercised: the scan cannot pass on empty text.
    exercised = {
        "prefect logs": ["rejected", "Health check:"],
        "flow runs": ['"instance": "echo_q"', "HTTP 401"],
        "task runs": ["echo.get_item", "authsrv.list_items"],
        "artifacts": ["integration-health", "revoke_failed"],
        "events": ["integration.instance.degraded", "prefect.flow-run.Failed"],
        "block documents": ["echo_main"],
        "result storage": ["ProviderError"],
        "audit log": [
            "method.call",
            "oauth.refresh",
            "credentials.rotate",
            "credentials.decrypt",
            "keys.rotate",
        ],
        "database rows": ["integration_audit_log", "invalid_grant", '"key_id":"k3"'],
        "cli output": ["block(s) saved", "error[invalid_grant]"],
        "exceptions": ["Traceback", "HTTP 403", "ConnectError"],
        "python logging": ["receive_response_headers", "items/1?key=********"],
        "postgres log": ["statement: ", *STATEMENT_MARKERS],
    }
    # A wrong key fails no statement (pgcrypto's error is caught inside the database).
    assert "Wrong key or corrupt data" not in sinks["postgres log"]
    # Key material travels as bind parameters: the logged statement has placeholders.
    assert re.search(
        r"pgp_sym_encrypt\(CAST\(\$\d+ AS text\), CAST\(\$\d+ AS text\)", sinks["postgres log"]
    )
    assert_no_canaries(sinks, c.all(), exercised)


def test_server_log_settings_keep_bind_values_out(
    cluster: EmbeddedCluster, database_name: str
) -> None:
    """What the README promises about the server log, checked against a real server."""
    log = ServerLog(cluster.log_file, cluster.log_file.stat().st_size)
    names = ["bound", "duration", "on-error", "shown", "shown-on-error", "inlined"]
    names += ["condition", "plan"]
    probes = {name: _canary(name) for name in names}
    encrypt = "SELECT pgp_sym_encrypt(%s::text, %s::text) AS marker_{}"
    decrypt = "SELECT pgp_sym_decrypt(decode(%s, 'hex'), %s) AS marker_{}"
    with psycopg.connect(cluster.dsn(database=database_name), autocommit=True) as conn:
        shown = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in ("log_parameter_max_length", "log_parameter_max_length_on_error")
        }
        assert shown == {
            "log_parameter_max_length": ("0",),
            "log_parameter_max_length_on_error": ("0",),
        }  # the embedded cluster's own settings
        conn.execute("SET log_statement = 'all'")
        conn.execute(encrypt.format("bound"), ["plaintext", probes["bound"]])
        with pytest.raises(psycopg.errors.ExternalRoutineInvocationException):
            conn.execute(decrypt.format("on_error"), ["00", probes["on-error"]])
        conn.execute("SET log_statement = 'none'")
        conn.execute("SET log_min_duration_statement = 0")
        conn.execute(encrypt.format("duration"), ["plaintext", probes["duration"]])
        conn.execute("SET log_min_duration_statement = -1")
        conn.execute("SET log_statement = 'all'")

        # Controls: the same log shows values when the settings allow it, literals always,
        # and auto_explain's verbose plans show bound values as constants.
        conn.execute("SET log_parameter_max_length = -1")
        conn.execute(encrypt.format("shown"), ["plaintext", probes["shown"]])
        conn.execute("SET log_parameter_max_length = 0")
        conn.execute("SET log_parameter_max_length_on_error = -1")
        with pytest.raises(psycopg.errors.ExternalRoutineInvocationException):
            conn.execute(decrypt.format("shown_on_error"), ["00", probes["shown-on-error"]])
        conn.execute("SET log_parameter_max_length_on_error = 0")
        conn.execute(sql.SQL("SELECT {} AS marker_inlined").format(sql.Literal(probes["inlined"])))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute(
            "SELECT instance_id FROM integration_instances WHERE instance_id = %s",
            [probes["condition"]],
        )
        conn.execute("SET auto_explain.log_verbose = on")
        conn.execute(encrypt.format("plan"), ["plaintext", probes["plan"]])
    for role in (ADMIN_ROLE, RUNTIME_ROLE):
        with psycopg.connect(cluster.dsn(database=database_name, user=role)) as role_conn:
            # A superuser setting: the roles cannot lift it for their sessions...
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                role_conn.execute("SET log_parameter_max_length = -1")
            role_conn.rollback()
            # ...but any session may change this one (the package never does).
            role_conn.execute("SET log_parameter_max_length_on_error = -1")
            role_conn.rollback()
    text = log.read()
    for marker in ("bound", "on_error", "duration"):  # statements were logged...
        assert f"AS marker_{marker}" in text, marker
    assert "pgp_sym_encrypt($1::text, $2::text) AS marker_bound" in text
    for name in ("bound", "on-error", "duration"):  # ...without their values
        assert probes[name] not in text, name
    for name in ("shown", "shown-on-error", "inlined", "condition", "plan"):
        assert probes[name] in text, name


def test_no_canary_from_the_authorization_server(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    server_log: ServerLog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real authorization server: code exchange, calls, refresh, refused grants."""
    for logger in CAPTURED_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=logger)
    canaries = {
        "client_secret": _canary("oidcsecret"),
        "wrong_client_secret": _canary("wrongsecret"),
        "keyring:k1": keyring.primary.get_secret_value(),
    }
    raised = Raised()
    pages: list[str] = []

    def remember_tokens(label: str) -> dict[str, Any]:
        creds = _creds(echo_db, keyring)
        canaries[f"{label}_access_token"] = creds["access_token"]
        canaries[f"{label}_refresh_token"] = creds["refresh_token"]
        return creds

    def set_credentials(values: dict[str, Any]) -> None:
        with echo_db.transaction() as s:
            instances.set_credentials(s, echo_registry, keyring, "items_1", values, actor="t")

    clients = {OAUTH_CLIENT_ID: {"client_secret": canaries["client_secret"]}}
    with start_oauth_server(
        redirect_uris=[REDIRECT_URI], tmp_path=tmp_path, config={"clients": clients}
    ) as server:
        _create(echo_db, echo_registry, keyring, server, secret=canaries["client_secret"])
        app = _app(echo_db, echo_registry, keyring)
        callback = server.authorize(_start(app, echo_db, echo_registry, keyring))
        code = parse_qs(urlsplit(callback).query)["code"][0]
        for _ in range(2):  # the second time the state is spent: an error page
            page = _callback(app, callback)
            pages.append(f"{page.status_code} {page.headers} {page.text}")
        first = remember_tokens("issued")
        lifecycle = TokenLifecycle(echo_db, echo_registry, keyring, actor="t", backoff=0.01)
        with IntegrationClient(
            "items_1", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
        ) as client:
            assert client.call("list_items")["items"]
            assert lifecycle.refresh("items_1", force=True).result == "refreshed"
            client.invalidate()
            assert client.call("list_items")["items"]
        second = remember_tokens("refreshed")

        # rotated away
        set_credentials({"oauth2": {**second, "refresh_token": first["refresh_token"]}})
        assert "invalid_grant" in str(
            raised.expect(lambda: lifecycle.refresh("items_1", force=True))
        )
        wrong = {"client_id": OAUTH_CLIENT_ID, "client_secret": canaries["wrong_client_secret"]}
        set_credentials({"oauth2": {**second, **wrong}})
        assert "invalid_client" in str(
            raised.expect(lambda: lifecycle.refresh("items_1", force=True))
        )

    sinks = {
        "connect pages": "\n".join(pages),
        "exceptions": raised.text(),
        "python logging": _log_records(caplog),
        "audit log": _audit_rows(echo_db),
        "database rows": _database_rows(echo_db),
        "postgres log": server_log.read(),
    }
    assert_no_canaries(
        sinks,
        canaries,
        {
            "connect pages": ["200", "400"],
            "exceptions": ["Traceback", "invalid_grant", "invalid_client"],
            "python logging": ["HTTP Request: POST", "receive_response_headers"],
            "audit log": ["oauth.authorize", "oauth.connect", "oauth.refresh"],
            "database rows": ["integration_instances", "invalid_client"],
            "postgres log": ["statement: ", *STATEMENT_MARKERS],
        },
    )
    # The authorization code is in the test's own browser requests (httpx logs their URLs),
    # so it is looked for in every other sink and in this package's log records.
    sinks["python logging"] = _log_records(caplog, "prefect_integrations")
    assert {sink: hits(text, code) for sink, text in sinks.items() if hits(text, code)} == {}
