"""A misconfigured maintenance worker fails its run and leaves every instance's status alone.

Each fault of the worker itself (a definition it lacks, a key id its keyring lacks, a
different key under the same id, a database role without rights, definitions that differ
from the database's) must fail the Prefect run with a message naming the setting, write
only a ``maintenance.fault`` audit row, and keep every instance's status as it was.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from prefect.client.schemas.objects import State
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from prefect_integrations.cli import run as cli_run
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.exceptions import WorkerMisconfigured
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.maintenance import health as health_module
from prefect_integrations.maintenance.flows import (
    health_check,
    refresh_tokens,
    rotate_credentials,
)
from prefect_integrations.maintenance.health import HealthChecker
from prefect_integrations.maintenance.worker_checks import check_worker
from prefect_integrations.runtime import reset_runtime
from prefect_integrations.store import audit, instances, key_checks, key_registry
from prefect_integrations.store.definitions import sync_definitions

from .definitions import ECHO
from .factories import make_echo
from .provider import FakeProvider, Reply

OK = Reply(200, {"id": 1, "name": "one"})
IDS = ("alpha", "beta", "gamma")


async def _health_state() -> State[Any]:
    return await health_check(min_interval_seconds=0, return_state=True)


FLOWS: dict[str, Callable[[], State[Any]]] = {
    "health-check": lambda: asyncio.run(_health_state()),
    "refresh-tokens": lambda: refresh_tokens(return_state=True),
    "rotate-credentials": lambda: rotate_credentials(return_state=True),
}


def _statuses(db: Database) -> dict[str, dict[str, Any]]:
    with db.transaction() as session:
        return {i.instance_id: dict(i.status) for i in instances.list_instances(session)}


def _faults(db: Database) -> list[audit.AuditEntry]:
    with db.transaction() as session:
        return audit.tail(session, limit=50, action=audit.AuditAction.MAINTENANCE_FAULT)


@pytest.fixture
def healthy(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> dict[str, dict[str, Any]]:
    """Three echo instances, each checked once (so each is ``active`` with a last check)."""
    for instance_id in IDS:
        make_echo(echo_db, echo_registry, keyring, provider.url, instance_id)
        provider.reply("GET", f"/{instance_id}/items/1", OK)
    report = asyncio.run(
        HealthChecker(echo_db, echo_registry, keyring, actor="tests", min_interval=0).run()
    )
    assert report.counts() == {"ok": 3}
    statuses = _statuses(echo_db)
    assert {s["state"] for s in statuses.values()} == {"active"}
    return statuses


def _assert_fault(
    state: State[Any], db: Database, before: dict[str, dict[str, Any]], setting: str, flow: str
) -> None:
    assert state.is_failed(), state
    assert setting in (state.message or ""), state.message
    assert _statuses(db) == before
    faults = _faults(db)
    assert faults, "no maintenance.fault audit row"
    assert faults[-1].details["setting"] == setting
    assert faults[-1].details["flow"] == flow
    assert faults[-1].outcome == "failure"


#: (setting, its value on the misconfigured worker, what the message must say)
MISSING = {
    "no definition": ("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", "", "'echo' (3 instance(s))"),
    # the keyring of a worker that missed `keys rotate`: another primary, no 'k1'
    "no key": ("PREFECT_INTEGRATIONS_KEYS", f"k0:{generate_key()}", "'k1'"),
}


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("flow", list(FLOWS))
@pytest.mark.parametrize("missing", list(MISSING))
def test_worker_missing_a_definition_or_key_fails_and_changes_nothing(
    harness: Path,
    echo_db: Database,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    flow: str,
    missing: str,
) -> None:
    setting, value, named = MISSING[missing]
    monkeypatch.setenv(setting, value)
    reset_runtime()
    state = FLOWS[flow]()
    _assert_fault(state, echo_db, healthy, setting, flow)
    assert named in (state.message or "")
    with echo_db.transaction() as session:  # nothing was re-encrypted to another key
        assert key_checks.key_counts(session, Keyring((("k1", SecretStr("x")),))) == {"k1": 3}


@pytest.mark.usefixtures("env")
def test_worker_with_another_key_under_the_same_id_fails(
    harness: Path,
    echo_db: Database,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", f"k1:{generate_key()}")
    reset_runtime()
    for flow, run in FLOWS.items():
        state = run()
        _assert_fault(state, echo_db, healthy, "PREFECT_INTEGRATIONS_KEYS", flow)
        assert "do not decrypt" in (state.message or "")


@pytest.mark.usefixtures("env")
def test_worker_with_a_role_without_rights_fails(
    harness: Path,
    echo_db: Database,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    role, password = f"reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    url = make_url(echo_db.url)
    with psycopg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    ) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT CONNECT ON DATABASE {url.database} TO {role}")
        conn.execute(f"GRANT SELECT ON integration_definitions, integration_instances TO {role}")
    query = {k: v for k, v in url.query.items() if k != "passfile"}
    reader = url.set(username=role, password=password, query=query)
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_DATABASE_URL", reader.render_as_string(hide_password=False)
    )
    reset_runtime()
    for run in FLOWS.values():
        state = run()
        assert state.is_failed(), state
        message = state.message or ""
        assert "PREFECT_INTEGRATIONS_DATABASE_URL" in message
        assert "UPDATE on integration_instances" in message
        assert "INSERT on integration_audit_log" in message
        assert _statuses(echo_db) == healthy
    # This role may not append to the audit log: no fault row, and nothing else either.
    assert _faults(echo_db) == []


@pytest.mark.usefixtures("env")
def test_worker_with_other_definitions_than_the_database_fails(
    harness: Path,
    echo_db: Database,
    echo_dir: Path,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    newer = tmp_path / "newer-definitions"
    shutil.copytree(echo_dir, newer)
    for path in newer.glob("*.json"):
        document = json.loads(path.read_text())
        if document.get("integrationId") == "echo":
            document["version"] = "9.9.9"
            path.write_text(json.dumps(document))
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(newer))
    reset_runtime()
    for flow, run in FLOWS.items():
        state = run()
        _assert_fault(state, echo_db, healthy, "PREFECT_INTEGRATIONS_DEFINITIONS_PATH", flow)
        assert "'echo' (database" in (state.message or "")
        assert "this worker 9.9.9" in (state.message or "")


@pytest.mark.usefixtures("env")
def test_runtime_role_passes_the_checks(
    harness: Path,
    echo_db: Database,
    healthy: dict[str, dict[str, Any]],
    runtime_db: Database,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DATABASE_URL", runtime_db.url)
    reset_runtime()
    for run in FLOWS.values():
        assert run().is_completed()
    assert _faults(echo_db) == []


def test_a_fault_met_during_a_sweep_writes_no_status(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second line: a key id missing for one row met mid-sweep stops the batch."""
    monkeypatch.setattr(health_module, "check_worker", lambda *a, **k: None)
    other = Keyring((("k0", keyring.primary),))  # the same key under another id: no k1
    checker = HealthChecker(echo_db, echo_registry, other, actor="tests", min_interval=0)
    with pytest.raises(WorkerMisconfigured) as caught:
        asyncio.run(checker.run())
    assert caught.value.setting == "PREFECT_INTEGRATIONS_KEYS"
    assert _statuses(echo_db) == healthy
    assert _faults(echo_db)[-1].details["flow"] == "health-check"
    # The claims were released: a correct worker checks every instance at once.
    report = asyncio.run(
        HealthChecker(echo_db, echo_registry, keyring, actor="tests", min_interval=0).run()
    )
    assert report.counts() == {"ok": 3}


