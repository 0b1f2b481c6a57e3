"""Audit completeness: every operation leaves exactly its audit rows, and nothing else.

`OPERATIONS` is the table of every kind of audited operation the package performs. Each
one is run once through its public API against the real database (and the loopback
provider), and the rows it appended are compared with the table: the exact actions and
outcomes in order, the actor, the instance, and no secret anywhere in them. A guard
test reads the source for every action string written to the audit log, so an action
added without a row in the table fails here instead of going unaudited by the tests.

Also: the log refuses UPDATE / DELETE / TRUNCATE for every role (beyond
tests/test_access_control.py: row-level statements, the admin's attempt to drop the
guard trigger, and the chain staying intact), and ``audit verify`` on the command line
finds rows altered or removed directly in the database, naming them.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import prefect_integrations
from prefect_integrations.audit_archive import archive
from prefect_integrations.audit_seals import CHECKPOINT_PURPOSE, cut_is_authentic, sign_document
from prefect_integrations.cli import run as cli_run
from prefect_integrations.client import IntegrationClient
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.exceptions import (
    InvalidGrant,
    PermissionDenied,
    ProviderError,
    UnknownKeyId,
    WorkerMisconfigured,
)
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.maintenance.credential_rotation import ProviderCredentialRotation
from prefect_integrations.maintenance.health import HealthChecker
from prefect_integrations.maintenance.worker_checks import check_worker
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.oauth.links import mint_link
from prefect_integrations.oauth.service import create_app, finish
from prefect_integrations.runtime import reset_runtime, runtime
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, key_registry, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.audit_seal import seal_pending
from prefect_integrations.store.definitions import sync_definitions
from prefect_integrations.store.rekey import rotate_keys

from .clirunner import Cli, assert_one_error
from .conftest import ACME_DEFINITION
from .factories import make_instance
from .legacy import write_old_shape
from .provider import FakeProvider, Reply

ACTOR = "audit-tests"
API_KEY = "AK-audit-canary-61c2"
NEW_API_KEY = "AK-audit-canary-new-7d3e"
ACCESS_TOKEN = "AT-audit-canary-0b9a"
REFRESH_TOKEN = "RT-audit-canary-4f18"
NEW_ACCESS_TOKEN = "AT-audit-canary-new-55e0"
CLIENT_SECRET = "CS-audit-canary-a7d4"
ROTATED_KEY = "AK-audit-canary-rotated-9c21"
SECRETS = (
    API_KEY,
    NEW_API_KEY,
    ACCESS_TOKEN,
    REFRESH_TOKEN,
    NEW_ACCESS_TOKEN,
    CLIENT_SECRET,
    ROTATED_KEY,
)
REDIRECT_URI = "http://127.0.0.1:8765/callback"
RUNTIME = "prefect_integrations_runtime"
OK = Reply(200, {"id": 1, "name": "one"})


@dataclass
class World:
    """What an operation needs: the store, its definitions, a key, the provider."""

    db: Database
    registry: Registry
    keyring: Keyring
    provider: FakeProvider
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    echo_dir: Path
    secrets: list[str] = field(default_factory=lambda: list(SECRETS))

    def extra_registry(self, version: str = "1.2.3") -> Registry:
        """The echo registry plus the definition ``audit_extra`` at ``version``."""
        folder = self.tmp_path / f"extra-{version}"
        folder.mkdir(exist_ok=True)
        doc = json.loads(ACME_DEFINITION)
        doc.update(integrationId="audit_extra", version=version)
        (folder / "audit_extra.json").write_text(json.dumps(doc))
        return load_registry([self.echo_dir, folder])

    def add(
        self,
        instance_id: str,
        integration_id: str = "echo",
        credentials: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        scope: Scope | None = None,
    ) -> None:
        with self.db.transaction() as s:
            make_instance(
                s,
                self.registry,
                self.keyring,
                instance_id,
                integration_id,
                scope=scope or Scope("global"),
                config=config or {"base_url": f"{self.provider.url}/{instance_id}"},
                credentials=credentials or {"apikey": {"key": API_KEY}},
                actor="setup",
            )

    def add_oauth(self, instance_id: str, *, tokens: bool) -> None:
        creds: dict[str, Any] = {"oauth2": {"client_id": "cid", "client_secret": CLIENT_SECRET}}
        if tokens:
            creds["oauth2"] |= {
                "access_token": ACCESS_TOKEN,
                "refresh_token": REFRESH_TOKEN,
                "token_type": "Bearer",
                "expires_at": 1,
            }
        url = self.provider.url
        self.add(
            instance_id,
            "authsrv",
            creds,
            {
                "base_url": url,
                "authorization_url": f"{url}/auth",
                "token_url": f"{url}/token",
            },
        )

    def use_runtime(self) -> None:
        """Point the process runtime (tasks, flows, CLI) at this store."""
        ring = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in self.keyring)
        for name, value in {
            "PREFECT_INTEGRATIONS_DATABASE_URL": self.db.url,
            "PREFECT_INTEGRATIONS_KEYS": ring,
            "PREFECT_INTEGRATIONS_DEFINITIONS_PATH": str(self.echo_dir),
            "PREFECT_INTEGRATIONS_HOME": str(self.tmp_path / "home"),
            "PREFECT_INTEGRATIONS_ACTOR": ACTOR,
        }.items():
            self.monkeypatch.setenv(name, value)
        reset_runtime()


Step = Callable[[World], None]


def _nothing(w: World) -> None:
    pass


@dataclass(frozen=True)
class Operation:
    """One kind of audited operation and the rows it must append, in order."""

    setup: Step
    run: Step
    rows: tuple[tuple[str, str], ...]  # (action, outcome)
    instance_id: str | None = "inst"
    integration_id: str | None = None
    #: False when some rows come from the background call recorder (written on flush)
    ordered: bool = True


# --------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------


def _sync(registry_of: Callable[[World], Registry]) -> Step:
    def run(w: World) -> None:
        with w.db.transaction() as s:
            sync_definitions(s, registry_of(w), actor=ACTOR)

    return run


def _with_instance(w: World) -> None:
    w.add("inst")


def _create(w: World) -> None:
    with w.db.transaction() as s:
        make_instance(
            s,
            w.registry,
            w.keyring,
            "inst",
            "echo",
            name="New",
            scope=Scope("client", "c1"),
            config={"base_url": f"{w.provider.url}/inst"},
            credentials={"apikey": {"key": API_KEY}},
            actor=ACTOR,
        )


def _update(**changes: Any) -> Step:
    def run(w: World) -> None:
        with w.db.transaction() as s:
            instances.update_instance(s, w.registry, "inst", actor=ACTOR, **changes)

    return run


def _delete(w: World) -> None:
    with w.db.transaction() as s:
        instances.delete_instance(s, "inst", actor=ACTOR)


def _set_credentials(w: World) -> None:
    with w.db.transaction() as s:
        instances.set_credentials(
            s, w.registry, w.keyring, "inst", {"apikey": {"key": NEW_API_KEY}}, actor=ACTOR
        )


def _decrypt(w: World) -> None:
    with w.db.transaction() as s:
        creds = vault.fetch_credentials(s, w.keyring, "inst", actor=ACTOR, purpose="test")
    assert creds.reveal() == {"apikey": {"key": API_KEY}}


def _decrypt_unknown_key(w: World) -> None:
    other = parse_keyring(f"k9:{generate_key()}")
    with pytest.raises(UnknownKeyId), w.db.transaction() as s:
        vault.fetch_credentials(s, other, "inst", actor=ACTOR, purpose="test")


def _client(w: World) -> IntegrationClient:
    return IntegrationClient("inst", db=w.db, registry=w.registry, keyring=w.keyring, actor=ACTOR)


def _call(w: World) -> None:
    w.provider.reply("GET", "/inst/items/1", OK)
    client = _client(w)
    assert client.call("get_item", {"item_id": 1}) == {"id": 1, "name": "one"}
    client.flush()


def _call_failing(w: World) -> None:
    w.provider.reply("GET", "/inst/items/2", Reply(404, {"error": {"code": "nf", "message": "x"}}))
    client = _client(w)
    with pytest.raises(ProviderError):
        client.call("get_item", {"item_id": 2})
    client.flush()


def _health_degrades(w: World) -> None:
    w.provider.reply("GET", "/inst/items/1", Reply(401, {"error": {"code": "k", "message": "no"}}))
    checker = HealthChecker(w.db, w.registry, w.keyring, actor=ACTOR, min_interval=0.0)
    report = asyncio.run(checker.run())
    assert [r.reason for r in report.results] == ["provider_auth_failed"]


def _with_registered_instance(w: World) -> None:
    """An instance, its key registered (a first health check would register it itself)."""
    _with_instance(w)
    with w.db.transaction() as s:
        key_registry.register(s, w.keyring, w.keyring.ids, actor="setup")


def _register_keys(w: World) -> None:
    w.use_runtime()
    assert cli_run(["keys", "register"]) == 0


def _check_worker_first_use(w: World) -> None:
    check_worker(w.db, w.registry, w.keyring, flow="health-check", actor=ACTOR)


def _health_without_the_key(w: World) -> None:
    ring = parse_keyring(f"k0:{generate_key()}")  # a worker that missed a key rotation
    checker = HealthChecker(w.db, w.registry, ring, actor=ACTOR, min_interval=0.0)
    with pytest.raises(WorkerMisconfigured):
        asyncio.run(checker.run())


def _with_oauth(w: World) -> None:
    w.add_oauth("inst", tokens=False)


def _with_tokens(w: World) -> None:
    w.add_oauth("inst", tokens=True)


def _connect_app(w: World) -> TestClient:
    app = create_app(
        db=w.db, registry=w.registry, keyring=w.keyring, actor=ACTOR, redirect_uri=REDIRECT_URI
    )
    return TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False)


def _open_link(w: World, browser: TestClient) -> str:
    """Mint a connect link for ``inst`` and open it; the state sent to the provider."""
    link = mint_link(w.db, w.registry, w.keyring, instance_id="inst", redirect_uri=REDIRECT_URI)
    location: str = browser.get(link, headers={"User-Agent": "audit-browser/1"}).headers["location"]
    assert location.startswith(f"{w.provider.url}/auth?")
    return parse_qs(urlsplit(location).query)["state"][0]


def _authorize(w: World) -> None:
    with _connect_app(w) as browser:
        _open_link(w, browser)


def _token_reply(w: World) -> None:
    w.provider.reply(
        "POST",
        "/token",
        Reply(
            200,
            {
                "access_token": NEW_ACCESS_TOKEN,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": REFRESH_TOKEN,
            },
        ),
    )


def _connect(w: World) -> None:
    _token_reply(w)
    finish(
        w.db,
        w.registry,
        w.keyring,
        instance_id="inst",
        code="the-code",
        verifier="v" * 43,
        redirect_uri=REDIRECT_URI,
        actor=ACTOR,
    )


def _connect_denied(w: World) -> None:
    with _connect_app(w) as browser:
        state = _open_link(w, browser)
        page = browser.get(f"/callback?state={state}&error=access_denied")
        assert page.status_code == 400


def _lifecycle(w: World) -> TokenLifecycle:
    return TokenLifecycle(w.db, w.registry, w.keyring, actor=ACTOR, backoff=0.01)


def _refresh(w: World) -> None:
    _token_reply(w)
    assert _lifecycle(w).refresh("inst").result == "refreshed"


def _refresh_refused(w: World) -> None:
    w.provider.reply("POST", "/token", Reply(400, {"error": "invalid_grant"}))
    with pytest.raises(InvalidGrant):
        _lifecycle(w).refresh("inst")


def _new_ring(w: World) -> Keyring:
    return parse_keyring(f"k2:{generate_key()},k1:{w.keyring.primary.get_secret_value()}")


def _rotate_keys(w: World) -> None:
    report = rotate_keys(w.db, _new_ring(w), actor=ACTOR)
    assert report.rotated == 1


def _with_old_shape(w: World) -> None:
    w.add("inst")
    with w.db.transaction() as s:
        write_old_shape(s, w.keyring, "inst", {"api_key": API_KEY, "key_id": "key-1"})


def _upgrade_old_shape(w: World) -> None:
    report = rotate_keys(w.db, w.keyring, actor=ACTOR)
    assert (report.rotated, report.upgraded) == (0, 1)


def _rotate_keys_unknown(w: World) -> None:
    report = rotate_keys(w.db, parse_keyring(f"k2:{generate_key()}"), actor=ACTOR)
    assert report.rotated == 0 and len(report.failed) == 1


def _with_rotating(w: World) -> None:
    w.add("inst", "echo_rotating", {"apikey": {"key": API_KEY, "key_id": "key-1"}})
    w.provider.reply("POST", "/inst/keys", Reply(201, {"secret": ROTATED_KEY, "id": "key-2"}))
    w.provider.reply("GET", "/inst/items/1", OK)
    w.provider.reply("DELETE", "/inst/keys/key-1", Reply(200, {}))
    w.use_runtime()


def _archive(w: World) -> None:
    seal_pending(w.db)
    with w.db.transaction() as s:
        chains = s.execute(
            sa.text("SELECT count(DISTINCT chain) FROM integration_audit_log")
        ).scalar_one()
        now = s.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
    assert chains == 1  # one cut row expected below
    result = archive(w.db, w.keyring, before=now, to=w.tmp_path / "old.jsonl.gz", actor=ACTOR)
    assert result.rows > 0


def _rotate_provider(w: World) -> None:
    rt = runtime()
    rotation = ProviderCredentialRotation(rt.db, rt.registry, rt.keyring, clients=rt.clients)
    assert rotation.run()["inst"].result == "rotated"


OPERATIONS: dict[str, Operation] = {
    "definition.create": Operation(
        _nothing,
        _sync(lambda w: w.extra_registry()),
        (("definition.create", "success"),),
        instance_id=None,
        integration_id="audit_extra",
    ),
    "definition.update": Operation(
        _sync(lambda w: w.extra_registry()),
        _sync(lambda w: w.extra_registry("2.0.0")),
        (("definition.update", "success"),),
        instance_id=None,
        integration_id="audit_extra",
    ),
    "definition.delete": Operation(
        _sync(lambda w: w.extra_registry()),
        _sync(lambda w: w.registry),
        (("definition.delete", "success"),),
        instance_id=None,
        integration_id="audit_extra",
    ),
    "instance.create": Operation(_nothing, _create, (("instance.create", "success"),)),
    "instance.update (rename)": Operation(
        _with_instance, _update(name="Renamed"), (("instance.update", "success"),)
    ),
    "instance.update (rescope)": Operation(
        _with_instance, _update(scope=Scope("user", "u1")), (("instance.update", "success"),)
    ),
    "instance.update (config)": Operation(
        _with_instance,
        _update(config={"base_url": "https://elsewhere.invalid"}),
        (("instance.update", "success"),),
    ),
    "instance.delete": Operation(_with_instance, _delete, (("instance.delete", "success"),)),
    "credentials.set": Operation(
        _with_instance, _set_credentials, (("credentials.set", "success"),)
    ),
    "credentials.decrypt": Operation(
        _with_instance, _decrypt, (("credentials.decrypt", "success"),)
    ),
    "credentials.decrypt (failure)": Operation(
        _with_instance, _decrypt_unknown_key, (("credentials.decrypt", "failure"),)
    ),
    "method.call": Operation(
        _with_instance,
        _call,
        (("credentials.decrypt", "success"), ("method.call", "success")),
    ),
    "method.call (failure)": Operation(
        _with_instance,
        _call_failing,
        (("credentials.decrypt", "success"), ("method.call", "failure")),
    ),
    "health.check (status change)": Operation(
        _with_registered_instance,
        _health_degrades,
        (("credentials.decrypt", "success"), ("health.check", "failure")),
    ),
    "maintenance.fault": Operation(
        _with_instance,
        _health_without_the_key,
        (("maintenance.fault", "failure"),),  # nothing else: no decrypt, no status
        instance_id=None,
    ),
    "oauth.authorize": Operation(
        _with_oauth,
        _authorize,
        (("credentials.decrypt", "success"), ("oauth.authorize", "success")),
    ),
    "oauth.connect": Operation(
        _with_oauth,
        _connect,
        (
            ("credentials.decrypt", "success"),
            ("credentials.set", "success"),
            ("instance.update", "success"),
            ("oauth.connect", "success"),
        ),
    ),
    "oauth.connect (failure)": Operation(
        _with_oauth,
        _connect_denied,
        (
            ("credentials.decrypt", "success"),
            ("oauth.authorize", "success"),
            ("oauth.connect", "failure"),
        ),
    ),
    "oauth.refresh": Operation(
        _with_tokens,
        _refresh,
        (("credentials.decrypt", "success"), ("oauth.refresh", "success")),
    ),
    "oauth.refresh (failure)": Operation(
        _with_tokens,
        _refresh_refused,
        (("credentials.decrypt", "success"), ("oauth.refresh", "failure")),
    ),
    "keys.rotate": Operation(
        _with_instance, _rotate_keys, (("keys.rotate", "success"),), instance_id=None
    ),
    "audit.archive": Operation(
        _with_instance, _archive, (("audit.archive", "success"),), instance_id=None
    ),
    "keys.register": Operation(
        _with_instance, _register_keys, (("keys.register", "success"),), instance_id=None
    ),
    "keys.register (first use)": Operation(
        # rows under 'k1' decrypt with the worker's 'k1': registered without a manual step
        _with_instance,
        _check_worker_first_use,
        (("keys.register", "success"),),
        instance_id=None,
    ),
    "credentials.upgrade": Operation(
        _with_old_shape,
        _upgrade_old_shape,
        (("credentials.decrypt", "success"), ("credentials.upgrade", "success")),
    ),
    "keys.rotate (failure)": Operation(
        _with_instance,
        _rotate_keys_unknown,
        # the batch summary (nothing rotated) and the failed row
        (("keys.rotate", "failure"), ("keys.rotate", "failure")),
        instance_id=None,
    ),
    "credentials.rotate": Operation(
        _with_rotating,
        _rotate_provider,
        # read the old key; three provider calls (create the key, check it with the
        # health check method, revoke the old one), each reading the credentials afresh
        (
            *[("credentials.decrypt", "success")] * 4,
            ("credentials.set", "success"),
            ("credentials.rotate", "success"),
            *[("method.call", "success")] * 3,
        ),
        ordered=False,
    ),
}


# --------------------------------------------------------------------------------------
# Every operation appends exactly its rows
# --------------------------------------------------------------------------------------


@pytest.fixture
def world(
    echo_db: Database,
    echo_registry: Registry,
    echo_dir: Path,
    keyring: Keyring,
    provider: FakeProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    yield World(echo_db, echo_registry, keyring, provider, tmp_path, monkeypatch, echo_dir)
    reset_runtime()


def _last_id(db: Database) -> int:
    with db.transaction() as s:
        return int(
            s.execute(sa.text("SELECT coalesce(max(id), 0) FROM integration_audit_log")).scalar()
            or 0
        )


def _rows_after(db: Database, last: int, keyring: Keyring) -> list[dict[str, Any]]:
    with db.transaction() as s:
        found = audit.tail(s, limit=1000)
        report = audit.verify(s, cut_check=lambda c, d: cut_is_authentic(keyring, c, d))
        assert report.ok, report.problems
    return [e.as_dict() for e in found if e.id > last]


@pytest.mark.parametrize("kind", sorted(OPERATIONS))
def test_each_operation_appends_exactly_its_audit_rows(world: World, kind: str) -> None:
    op = OPERATIONS[kind]
    op.setup(world)
    before = _last_id(world.db)
    op.run(world)
    rows = _rows_after(world.db, before, world.keyring)

    got = [(r["action"], r["outcome"]) for r in rows]
    if op.ordered:
        assert got == list(op.rows), f"{kind}: appended {got}"
    else:
        assert sorted(got) == sorted(op.rows), f"{kind}: appended {got}"
    action = kind.split(" ")[0]
    assert (
        [r["action"] for r in rows].count(action) == sum(1 for a, _ in op.rows if a == action) >= 1
    )
    for row in rows:
        assert row["actor"] == ACTOR, row
        if op.instance_id is not None:
            assert row["instance_id"] == op.instance_id, row
        if op.integration_id is not None:
            assert row["integration_id"] == op.integration_id, row
        text = json.dumps(row)
        keys = [key.get_secret_value() for _, key in world.keyring]
        for secret in [*world.secrets, *keys]:
            assert secret not in text, f"{kind}: a secret in audit row {row['id']}"


# --------------------------------------------------------------------------------------
# The table cannot go stale
# --------------------------------------------------------------------------------------

_ACTION = re.compile(r"^[a-z_]+\.[a-z_]+$")
_SQL_ACTION = re.compile(r"'([a-z_]+\.[a-z_]+)'")


def _constants(node: ast.expr) -> list[str] | None:
    """The string values an expression can take, or None when it is not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if (  # AuditAction.NAME or audit.AuditAction.NAME
        isinstance(node, ast.Attribute)
        and ast.unparse(node.value).split(".")[-1] == "AuditAction"
        and node.attr in AuditAction.__members__
    ):
        return [AuditAction[node.attr].value]
    if isinstance(node, ast.IfExp):
        body, orelse = _constants(node.body), _constants(node.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def written_actions() -> tuple[set[str], list[str]]:
    """Every action string the package writes to the audit log, and unreadable sites."""
    root = Path(prefect_integrations.__file__).parent
    found: set[str] = set()
    unreadable: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = str(path.relative_to(root))
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                values += [k.value for k in node.keywords if k.arg == "action"]
                if ast.unparse(node.func).split(".")[-1] == "bind_action":
                    values += node.args[1:2]  # the action of rows appended inside a statement
            elif isinstance(node, ast.Dict):
                values += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "action"
                ]
            elif isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == "action" for t in node.targets):
                    values.append(node.value)
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "INSERT INTO integration_audit_log" in node.value
            ):
                found.update(_SQL_ACTION.findall(node.value))
            for value in values:
                if isinstance(value, ast.Name) and value.id == "action":
                    continue  # passed through (store/audit.py, a local computed above)
                if isinstance(value, ast.Attribute) and value.attr == "action":
                    continue  # read back from a row
                if (
                    isinstance(value, ast.Attribute)
                    and value.attr == "value"
                    and ast.unparse(value.value).startswith("AuditAction(")
                ):
                    continue  # passed through (store/audit.py)
                strings = _constants(value)
                if strings is None:
                    unreadable.append(f"{where}:{value.lineno}")
                else:
                    found.update(s for s in strings if _ACTION.match(s))
    return found, unreadable


