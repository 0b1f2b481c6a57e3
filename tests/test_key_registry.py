"""The key registry: fingerprints, `keys register`, `keys rotate`, trust on first use.

A key id's registered fingerprint is what a maintenance worker's key must match; a
worker's primary key must be registered or proven by the rows stored under it. These
tests drive the store functions, the command line and `check_worker` against the real
database (the flows themselves are in tests/test_worker_faults.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator

import pytest

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import KeyringError, WorkerMisconfigured
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.maintenance.worker_checks import check_worker
from prefect_integrations.runtime import reset_runtime
from prefect_integrations.store import audit, key_checks, key_registry

from .clirunner import Cli, assert_one_error
from .factories import make_echo

URL = "http://127.0.0.1:9"  # never called: nothing here talks to a provider


def _ring(*entries: tuple[str, str]) -> Keyring:
    return parse_keyring(",".join(f"{kid}:{key}" for kid, key in entries))


def _registry(db: Database) -> dict[str, bytes]:
    with db.transaction() as session:
        return key_registry.registered(session, ["k0", "k1", "k2", "k3"])


def _registrations(db: Database) -> list[tuple[str, str, str, str]]:
    """(key id, reason, actor, database role) of every ``keys.register`` row."""
    with db.transaction() as session:
        rows = audit.tail(session, limit=100, action=audit.AuditAction.KEYS_REGISTER)
    return [(e.details["key_id"], e.details["reason"], e.actor, e.db_role) for e in rows]


def _check(db: Database, registry: Registry, keyring: Keyring) -> None:
    check_worker(db, registry, keyring, flow="health-check", actor="worker")


def test_fingerprint_is_an_hmac_of_a_label_never_the_key() -> None:
    key = generate_key()
    ring = _ring(("k1", key))
    print_ = key_registry.fingerprint(ring.primary)
    raw = base64.b64decode(key)
    assert print_ == hmac.new(raw, key_registry.FINGERPRINT_LABEL, hashlib.sha256).digest()
    assert len(print_) == 32 and raw not in print_ and print_ != hashlib.sha256(raw).digest()
    assert key_registry.fingerprint(_ring(("k9", key)).primary) == print_  # the key, not the id
    assert key_registry.fingerprint(_ring(("k1", generate_key())).primary) != print_


def test_register_keeps_a_registration_and_refuses_another_key(
    db: Database, keyring: Keyring
) -> None:
    with db.transaction() as session:
        assert key_registry.register(session, keyring, ["k1"], actor="op") == ["k1"]
    with db.transaction() as session:  # again: nothing new, nothing audited
        assert key_registry.register(session, keyring, ["k1"], actor="op") == []
    other = _ring(("k2", generate_key()), ("k1", generate_key()))
    with (
        pytest.raises(KeyringError, match="'k1' are registered with another key"),
        db.transaction() as session,
    ):
        key_registry.register(session, other, other.ids, actor="op")
    # refused as a whole: k2 was not registered either
    assert _registry(db) == {"k1": key_registry.fingerprint(keyring.primary)}
    assert _registrations(db) == [("k1", "operator", "op", "prefect_integrations")]


# --------------------------------------------------------------------------------------
# Trust on first use
# --------------------------------------------------------------------------------------


def test_fresh_store_registers_the_first_key_once_credentials_exist(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    with echo_db.transaction() as session:
        fresh = key_registry.check_keyring(session, keyring)
    assert fresh.empty and fresh.ok and fresh.trusted == ()
    _check(echo_db, echo_registry, keyring)  # nothing stored: nothing to protect yet
    assert _registry(echo_db) == {}

    make_echo(echo_db, echo_registry, keyring, URL, "first")  # the operator's first instance
    _check(echo_db, echo_registry, keyring)
    assert _registry(echo_db) == {"k1": key_registry.fingerprint(keyring.primary)}
    assert _registrations(echo_db) == [("k1", "first_use", "worker", "prefect_integrations")]
    _check(echo_db, echo_registry, keyring)  # registered once
    assert len(_registrations(echo_db)) == 1


def test_existing_store_registers_its_key_through_the_runtime_role(
    echo_db: Database, runtime_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    """An install upgraded with rows under k1 and an empty registry needs no manual step."""
    for instance_id in ("a", "b"):
        make_echo(echo_db, echo_registry, keyring, URL, instance_id)
    _check(runtime_db, echo_registry, keyring)
    assert set(_registry(echo_db)) == {"k1"}
    assert _registrations(echo_db) == [
        ("k1", "first_use", "worker", "prefect_integrations_runtime")
    ]


def test_rows_that_do_not_decrypt_prove_nothing(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    make_echo(echo_db, echo_registry, keyring, URL, "a")
    impostor = _ring(("k1", generate_key()))
    with echo_db.transaction() as session:
        check = key_registry.check_keyring(session, impostor)
    assert check.trusted == () and check.unproven == ("k1",)
    with pytest.raises(WorkerMisconfigured, match="do not decrypt"):
        _check(echo_db, echo_registry, impostor)
    assert _registry(echo_db) == {}


def test_a_new_primary_on_a_store_with_registered_keys_is_refused(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    """No credentials yet, but the operator registered k1: a worker's own k2 is refused."""
    with echo_db.transaction() as session:
        key_registry.register(session, keyring, ["k1"], actor="op")
    worker = _ring(("k2", generate_key()), ("k1", keyring.primary.get_secret_value()))
    with echo_db.transaction() as session:
        check = key_registry.check_keyring(session, worker)
    assert check.primary_unknown and not check.ok
    with pytest.raises(WorkerMisconfigured, match="other keys are registered") as caught:
        _check(echo_db, echo_registry, worker)
    assert caught.value.setting == "PREFECT_INTEGRATIONS_KEYS"
    assert set(_registry(echo_db)) == {"k1"}


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    runner = Cli(capsys, monkeypatch)
    yield runner
    runner.assert_no_secrets()


