from __future__ import annotations

import pickle

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import (
    DecryptionError,
    InstanceNotFound,
    NoCredentials,
    UnknownKeyId,
    ValidationError,
)
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, vault

from .factories import api_key, make_instance

CANARY = "canary-SECRET-7f3a9c"


def test_round_trip_and_envelope(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    with synced.transaction() as s:
        raw = s.execute(
            sa.text(
                "SELECT credentials, key_id, credentials::text AS txt FROM integration_instances"
            )
        ).one()
        creds = vault.fetch_credentials(s, keyring, "acme_1", actor="t", purpose="test")
    assert set(raw.credentials) == {"v", "kid", "ct", "meta"}
    assert raw.credentials["kid"] == "k1" and raw.key_id == "k1"
    assert CANARY not in raw.txt
    assert raw.credentials["meta"] == {"kind": "apikey", "fields": ["key"]}
    secret = creds.secret("apikey", "key")
    assert secret is not None and secret.get_secret_value() == CANARY
    assert CANARY not in repr(creds) and CANARY not in str(creds)
    assert CANARY not in str(creds.masked())
    with pytest.raises(TypeError):
        pickle.dumps(creds)


def test_ciphertext_is_an_authenticated_pgp_message(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    with synced.transaction() as s:
        info = s.execute(
            sa.text(
                "SELECT pgp_sym_decrypt(decode(credentials->>'ct','base64'), :k) AS pt "
                "FROM integration_instances"
            ),
            {"k": keyring.primary.get_secret_value()},
        ).scalar()
    assert info is not None and '"instance_id":"acme_1"' in info


def test_decrypt_is_audited_in_the_same_transaction(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    with synced.transaction() as s:
        vault.fetch_credentials(s, keyring, "acme_1", actor="alice", purpose="call")
        rows = audit.tail(s, action="credentials.decrypt")
    assert [(r.actor, r.outcome, r.details["purpose"]) for r in rows] == [
        ("alice", "success", "call")
    ]
    # rolled back with the caller: a success row is part of the caller's transaction
    with synced.sessions() as s:
        vault.fetch_credentials(s, keyring, "acme_1", actor="bob", purpose="call")
        s.rollback()
    with synced.transaction() as s:
        assert [r.actor for r in audit.tail(s, action="credentials.decrypt")] == ["alice"]


def test_wrong_key_names_key_and_instance_and_is_audited(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    wrong = parse_keyring(f"k1:{generate_key()}")
    with pytest.raises(DecryptionError) as info, synced.transaction() as s:
        vault.fetch_credentials(s, wrong, "acme_1", actor="t", purpose="call")
    message = str(info.value)
    assert "acme_1" in message and "'k1'" in message
    assert wrong.primary.get_secret_value() not in message
    assert keyring.primary.get_secret_value() not in message
    # the failure row survives the caller's rollback
    with synced.transaction() as s:
        rows = audit.tail(s, action="credentials.decrypt")
    assert [(r.outcome, r.details["reason"]) for r in rows] == [("failure", "wrong_key_or_corrupt")]


def test_unknown_key_id(synced: Database, test_registry: Registry, keyring: Keyring) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    other = parse_keyring(f"k9:{generate_key()}")
    with (
        pytest.raises(UnknownKeyId, match=r"acme_1.*'k1'.*not in the keyring"),
        synced.transaction() as s,
    ):
        vault.fetch_credentials(s, other, "acme_1", actor="t", purpose="call")


def test_reads_old_rows_with_their_key_after_a_new_primary(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_old", "acme", credentials=api_key(CANARY))
    old_entry = f"k1:{keyring.primary.get_secret_value()}"
    rotated = parse_keyring(f"k2:{generate_key()},{old_entry}")
    make_instance(
        synced, test_registry, rotated, "acme_new", "acme", credentials=api_key("other-secret")
    )
    with synced.transaction() as s:
        old = vault.fetch_credentials(s, rotated, "acme_old", actor="t", purpose="t")
        new = vault.fetch_credentials(s, rotated, "acme_new", actor="t", purpose="t")
    assert (old.key_id, new.key_id) == ("k1", "k2")
    assert old.reveal() == {"apikey": {"key": CANARY}}
    assert new.reveal() == {"apikey": {"key": "other-secret"}}


def test_ciphertext_copied_to_another_row_is_refused(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "victim", "acme", credentials=api_key(CANARY))
    make_instance(
        synced, test_registry, keyring, "attacker", "acme", credentials=api_key("attacker-token")
    )
    with synced.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = "
                "(SELECT credentials FROM integration_instances WHERE instance_id = 'victim') "
                "WHERE instance_id = 'attacker'"
            )
        )
    with (
        pytest.raises(DecryptionError, match="bound to another instance"),
        synced.transaction() as s,
    ):
        vault.fetch_credentials(s, keyring, "attacker", actor="t", purpose="call")
    with synced.transaction() as s:
        failures = [
            r for r in audit.tail(s, action="credentials.decrypt") if r.outcome == "failure"
        ]
    assert [r.details["reason"] for r in failures] == ["instance_binding_mismatch"]


def test_missing_instance_and_missing_credentials(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    with synced.transaction() as s:
        instances.create_instance(
            s,
            test_registry,
            None,
            instance_id="bare",
            integration_id="acme",
            name="Bare",
            scope=Scope("global"),
            actor="t",
        )
    with pytest.raises(InstanceNotFound), synced.transaction() as s:
        vault.fetch_credentials(s, keyring, "nope", actor="t", purpose="call")
    with (
        pytest.raises(NoCredentials, match="'bare' has no stored credentials"),
        synced.transaction() as s,
    ):
        vault.fetch_credentials(s, keyring, "bare", actor="t", purpose="call")


def test_keys_and_plaintext_never_reach_the_server_log(
    cluster: EmbeddedCluster, synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    key = keyring.primary.get_secret_value()
    with synced.engine.connect() as conn:  # log everything this database runs from now on
        conn.execute(sa.text("SELECT current_database()"))
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'"))
        conn.commit()
    synced.dispose()
    before = cluster.log_file.stat().st_size
    make_instance(synced, test_registry, keyring, "acme_log", "acme", credentials=api_key(CANARY))
    with synced.transaction() as s:
        s.execute(sa.text("SELECT 1 AS marker_for_log"))
        vault.fetch_credentials(s, keyring, "acme_log", actor="t", purpose="call")
    wrong = parse_keyring(f"k1:{generate_key()}")
    with pytest.raises(DecryptionError), synced.transaction() as s:
        vault.fetch_credentials(s, wrong, "acme_log", actor="t", purpose="call")
    with cluster.log_file.open() as handle:
        handle.seek(before)
        logged = handle.read()
    assert "marker_for_log" in logged  # the statements were logged
    assert "integration_try_decrypt" in logged
    for secret in (key, wrong.primary.get_secret_value(), CANARY):
        assert secret not in logged


def _write_plaintext(db: Database, keyring: Keyring, instance_id: str, plaintext: str) -> None:
    """Encrypt ``plaintext`` into the row directly, as a row written before input checks."""
    with db.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
                "to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) "
                "WHERE instance_id = :i"
            ),
            {
                "pt": plaintext,
                "k": keyring.primary.get_secret_value(),
                "o": vault.PGP_OPTIONS,
                "i": instance_id,
            },
        )


def test_an_unreadable_row_fails_alone_never_its_batch(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = ["good_1", "surrogate", "nul", "not_json", "not_base64", "pair", "spaced", "good_2"]
    for iid in ids:
        make_instance(synced, test_registry, keyring, iid, "acme", credentials=api_key(CANARY))
    prefix = '{"instance_id":"%s","credentials":{"apikey":{"key":'
    _write_plaintext(synced, keyring, "surrogate", prefix % "surrogate" + '"\\ud800abc"}}}')
    _write_plaintext(synced, keyring, "nul", prefix % "nul" + '"a\\u0000b"}}}')
    _write_plaintext(synced, keyring, "not_json", "not json")
    # readable, but not in the canonical form: checked and audited outside the statement
    _write_plaintext(synced, keyring, "pair", prefix % "pair" + '"\\ud83d\\ude00"}}}')
    _write_plaintext(
        synced,
        keyring,
        "spaced",
        '{"instance_id": "spaced", "credentials": {"apikey": {"key": "k"}}}',
    )
    with synced.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
                "'\"not base64!\"') WHERE instance_id = 'not_base64'"
            )
        )

    with synced.transaction() as s:
        got = vault.fetch_many(s, keyring, ids, actor="t", purpose="health_check")
    assert set(got) == set(ids)
    for iid in ("good_1", "good_2"):
        creds = got[iid]
        assert not isinstance(creds, Exception)
        secret = creds.secret("apikey", "key")
        assert secret is not None and secret.get_secret_value() == CANARY
    pair, spaced = got["pair"], got["spaced"]
    assert not isinstance(pair, Exception) and not isinstance(spaced, Exception)
    assert pair.reveal() == {"apikey": {"key": "\U0001f600"}}
    assert spaced.reveal() == {"apikey": {"key": "k"}}
    for iid in ("surrogate", "nul", "not_json", "not_base64"):
        error = got[iid]
        assert isinstance(error, DecryptionError), iid
        assert iid in str(error) and CANARY not in str(error)
        with pytest.raises(DecryptionError), synced.transaction() as s:
            vault.fetch_credentials(s, keyring, iid, actor="t", purpose="call")

    with synced.transaction() as s:
        rows = [r for r in audit.tail(s, limit=100, action="credentials.decrypt")]
        assert audit.verify(s).ok
    batch = [r for r in rows if r.details["purpose"] == "health_check"]
    outcomes = {r.instance_id: (r.outcome, r.details.get("reason")) for r in batch}
    assert len(batch) == len(ids)  # one row each, success or failure
    assert outcomes == {
        "good_1": ("success", None),
        "good_2": ("success", None),
        "pair": ("success", None),
        "spaced": ("success", None),
        "surrogate": ("failure", "malformed"),
        "nul": ("failure", "malformed"),
        "not_json": ("failure", "malformed"),
        "not_base64": ("failure", "wrong_key_or_corrupt"),
    }


def test_unstorable_credentials_are_refused_before_anything_is_written(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    make_instance(synced, test_registry, keyring, "acme_1", "acme", credentials=api_key(CANARY))
    for bad in ("\ud800abc", "a\x00b"):
        with (
            pytest.raises(ValidationError, match=r"apikey\.key") as info,
            synced.transaction() as s,
        ):
            instances.set_credentials(s, test_registry, keyring, "acme_1", api_key(bad), actor="t")
        assert "surrogate" in str(info.value) or "NUL" in str(info.value)
        with pytest.raises(ValidationError, match=r"apikey\.key"), synced.transaction() as s:
            vault.store_credentials(s, keyring, "acme_1", api_key(bad))
    with synced.transaction() as s:
        creds = vault.fetch_credentials(s, keyring, "acme_1", actor="t", purpose="call")
    secret = creds.secret("apikey", "key")
    assert secret is not None and secret.get_secret_value() == CANARY