def test_every_written_action_is_in_the_table() -> None:
    written, unreadable = written_actions()
    assert not unreadable, (
        f"audit actions not given as literals (add them to the table): {unreadable}"
    )
    tabled = {kind.split(" ")[0] for kind in OPERATIONS}
    assert written, "the source scan found no action at all"
    assert written - tabled == set(), "actions written by the package but not tested here"
    assert tabled - written == set(), "actions in the table that the package no longer writes"


# --------------------------------------------------------------------------------------
# The log cannot be changed
# --------------------------------------------------------------------------------------


@pytest.fixture
def logged(echo_db: Database, world: World) -> Database:
    """A store with a few audit rows (a sync, a create, a decrypt), sealed."""
    _with_instance(world)
    _decrypt(world)
    seal_pending(echo_db)
    return echo_db


CHANGES = (
    "UPDATE integration_audit_log SET details = '{}' WHERE id = 2",
    "UPDATE integration_audit_log SET seq = seq + 100 WHERE id = 2",
    "UPDATE integration_audit_log SET hash = prev_hash "
    "WHERE id = (SELECT max(id) FROM integration_audit_log)",
    "DELETE FROM integration_audit_log WHERE id = (SELECT max(id) FROM integration_audit_log)",
)
FORGED = (
    "INSERT INTO integration_audit_log (actor, action, outcome, details, hash) "
    "VALUES ('mallory', 'forged.row', 'success', '{}', '\\x00')"
)
APPENDED = (
    "INSERT INTO integration_audit_log (actor, action, outcome, details) "
    "VALUES ('mallory', 'forged.row', 'success', '{}')"
)