def _use(cli: Cli, ring: Keyring) -> None:
    text = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in ring)
    cli.monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", text)
    cli.secrets += [key.get_secret_value() for _, key in ring]
    reset_runtime()


def test_cli_register_registers_each_new_key_once(cli: Cli, db: Database, keyring: Keyring) -> None:
    ring = _ring(("k2", generate_key()), ("k1", keyring.primary.get_secret_value()))
    _use(cli, ring)
    assert cli.ok("keys", "register").out == "registered: k2, k1\n"
    assert cli.json("keys", "register") == {
        "registered": [],
        "already_registered": ["k2", "k1"],
    }
    assert [(kid, reason) for kid, reason, _, _ in _registrations(db)] == [
        ("k2", "operator"),
        ("k1", "operator"),
    ]
    assert _registry(db) == {kid: key_registry.fingerprint(key) for kid, key in ring}


def test_cli_register_refuses_another_key_under_a_registered_id(
    cli: Cli, db: Database, keyring: Keyring
) -> None:
    cli.ok("keys", "register")
    _use(cli, _ring(("k3", generate_key()), ("k1", generate_key())))
    assert_one_error(cli("keys", "register"), "keyring_error", "'k1'", "another key")
    assert set(_registry(db)) == {"k1"}  # k3 was not registered either
    assert cli.json("keys", "status")["registered"] == {"k3": "no", "k1": "another key"}
    table = cli.ok("keys", "status").out.splitlines()
    assert "REGISTERED" in table[1] and ["k1", "0", "yes", "another", "key"] in [
        line.split() for line in table
    ]


def test_cli_rotate_registers_the_primary_before_reencrypting(
    cli: Cli, echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    make_echo(echo_db, echo_registry, keyring, URL, "a")
    ring = _ring(("k2", generate_key()), ("k1", keyring.primary.get_secret_value()))
    _use(cli, ring)
    cli.ok("keys", "rotate")
    assert set(_registry(echo_db)) == {"k2"}  # the primary only; k1 was never registered
    with echo_db.transaction() as session:
        assert key_checks.key_counts(session, ring) == {"k2": 1}


def test_cli_rotate_refuses_a_primary_registered_with_another_key(
    cli: Cli, echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    make_echo(echo_db, echo_registry, keyring, URL, "a")
    with echo_db.transaction() as session:
        key_registry.register(session, _ring(("k2", generate_key())), ["k2"], actor="op")
    _use(cli, _ring(("k2", generate_key()), ("k1", keyring.primary.get_secret_value())))
    assert_one_error(cli("keys", "rotate"), "keyring_error", "'k2'")
    with echo_db.transaction() as session:  # nothing re-encrypted
        assert key_checks.key_counts(session, keyring) == {"k1": 1}