# --------------------------------------------------------------------------------------
# No false faults: what is the instance's own problem, or outside the run, is no fault
# --------------------------------------------------------------------------------------


def _damage(db: Database, instance_id: str, expression: str) -> None:
    with db.transaction() as session:
        session.execute(
            sa.text(
                f"UPDATE integration_instances SET credentials = {expression} "
                "WHERE instance_id = :i"
            ),
            {"i": instance_id},
        )


def _sweep(db: Database, registry: Registry, keyring: Keyring) -> dict[str, str]:
    report = asyncio.run(HealthChecker(db, registry, keyring, actor="t", min_interval=0).run())
    return {r.instance_id: r.reason for r in report.results}


def test_a_number_jsonb_stores_otherwise_is_no_drift(
    db: Database, keyring: Keyring, provider: FakeProvider, tmp_path: Path
) -> None:
    document = copy.deepcopy(ECHO)
    document["methods"][0]["inputSchema"]["properties"]["item_id"]["maximum"] = 1e23
    (tmp_path / "echo.json").write_text(json.dumps(document))
    registry = load_registry([tmp_path])
    with db.transaction() as session:
        sync_definitions(session, registry, actor="t")
    make_echo(db, registry, keyring, provider.url, "alpha")
    check_worker(db, registry, keyring, flow="health-check", actor="t")  # no fault


@pytest.mark.parametrize(
    "damage",
    [
        "jsonb_set(credentials, '{ct}', '\"!!not-base64!!\"')",  # the ciphertext
        "credentials - 'kid'",  # the envelope's key id
    ],
)
def test_a_damaged_row_is_its_instances_problem_not_the_workers(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    damage: str,
) -> None:
    for instance_id in IDS:
        make_echo(echo_db, echo_registry, keyring, provider.url, instance_id)
        provider.reply("GET", f"/{instance_id}/items/1", OK)
    _damage(echo_db, "beta", damage)
    check_worker(echo_db, echo_registry, keyring, flow="health-check", actor="t")
    reasons = _sweep(echo_db, echo_registry, keyring)
    assert reasons["alpha"] == reasons["gamma"] == "ok"
    assert reasons["beta"] != "ok"
    assert _faults(echo_db) == []