@pytest.mark.parametrize("role_db", ["db", "admin_db", "runtime_db"])
@pytest.mark.usefixtures("logged")
def test_rows_cannot_be_changed_or_forged(
    request: pytest.FixtureRequest, role_db: str, db: Database
) -> None:
    database: Database = request.getfixturevalue(role_db)
    before = _chain(db)
    for statement in CHANGES:
        with pytest.raises(PermissionDenied), database.transaction("alter the audit log") as s:
            s.execute(sa.text(statement))
        assert _chain(db) == before, f"{role_db} changed the log with {statement!r}"
    # a role may append a row's content only: the defaults number and stamp it, the
    # sealer hashes it (the owner could write any column; `verify` names what it finds)
    if role_db != "db":
        with pytest.raises(PermissionDenied), database.transaction("forge a row") as s:
            s.execute(sa.text(FORGED))
    with database.transaction("append to the audit log") as s:
        s.execute(sa.text(APPENDED))
    after = _chain(db)
    assert after[:-1] == before and after[-1][0] == before[-1][0] + 1
    assert after[-1][4] is None
    seal_pending(database)
    assert _chain(db)[-1][4] not in (None, "00")
    with db.transaction() as s:
        assert audit.verify(s).ok


def _chain(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as s:
        return [
            tuple(r)
            for r in s.execute(
                sa.text(
                    "SELECT id, actor, action, details::text, encode(hash, 'hex') "
                    "FROM integration_audit_log ORDER BY id"
                )
            )
        ]


DISARM = (
    "ALTER TABLE integration_audit_log DISABLE TRIGGER integration_audit_refuse_change",
    "DROP TRIGGER integration_audit_refuse_change ON integration_audit_log",
    "SET session_replication_role = replica",
    "DROP TABLE integration_audit_log",
)


@pytest.mark.parametrize("role_db", ["admin_db", "runtime_db"])
@pytest.mark.usefixtures("logged")
def test_roles_cannot_switch_the_guard_off(
    request: pytest.FixtureRequest, role_db: str, db: Database
) -> None:
    database: Database = request.getfixturevalue(role_db)
    before = _chain(db)
    for statement in DISARM:
        with pytest.raises(PermissionDenied), database.transaction("disarm the audit log") as s:
            s.execute(sa.text(statement))
            s.execute(sa.text("DELETE FROM integration_audit_log"))
    assert _chain(db) == before


# --------------------------------------------------------------------------------------
# `audit verify` on the command line
# --------------------------------------------------------------------------------------


def _tamper(db: Database, statement: str) -> None:
    """Change the log as a superuser that bypasses the guard triggers."""
    with db.transaction() as s:
        s.execute(sa.text("SET LOCAL session_replication_role = replica"))
        s.execute(sa.text(statement))


@pytest.fixture
def cli(
    cli_env: dict[str, str],
    logged: Database,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    runner = Cli(capsys, monkeypatch, SECRETS)
    yield runner
    runner.assert_no_secrets()


def _verify_fails(cli: Cli, *lines: str) -> None:
    result = cli("audit", "verify")
    assert result.code == 1, result
    assert "Traceback" not in result.out + result.err
    got = [line for line in result.err.splitlines() if line.strip()]
    assert got[:-1] == list(lines), got
    assert re.fullmatch(r"audit log BROKEN \(\d+ rows checked\)", got[-1]), got


def test_cli_verify_passes_on_an_intact_log(cli: Cli, logged: Database) -> None:
    out = cli.ok("audit", "verify").out
    with logged.transaction() as s:
        report = audit.verify(s)
    assert out.splitlines() == [
        f"audit log intact: {report.rows} rows in {len(report.chains)} chain",
        *(f"chain {c.chain}: seq {c.seq}, head {c.head}" for c in report.chains),
    ]
    assert cli.json("audit", "verify") == {**report.as_dict(), "ok": True}


def test_cli_seal_chains_the_rows_verify_reports_waiting(
    cli: Cli, logged: Database, world: World
) -> None:
    _decrypt(world)
    _decrypt(world)
    with logged.transaction() as s:
        before = audit.verify(s)
    assert before.unsealed == 2 and before.oldest_unsealed is not None
    out = cli.ok("audit", "verify").out.splitlines()
    assert out[-1] == (
        f"2 rows not sealed yet, the oldest of {before.oldest_unsealed} "
        "(checked once sealed: `audit seal`)"
    )
    [head] = before.chains
    sealed = cli.json("audit", "seal")
    assert {k: sealed[k] for k in ("rows", "chain", "seq")} == {
        "rows": 2,
        "chain": head.chain,
        "seq": head.seq + 2,
    }
    with logged.transaction() as s:
        after = audit.verify(s)
    assert after.ok and (after.rows, after.unsealed) == (before.rows + 2, 0)
    assert after.chains[0].head == sealed["head"]
    assert cli.ok("audit", "seal").out.startswith(f"sealed 0 rows into chain {head.chain}:")


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE integration_audit_log SET actor = 'mallory' WHERE id = 2", "altered rows: 2"),
        (
            'UPDATE integration_audit_log SET details = details || \'{"purpose": "x"}\' '
            "WHERE id = (SELECT max(id) FROM integration_audit_log)",
            "altered rows: {last}",
        ),
        (
            "UPDATE integration_audit_log SET occurred_at = occurred_at - interval '1 day' "
            "WHERE id = 1",
            "altered rows: 1",
        ),
        (
            "UPDATE integration_audit_log SET outcome = 'failure' WHERE id = 3",
            "altered rows: 3",
        ),
    ],
)
def test_cli_verify_names_a_row_changed_in_the_database(
    cli: Cli, logged: Database, statement: str, expected: str
) -> None:
    last = _last_id(logged)
    assert last >= 4
    cli.ok("audit", "verify")
    _tamper(logged, statement)
    _verify_fails(cli, *expected.format(last=last).splitlines())


def _place(db: Database, row_id: int) -> tuple[int, int, int | None, int | None]:
    """A row's chain and seq, and the ids of the rows before and after it in its chain."""
    with db.transaction() as s:
        row = s.execute(
            sa.text(
                "SELECT chain, seq, lag(id) OVER w AS before, lead(id) OVER w AS after "
                "FROM integration_audit_log WINDOW w AS (PARTITION BY chain ORDER BY seq) "
                "ORDER BY id = :id DESC LIMIT 1"
            ),
            {"id": row_id},
        ).one()
    return int(row.chain), int(row.seq), row.before, row.after


def test_cli_verify_names_a_deleted_row_by_its_place(cli: Cli, logged: Database) -> None:
    chain, seq, before, after = _place(logged, 2)
    _tamper(logged, "DELETE FROM integration_audit_log WHERE id = 2")
    around = ", ".join(
        [*([f"after id {before}"] if before else []), *([f"before id {after}"] if after else [])]
    )
    place = f"chain {chain} seq {seq}" + (f" ({around})" if around else "")
    _verify_fails(cli, f"missing rows: {place}")


def _now(db: Database) -> Any:
    with db.transaction() as s:
        return s.execute(sa.text("SELECT clock_timestamp()")).scalar_one()


def test_cli_verify_names_each_archives_range(
    cli: Cli, logged: Database, world: World, tmp_path: Path
) -> None:
    """Two archives: each cut names the seqs its own file holds."""
    first = archive(logged, world.keyring, before=_now(logged), to=tmp_path / "a.gz", actor=ACTOR)
    _decrypt(world)
    _decrypt(world)
    seal_pending(logged)
    second = archive(logged, world.keyring, before=_now(logged), to=tmp_path / "b.gz", actor=ACTOR)
    [cut_a], [cut_b] = first.cuts, second.cuts
    out = cli.ok("audit", "verify").out.splitlines()
    archived = [line for line in out if "archived by row" in line]
    assert [line.split(" archived")[0] for line in archived] == [
        f"chain 0: seq {cut_b.first_seq}-{cut_b.through_seq}"
    ]
    assert cut_b.first_seq == cut_a.through_seq + 1 > 1