def test_the_checks_cover_only_what_the_run_touches(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    other = Keyring((("k0", SecretStr(generate_key())),))
    make_echo(echo_db, echo_registry, keyring, provider.url, "alpha")  # under k1
    make_echo(echo_db, echo_registry, other, provider.url, "beta")  # under k0
    provider.reply("GET", "/alpha/items/1", OK)
    with pytest.raises(WorkerMisconfigured, match="'k0'"):
        check_worker(echo_db, echo_registry, keyring, flow="health-check", actor="t")
    checker = HealthChecker(echo_db, echo_registry, keyring, actor="t", min_interval=0)
    report = asyncio.run(checker.run(instance_ids=["alpha"]))
    assert report.counts() == {"ok": 1}
    check_worker(
        echo_db, echo_registry, other, flow="health-check", actor="t", instance_ids=["beta"]
    )


# --------------------------------------------------------------------------------------
# The key registry: a worker may not bring its own primary key
# --------------------------------------------------------------------------------------


def _registry(db: Database) -> dict[str, bytes]:
    with db.transaction() as session:
        return key_registry.registered(session, ["k0", "k1", "k2"])


def _ring_text(ring: Keyring) -> str:
    return ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in ring)


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("registered", [True, False], ids=["k1 registered", "registry empty"])
def test_worker_with_its_own_primary_key_fails_and_reencrypts_nothing(
    harness: Path,
    echo_db: Database,
    keyring: Keyring,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    registered: bool,
) -> None:
    """The review's reproduction: operator keyring k1:K, worker keyring k2:<its own>,k1:K."""
    assert set(_registry(echo_db)) == {"k1"}  # the first health check registered k1
    if not registered:  # an install upgraded before any worker ran
        with echo_db.transaction() as session:
            session.execute(sa.text("DELETE FROM integration_keys"))
    worker = parse_keyring(f"k2:{generate_key()},k1:{keyring.primary.get_secret_value()}")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _ring_text(worker))
    reset_runtime()
    for flow, run in FLOWS.items():
        state = run()
        _assert_fault(state, echo_db, healthy, "PREFECT_INTEGRATIONS_KEYS", flow)
        message = state.message or ""
        assert "primary key 'k2' is not registered" in message
        assert "stored credentials are under 'k1'" in message
        assert "`prefect-integrations keys rotate`" in message
    with echo_db.transaction() as session:  # nothing was re-encrypted to the worker's key
        assert key_checks.key_counts(session, keyring) == {"k1": 3}
    assert set(_registry(echo_db)) == ({"k1"} if registered else set())


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("how", ["keys rotate", "keys register"])
def test_worker_with_the_operators_new_primary_passes(
    harness: Path,
    echo_db: Database,
    keyring: Keyring,
    healthy: dict[str, dict[str, Any]],
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The operator adds k2 as primary and registers it; a worker holding k2,k1 then runs."""
    operator = parse_keyring(f"k2:{generate_key()},k1:{keyring.primary.get_secret_value()}")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _ring_text(operator))
    reset_runtime()
    assert cli_run(how.split()) == 0
    assert set(_registry(echo_db)) == {"k1", "k2"}
    # the worker, given the operator's keyring
    reset_runtime()
    for flow, run in FLOWS.items():
        assert run().is_completed(), flow
    with echo_db.transaction() as session:
        assert key_checks.key_counts(session, operator) == {"k2": 3}
        registrations = audit.tail(session, action=audit.AuditAction.KEYS_REGISTER)
    assert [(e.details["key_id"], e.details["reason"]) for e in registrations] == [
        ("k1", "first_use"),
        ("k2", "operator"),
    ]
    assert _faults(echo_db) == []


@pytest.mark.usefixtures("env")
def test_worker_with_another_key_under_a_registered_id_fails(
    harness: Path,
    echo_db: Database,
    keyring: Keyring,
    healthy: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key id with no rows is still held to its registered key."""
    with echo_db.transaction() as session:
        key_registry.register(
            session, parse_keyring(f"k0:{generate_key()}"), ["k0"], actor="operator"
        )
    worker = parse_keyring(f"k1:{keyring.primary.get_secret_value()},k0:{generate_key()}")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _ring_text(worker))
    reset_runtime()
    for flow, run in FLOWS.items():
        state = run()
        _assert_fault(state, echo_db, healthy, "PREFECT_INTEGRATIONS_KEYS", flow)
        assert "key(s) 'k0' differ from the key(s) registered" in (state.message or "")