def test_cli_verify_finds_a_cut_tail_only_with_a_checkpoint(
    cli: Cli, logged: Database, tmp_path: Path
) -> None:
    """Removing a chain's newest row leaves a valid shorter chain: a checkpoint tells."""
    checkpoint = tmp_path / "cp.json"
    written = cli.ok("audit", "checkpoint", "--out", str(checkpoint)).out
    assert written.startswith("checkpoint 1: ") and checkpoint.exists()
    kept = checkpoint.read_bytes()
    again = cli("audit", "checkpoint", "--out", str(checkpoint))
    assert again.code == 1 and "already exists" in again.err and checkpoint.read_bytes() == kept
    # extending it: the next one is numbered after it and names its signature
    second = tmp_path / "cp2.json"
    cli.ok("audit", "checkpoint", "--out", str(second), "--previous", str(checkpoint))
    assert json.loads(second.read_text())["sequence"] == 2
    assert json.loads(second.read_text())["previous"] == json.loads(kept)["signature"]
    cli.ok("audit", "checkpoint", "--out", str(second), "--force")
    assert json.loads(second.read_text())["sequence"] == 1
    for folder in ("", str(tmp_path)):
        refused = cli("audit", "checkpoint", "--out", folder, "--force")
        assert refused.code == 1 and "is a folder, not a file" in refused.err
    long = str(tmp_path / ("u" * 300))
    refused = cli("audit", "checkpoint", "--out", long, "--force")
    assert refused.code == 1 and "File name too long" in refused.err
    archived = cli("audit", "archive", "--before", "2020-01-01", "--to", long)
    assert archived.code == 1 and "File name too long" in archived.err
    intact = cli.ok("audit", "verify", "--checkpoint", str(checkpoint)).out
    assert intact.splitlines()[-1].startswith("checkpoint 1 of ")
    assert intact.splitlines()[-1].endswith("rows are all here")
    last = _last_id(logged)
    chain, seq, _, _ = _place(logged, last)
    _tamper(logged, f"DELETE FROM integration_audit_log WHERE id = {last}")
    shorter = cli.ok("audit", "verify").out
    assert shorter.startswith(f"audit log intact: {last - 1} rows")
    result = cli("audit", "verify", "--checkpoint", str(checkpoint))
    assert result.code == 1
    assert (
        f"cut from the end of a chain (checkpoint): chain {chain} ends at seq {seq - 1}, "
        f"before the checkpoint's head {seq}"
    ) in result.err.splitlines()
    as_json = cli("audit", "verify", "--checkpoint", str(checkpoint), "--json")
    assert [p["kind"] for p in json.loads(as_json.out)["problems"]] == ["cut"]


def test_cli_checkpoint_printed_verifies_and_a_forged_one_is_refused(
    cli: Cli, logged: Database, tmp_path: Path, keyring: Keyring
) -> None:
    document = json.loads(cli.ok("audit", "checkpoint").out)
    assert document["format"] == "prefect-integrations.audit-checkpoint"
    assert document["rows"] == _last_id(logged)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document | {"rows": 1}))
    result = cli("audit", "verify", "--checkpoint", str(forged))
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.startswith(
        f"error[validation_error]: checkpoint file {str(forged)!r} is invalid at $.signature"
    )
    missing = cli("audit", "verify", "--checkpoint", str(tmp_path / "none.json"))
    assert missing.code == 1 and "no such file" in missing.err
    # a checkpoint of another database, correctly signed, is refused by name
    body = {k: v for k, v in document.items() if k not in ("key_id", "signature")}
    other = sign_document(keyring, CHECKPOINT_PURPOSE, body | {"database": "other@h:5432"})
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(other))
    refused = cli("audit", "verify", "--checkpoint", str(elsewhere))
    assert refused.code == 1 and "is a checkpoint of other@h:5432, not of" in refused.err


def test_cli_archive_and_verify_archive(cli: Cli, logged: Database, tmp_path: Path) -> None:
    rows = _last_id(logged)
    before = json.loads(cli.ok("audit", "checkpoint").out)
    (tmp_path / "cp.json").write_text(json.dumps(before))
    with logged.transaction() as s:
        now = s.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
    target = tmp_path / "2026.jsonl.gz"
    out = cli.ok("audit", "archive", "--before", now.isoformat(), "--to", str(target)).out
    assert out.startswith(f"archived {rows} rows of ") and target.exists()
    verified = cli.ok("audit", "verify").out
    assert "archived by row" in verified
    old = cli.ok("audit", "verify", "--checkpoint", str(tmp_path / "cp.json")).out
    assert old.splitlines()[-1].endswith(
        f"of its {rows} rows, 0 are here and {rows} were archived since (signed cuts)"
    )
    assert cli.ok("audit", "verify-archive", str(target)).out.startswith(
        f"archive intact: {rows} rows of "
    )
    again = cli("audit", "archive", "--before", now.isoformat(), "--to", str(target))
    assert again.code == 1 and "already exists" in again.err
    future = cli("audit", "archive", "--before", "2999-01-01", "--to", str(tmp_path / "f.gz"))
    assert future.code == 2 and "must be in the past" in future.err
    bad = cli("audit", "archive", "--before", "last year", "--to", str(tmp_path / "f.gz"))
    assert bad.code == 2 and "not an ISO date" in bad.err
    target.write_bytes(b"junk")
    broken = cli("audit", "verify-archive", str(target))
    assert broken.code == 1 and "not a complete gzip file" in broken.err


def test_cli_verify_names_every_broken_row(cli: Cli, logged: Database) -> None:
    chain, seq, _, _ = _place(logged, 2)
    _tamper(logged, "UPDATE integration_audit_log SET actor = 'mallory' WHERE id IN (1, 3)")
    _tamper(logged, "DELETE FROM integration_audit_log WHERE id = 2")
    result = cli("audit", "verify")
    assert result.code == 1 and "Traceback" not in result.err
    lines = result.err.splitlines()
    assert any(line.startswith(f"missing rows: chain {chain} seq {seq}") for line in lines)
    altered = next(line for line in lines if line.startswith("altered rows: "))
    assert {"1", "3"} <= set(altered.removeprefix("altered rows: ").split(", "))
    report = cli("audit", "verify", "--json")
    assert report.code == 1
    problems = json.loads(report.out)["problems"]
    assert {(p["kind"], p.get("id")) for p in problems} >= {("altered", 1), ("altered", 3)}


def test_cli_verify_as_the_runtime_role(
    cli: Cli,
    logged: Database,
    cluster: Any,
    database_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_integrations.models import RUNTIME_ROLE

    _tamper(logged, "UPDATE integration_audit_log SET actor = 'mallory' WHERE id = 2")
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_DATABASE_URL", cluster.url(database=database_name, user=RUNTIME_ROLE)
    )
    reset_runtime()
    _verify_fails(cli, "altered rows: 2")


# --------------------------------------------------------------------------------------
# Access control on the command line: the runtime role
# --------------------------------------------------------------------------------------


@pytest.fixture
def as_runtime(
    cli_env: dict[str, str],
    echo_db: Database,
    echo_dir: Path,
    provider: FakeProvider,
    cluster: Any,
    database_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Cli]:
    """The CLI connected as the runtime role to a store with one instance ``echo_1``."""
    from prefect_integrations.models import RUNTIME_ROLE

    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(echo_dir))
    reset_runtime()
    runner = Cli(capsys, monkeypatch, SECRETS)
    runner.ok(
        "instances",
        "create",
        "echo_1",
        "--integration",
        "echo",
        "--name",
        "Echo",
        "--config",
        json.dumps({"base_url": f"{provider.url}/echo_1"}),
        "--credentials-file",
        str(_write(tmp_path / "creds.json", {"apikey": {"key": API_KEY}})),
    )
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_DATABASE_URL", cluster.url(database=database_name, user=RUNTIME_ROLE)
    )
    reset_runtime()
    yield runner
    runner.assert_no_secrets()
    reset_runtime()


def _write(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content))
    return path


def _instances_and_audit(db: Database) -> tuple[list[tuple[Any, ...]], int]:
    with db.transaction() as s:
        rows = [
            tuple(r)
            for r in s.execute(
                sa.text(
                    "SELECT instance_id, integration_definition_id, name, context_type, "
                    "context_id, config::text, status::text, credentials_version "
                    "FROM integration_instances ORDER BY instance_id"
                )
            )
        ]
        audited = int(
            s.execute(sa.text("SELECT count(*) FROM integration_audit_log")).scalar() or 0
        )
    return rows, audited


DENIED: dict[str, tuple[list[str], str]] = {
    "create": (
        ["instances", "create", "echo_2", "--integration", "echo", "--name", "E"],
        "not allowed to create instance 'echo_2'",
    ),
    "create with credentials": (
        [
            "instances",
            "create",
            "echo_3",
            "--integration",
            "echo",
            "--name",
            "E",
            "--credentials-file",
            "{creds}",
        ],
        "not allowed to create instance 'echo_3'",
    ),
    "rename": (
        ["instances", "update", "echo_1", "--name", "Renamed"],
        "not allowed to update instance 'echo_1'",
    ),
    "rescope to a client": (
        ["instances", "update", "echo_1", "--context", "client:c1"],
        "not allowed to update instance 'echo_1'",
    ),
    "rescope to a user": (
        ["instances", "update", "echo_1", "--context", "user:u1"],
        "not allowed to update instance 'echo_1'",
    ),
    "change config": (
        ["instances", "update", "echo_1", "--config", '{"base_url": "https://evil.invalid"}'],
        "not allowed to update instance 'echo_1'",
    ),
    "rename with a status change": (
        ["instances", "update", "echo_1", "--name", "N", "--status", '{"state": "inactive"}'],
        "not allowed to update instance 'echo_1'",
    ),
    "delete": (
        ["instances", "delete", "echo_1", "--yes"],
        "not allowed to delete instance 'echo_1'",
    ),
    "definitions sync": (["definitions", "sync"], "not allowed to sync definitions"),
    "up": (["up"], "not allowed to sync definitions"),
    "db downgrade": (["db", "downgrade", "base"], "not allowed to migrate the database"),
    # PostgreSQL only warns on GRANT without the grant option: refused before that
    "db grant": (["db", "grant"], "role 'prefect_integrations_runtime' does not own"),
}


@pytest.mark.parametrize("kind", sorted(DENIED))
def test_runtime_role_cannot_manage_through_the_cli(
    as_runtime: Cli, echo_db: Database, tmp_path: Path, kind: str
) -> None:
    args, message = DENIED[kind]
    creds = str(_write(tmp_path / "more.json", {"apikey": {"key": NEW_API_KEY}}))
    before = _instances_and_audit(echo_db)
    result = as_runtime(*[a.replace("{creds}", creds) for a in args])
    assert_one_error(result, "permission_denied", message)
    assert _instances_and_audit(echo_db) == before


def test_runtime_role_still_reads_resolves_and_calls(
    as_runtime: Cli, echo_db: Database, provider: FakeProvider, tmp_path: Path
) -> None:
    provider.reply("GET", "/echo_1/items/7", Reply(200, {"id": 7, "name": "seven"}))
    assert [i["instanceId"] for i in as_runtime.json("instances", "list")] == ["echo_1"]
    assert as_runtime.json("instances", "show", "echo_1")["credentials"]["keyId"] == "k1"
    assert as_runtime.json("instances", "resolve", "echo")["chosen"] == "echo_1"
    out = as_runtime.json("call", "echo.get_item", "--input", '{"item_id": 7}')
    assert out == {"id": 7, "name": "seven"}
    # operational writes the runtime role is granted
    as_runtime.ok(
        "instances",
        "set-credentials",
        "echo_1",
        "--credentials-file",
        str(_write(tmp_path / "new.json", {"apikey": {"key": NEW_API_KEY}})),
    )
    status = '{"state": "active", "lastChecked": "2026-01-01T00:00:00Z"}'
    as_runtime.ok("instances", "update", "echo_1", "--status", status)
    as_runtime.ok("audit", "verify")
    with echo_db.transaction() as s:
        mine = [e for e in audit.tail(s, limit=100) if e.db_role != "prefect_integrations"]
    assert [(e.action, e.db_role) for e in mine] == [
        ("credentials.decrypt", RUNTIME),
        ("method.call", RUNTIME),
        ("credentials.set", RUNTIME),
        ("instance.update", RUNTIME),
    ]


def test_admin_role_cannot_grant_through_the_cli(
    cli_env: dict[str, str],
    db: Database,
    cluster: Any,
    database_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_integrations.models import ADMIN_ROLE

    cli = Cli(capsys, monkeypatch)
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_DATABASE_URL", cluster.url(database=database_name, user=ADMIN_ROLE)
    )
    reset_runtime()
    assert_one_error(
        cli("db", "grant", "--runtime-role", "someone_else"),
        "permission_denied",
        f"role '{ADMIN_ROLE}' does not own integration_audit_log",
    )
    with db.transaction() as s:
        assert not s.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = 'someone_else'")
        ).first()
    # the owner still can
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DATABASE_URL", db.url)
    reset_runtime()
    cli.ok("db", "grant")


def test_provider_rotation_closes_the_http_clients_it_opens(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_rotating(world)
    opened: list[int] = []
    closed: list[int] = []
    init, close = httpx.Client.__init__, httpx.Client.close

    def counting_init(self: httpx.Client, *args: Any, **kwargs: Any) -> None:
        opened.append(id(self))
        init(self, *args, **kwargs)

    def counting_close(self: httpx.Client) -> None:
        closed.append(id(self))
        close(self)

    monkeypatch.setattr(httpx.Client, "__init__", counting_init)
    monkeypatch.setattr(httpx.Client, "close", counting_close)
    _rotate_provider(world)
    assert len(opened) == 3  # mint, verify with the health check, revoke
    assert set(opened) <= set(closed)
