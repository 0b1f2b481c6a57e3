"""Encryption-key rotation against the real test PostgreSQL database.

Rotation is batched (``FOR UPDATE SKIP LOCKED``, one statement and one commit per batch),
resumable after a killed process or a killed connection, runs while credentials are read,
splits the rows between concurrent runs, leaves bad rows untouched and reports them, and
never prints or logs a key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.sql
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import DatabaseError, DatabaseUnavailable, IntegrationError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, key_checks, rekey, rekey_sql, vault

from .factories import make_instance
from .legacy import write_old_shape

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


KIDS = ("k1", "k2", "k3", "k9")


def _secret(i: int) -> str:
    return f"acme-key-{i:04d}"


def _make(db: Database, registry: Registry, keyring: Keyring, count: int) -> list[str]:
    """Create ``count`` acme instances with credentials under the keyring's primary key."""
    ids = [f"acme_{i:04d}" for i in range(count)]
    with db.transaction() as s:
        for i, instance_id in enumerate(ids):
            make_instance(
                s,
                registry,
                keyring,
                instance_id,
                "acme",
                credentials={"apikey": {"key": _secret(i)}},
            )
    return ids


def _all_k2(ids: list[str]) -> dict[str, tuple[str, str]]:
    """What `_fetch_all` returns once every row of `_make` is under k2."""
    return {iid: ("k2", _secret(i)) for i, iid in enumerate(ids)}


def _entry(keyring: Keyring) -> str:
    return ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)


def _rotated_ring(old: Keyring) -> tuple[Keyring, Keyring]:
    """(k2 primary + old keys, k2 only)."""
    new_key = generate_key()
    return parse_keyring(f"k2:{new_key},{_entry(old)}"), parse_keyring(f"k2:{new_key}")


def _rows(db: Database) -> dict[str, Any]:
    with db.transaction() as s:
        return {
            r.instance_id: r
            for r in s.execute(
                sa.text(
                    "SELECT instance_id, key_id, credentials, credentials_version, updated_at "
                    "FROM integration_instances"
                )
            )
        }


def _counts(db: Database, keyring: Keyring) -> dict[str, int]:
    with db.transaction() as s:
        return key_checks.key_counts(s, keyring)


def _fetch_all(db: Database, keyring: Keyring, ids: list[str]) -> dict[str, tuple[str, str]]:
    """instance id -> (key id, api key), each decrypted through the vault."""
    out = {}
    with db.transaction() as s:
        for instance_id in ids:
            creds = vault.fetch_credentials(s, keyring, instance_id, actor="t", purpose="test")
            out[instance_id] = (creds.key_id, creds.reveal()["apikey"]["key"])
    return out


def _rotate_audit(db: Database) -> list[audit.AuditEntry]:
    with db.transaction() as s:
        return audit.tail(s, limit=10_000, action="keys.rotate")


def _keys_of(*rings: Keyring) -> list[str]:
    return [key.get_secret_value() for ring in rings for _, key in ring]


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


def test_rotates_every_row_in_batches_keeping_plaintext_and_version(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 50)
    new, only_k2 = _rotated_ring(keyring)
    before = _rows(synced)
    seen: list[int] = []

    report = rekey.rotate_keys(synced, new, actor="rotator", batch_size=7, on_batch=seen.append)

    assert (report.rotated, report.failed, report.batches) == (50, [], 8)
    assert seen == [7] * 7 + [1]
    assert report.before == {"k1": 50} and report.after == {"k2": 50}
    assert (report.verified, report.problems, report.ok) == (50, [], True)
    assert report.primary == "k2" and report.seconds > 0
    after = _rows(synced)
    for instance_id in ids:
        old_row, new_row = before[instance_id], after[instance_id]
        assert new_row.key_id == "k2" and new_row.credentials["kid"] == "k2"
        assert new_row.credentials["ct"] != old_row.credentials["ct"]
        assert new_row.credentials["meta"] == old_row.credentials["meta"]
        assert new_row.credentials["v"] == old_row.credentials["v"]
        assert new_row.credentials_version == old_row.credentials_version
        assert new_row.updated_at == old_row.updated_at
    expected = _all_k2(ids)
    assert _fetch_all(synced, new, ids) == expected
    assert _fetch_all(synced, only_k2, ids) == expected  # the old key is no longer needed
    # one audit row per batch, in the batch's transaction, naming key ids and counts
    rows = _rotate_audit(synced)
    assert [r.details["count"] for r in rows] == [7] * 7 + [1]
    assert {(r.actor, r.outcome, r.instance_id) for r in rows} == {("rotator", "success", None)}
    assert all(r.details["from"] == ["k1"] and r.details["to"] == "k2" for r in rows)
    assert all(r.details["failed"] == 0 for r in rows)
    with synced.transaction() as s:
        assert audit.verify(s).ok
    # the unchanged version still serves the OAuth compare-and-swap
    version = after[ids[0]].credentials_version
    with synced.transaction() as s:
        assert vault.store_credentials(
            s, new, ids[0], {"apikey": {"key": "next"}}, expected_version=version
        ) == (version + 1)
    # a second run finds nothing to do
    again = rekey.rotate_keys(synced, new, actor="rotator", batch_size=7)
    assert (again.rotated, again.batches, again.after, again.verified) == (0, 0, {"k2": 50}, 50)
    assert len(_rotate_audit(synced)) == 8


def test_rows_without_credentials_are_ignored_and_batch_size_is_checked(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    _make(synced, test_registry, keyring, 3)
    with synced.transaction() as s:
        instances.create_instance(
            s,
            test_registry,
            None,
            instance_id="bare",
            integration_id="acme",
            name="bare",
            scope=Scope("global"),
            actor="t",
        )
    new, _ = _rotated_ring(keyring)
    report = rekey.rotate_keys(synced, new, actor="t")
    assert (report.rotated, report.batches, report.verified, report.after) == (3, 1, 3, {"k2": 3})
    assert _rows(synced)["bare"].credentials is None
    with pytest.raises(ValueError, match="batch_size"):
        rekey.rotate_keys(synced, new, actor="t", batch_size=0)


# --------------------------------------------------------------------------------------
# Bad rows
# --------------------------------------------------------------------------------------


def _spoil(db: Database, keyring: Keyring, ids: list[str]) -> dict[str, str]:
    """Damage five rows in five ways; return instance id -> expected reason."""
    key = keyring.primary.get_secret_value()
    with db.transaction() as s:

        def run_sql(sql: str, **params: Any) -> None:
            s.execute(sa.text(sql), params)

        # valid base64, but not the ciphertext any more
        run_sql(
            "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
            "to_jsonb(overlay(credentials->>'ct' placing 'AAAAAAAAAAAA' from 40 for 12))) "
            "WHERE instance_id = :i",
            i=ids[0],
        )
        # not base64 at all
        run_sql(
            "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
            "'\"!!! not base64 !!!\"') WHERE instance_id = :i",
            i=ids[1],
        )
        # a key id the keyring does not hold
        run_sql(
            "UPDATE integration_instances SET key_id = 'k9', "
            "credentials = jsonb_set(credentials, '{kid}', '\"k9\"') WHERE instance_id = :i",
            i=ids[2],
        )
        # another instance's ciphertext copied over
        run_sql(
            "UPDATE integration_instances SET credentials = (SELECT credentials FROM "
            "integration_instances WHERE instance_id = :victim) WHERE instance_id = :i",
            i=ids[3],
            victim=ids[4],
        )
        # decrypts, but the plaintext is not JSON
        run_sql(
            "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
            "to_jsonb(encode(pgp_sym_encrypt('not json', :k, :o), 'base64'))) "
            "WHERE instance_id = :i",
            i=ids[5],
            k=key,
            o=vault.PGP_OPTIONS,
        )
        # decrypts to JSON bound to the row, but without a credentials object
        run_sql(
            "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
            "to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) WHERE instance_id = :i",
            i=ids[6],
            pt=json.dumps({"instance_id": ids[6], "credentials": "nope"}),
            k=key,
            o=vault.PGP_OPTIONS,
        )
    return {
        ids[0]: rekey.UNDECRYPTABLE,
        ids[1]: rekey.UNDECRYPTABLE,
        ids[2]: rekey.UNKNOWN_KEY_ID,
        ids[3]: rekey.BINDING_MISMATCH,
        ids[5]: rekey.MALFORMED,
        ids[6]: rekey.MALFORMED,
    }


def test_bad_rows_are_reported_left_untouched_and_the_rest_rotated(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 30)
    bad = _spoil(synced, keyring, ids)
    new, only_k2 = _rotated_ring(keyring)
    before = _rows(synced)
    with synced.transaction() as s:
        counted = key_checks.count_keys(s, new)
    assert counted.by_key == {"k1": 29, "k9": 1} and counted.unknown == 1 and counted.total == 30

    report = rekey.rotate_keys(synced, new, actor="rotator", batch_size=4)

    assert sorted(report.failed) == sorted(bad.items())  # each reported once
    assert report.rotated == 30 - len(bad) and not report.ok
    assert report.before == {"k1": 29, "k9": 1}
    assert report.after == {"k1": len(bad) - 1, "k2": 30 - len(bad), "k9": 1}
    assert report.verified == 30 - len(bad)
    assert sorted(report.problems) == sorted(bad.items())
    after = _rows(synced)
    for instance_id in bad:  # left exactly as they were
        assert after[instance_id].credentials == before[instance_id].credentials
        assert after[instance_id].key_id == before[instance_id].key_id
    good = [i for i in ids if i not in bad]
    fetched = _fetch_all(synced, only_k2, good)
    assert fetched == {iid: ("k2", _secret(ids.index(iid))) for iid in good}
    rows = _rotate_audit(synced)
    failures = [r for r in rows if r.instance_id is not None]
    assert {r.outcome for r in failures} == {"failure"}
    assert sorted((r.instance_id, r.details["reason"]) for r in failures) == sorted(bad.items())
    batches = [r for r in rows if r.instance_id is None]
    assert len(batches) == report.batches  # one row per batch, failures-only batches too
    for batch in batches:  # a batch that rotated nothing is a failure
        assert batch.outcome == ("success" if batch.details["count"] else "failure")
    assert sum(r.details["count"] for r in batches) == 30 - len(bad)
    assert sum(r.details["failed"] for r in batches) <= len(bad)  # not-base64/-JSON: row by row
    with synced.transaction() as s:
        assert audit.verify(s).ok


def test_cli_rotate_exits_1_naming_failed_instances_never_keys(
    synced: Database,
    test_registry: Registry,
    keyring: Keyring,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = _make(synced, test_registry, keyring, 12)
    bad = _spoil(synced, keyring, ids)
    new, _ = _rotated_ring(keyring)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _entry(new))
    reset_runtime()
    capsys.readouterr()
    assert run(["keys", "rotate", "--batch-size", "5"]) == 1
    out, err = capsys.readouterr()
    for instance_id, reason in bad.items():
        assert any(instance_id in line and reason in line for line in out.splitlines())
    assert f"rotated: {12 - len(bad)} instance(s)" in out
    assert f"failed: {len(bad)}" in out
    assert "Traceback" not in out + err
    for secret in _keys_of(new):
        assert secret not in out + err
    assert err.splitlines()[-1].startswith("reminder: keep every key (PREFECT_INTEGRATIONS_KEYS)")
    assert run(["keys", "rotate", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["rotated"] == 0 and report["ok"] is False
    assert sorted((f["instance_id"], f["reason"]) for f in report["failed"]) == sorted(bad.items())


@contextmanager
def _statements(db: Database) -> Iterator[list[str]]:
    """The SQL of every statement run on ``db`` meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


def _safe(statements: list[str]) -> list[str]:
    """The statements that decrypted with a subtransaction per row."""
    return [sql for sql in statements if "integration_try_decrypt" in sql]


def test_batches_that_decrypt_run_without_a_subtransaction_per_row(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """Also with a row under a key id the keyring lacks: no key decrypts to NULL."""
    ids = _make(synced, test_registry, keyring, 7)
    unknown = ids[3]
    with synced.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET key_id = 'k9', credentials = "
                "jsonb_set(credentials, '{kid}', '\"k9\"') WHERE instance_id = :i"
            ),
            {"i": unknown},
        )
    new, only_k2 = _rotated_ring(keyring)
    with _statements(synced) as seen:
        report = rekey.rotate_keys(synced, new, actor="rotator", batch_size=3)
    assert (report.rotated, report.batches, report.verified) == (6, 3, 6)
    assert report.failed == report.problems == [(unknown, rekey.UNKNOWN_KEY_ID)]
    assert any("pgp_sym_decrypt" in sql and "FOR UPDATE" in sql for sql in seen)
    assert _safe(seen) == []  # neither the batches nor the verification needed the safe form
    good = [i for i in ids if i != unknown]
    assert _fetch_all(synced, only_k2, good) == {
        iid: ("k2", _secret(ids.index(iid))) for iid in good
    }


def test_a_wrong_key_fails_the_plain_batch_and_the_safe_one_reports_the_row(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """The row is undecryptable, left untouched and audited; the rest of its batch rotates."""
    ids = _make(synced, test_registry, keyring, 6)
    wrong = ids[2]
    with synced.transaction() as s:  # the same key id, another key: decrypting fails
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
                "to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) "
                "WHERE instance_id = :i"
            ),
            {
                "pt": json.dumps({"instance_id": wrong, "credentials": {"apikey": {"key": "x"}}}),
                "k": generate_key(),
                "o": vault.PGP_OPTIONS,
                "i": wrong,
            },
        )
    before = _rows(synced)[wrong]
    new, only_k2 = _rotated_ring(keyring)
    with _statements(synced) as seen:
        report = rekey.rotate_keys(synced, new, actor="rotator", batch_size=10)
    assert report.failed == [(wrong, rekey.UNDECRYPTABLE)]
    assert report.problems == [(wrong, rekey.UNDECRYPTABLE)]
    assert (report.rotated, report.verified) == (5, 5)
    assert report.batches == 1  # one safe statement for the batch, not one per row
    assert len(_safe(seen)) == 2  # that batch, and the verification batch that holds it
    after = _rows(synced)[wrong]
    assert (after.credentials, after.key_id) == (before.credentials, before.key_id)
    good = [i for i in ids if i != wrong]
    assert _fetch_all(synced, only_k2, good) == {
        iid: ("k2", _secret(ids.index(iid))) for iid in good
    }
    rows = _rotate_audit(synced)
    assert [(r.instance_id, r.outcome, r.details["reason"]) for r in rows if r.instance_id] == [
        (wrong, "failure", rekey.UNDECRYPTABLE)
    ]
    (batch,) = [r for r in rows if r.instance_id is None]
    assert (batch.outcome, batch.details["count"], batch.details["failed"]) == ("success", 5, 1)


def test_pgcrypto_errors_are_one_rows_data_and_read_as_undecryptable(synced: Database) -> None:
    """What pgp_sym_decrypt raises on a wrong key sends a batch to the safe form."""

    def error_of(sql: str) -> sa.exc.DBAPIError:
        with synced.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
            conn.execute(sa.text(sql))
        return caught.value

    wrong_key = error_of("SELECT pgp_sym_decrypt(pgp_sym_encrypt('x', 'one'), 'other')")
    assert "Wrong key or corrupt data" in str(wrong_key)
    corrupt = error_of("SELECT pgp_sym_decrypt(decode('AAAAAAAA', 'base64'), 'one')")
    not_base64 = error_of("SELECT decode('!!!', 'base64')")
    not_json = error_of("SELECT CAST('not json' AS jsonb)")
    for exc in (wrong_key, corrupt, not_base64):
        assert rekey_sql.is_data_error(exc)
        assert rekey_sql.data_error_reason(exc) == rekey.UNDECRYPTABLE
    assert rekey_sql.is_data_error(not_json)
    assert rekey_sql.data_error_reason(not_json) == rekey.MALFORMED
    assert not rekey_sql.is_data_error(error_of("SELECT no_such_column FROM integration_instances"))


# --------------------------------------------------------------------------------------
# Interrupted and resumed
# --------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from prefect_integrations.db import Database
    from prefect_integrations.keyring import parse_keyring
    from prefect_integrations.store import rekey

    def on_batch(rotated):
        print("batch", rotated, flush=True)
        time.sleep(float(os.environ["PI_TEST_PAUSE"]))

    db = Database.from_url(os.environ["PI_TEST_URL"])
    keyring = parse_keyring(os.environ["PI_TEST_KEYS"])
    rekey.rotate_keys(db, keyring, actor="child", batch_size=3, on_batch=on_batch)
    print("done", flush=True)
    """
)


def test_killed_process_loses_at_most_its_batch_and_a_rerun_finishes(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 50)
    new, only_k2 = _rotated_ring(keyring)
    env = {
        **os.environ,
        "PI_TEST_URL": synced.url,
        "PI_TEST_KEYS": _entry(new),  # keys in the environment, never on a command line
        "PI_TEST_PAUSE": "0.2",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        batches = 0
        while batches < 3:
            line = child.stdout.readline()
            assert line.startswith("batch"), f"child stopped early: {line!r}"
            batches += 1
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    counts = _counts(synced, new)
    assert sum(counts.values()) == 50
    assert 9 <= counts.get("k2", 0) < 50 and counts.get("k1", 0) > 0  # committed batches stay
    fetched = _fetch_all(synced, new, ids)
    assert {v[0] for v in fetched.values()} == {"k1", "k2"}
    assert {iid: v[1] for iid, v in fetched.items()} == {
        iid: _secret(i) for i, iid in enumerate(ids)
    }

    report = rekey.rotate_keys(synced, new, actor="rerun", batch_size=7)
    assert report.rotated == counts["k1"] and report.failed == []
    assert report.after == {"k2": 50} and report.verified == 50
    assert _fetch_all(synced, only_k2, ids) == {
        iid: ("k2", _secret(i)) for i, iid in enumerate(ids)
    }
    done = _rotate_audit(synced)
    assert sum(r.details["count"] for r in done) == 50  # each row rotated exactly once


def test_killed_connection_is_a_clear_error_and_a_rerun_finishes(
    cluster: EmbeddedCluster,
    database_name: str,
    synced: Database,
    test_registry: Registry,
    keyring: Keyring,
) -> None:
    ids = _make(synced, test_registry, keyring, 50)
    new, only_k2 = _rotated_ring(keyring)
    two_batches = threading.Event()
    calls: list[int] = []
    errors: list[BaseException] = []

    def on_batch(rotated: int) -> None:
        calls.append(rotated)
        if len(calls) == 2:
            two_batches.set()
        time.sleep(0.2)

    def rotate() -> None:
        try:
            rekey.rotate_keys(synced, new, actor="t", batch_size=3, on_batch=on_batch)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=rotate)
    worker.start()
    assert two_batches.wait(30)
    with psycopg.connect(cluster.dsn(database=database_name), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'prefect-integrations' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        ).fetchone()
    worker.join(30)
    assert not worker.is_alive()
    assert killed is not None and killed[0] >= 1
    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, DatabaseUnavailable | DatabaseError), repr(error)
    assert isinstance(error, IntegrationError) and not isinstance(error, psycopg.Error)
    assert "rotate encryption keys" in str(error)
    for secret in _keys_of(new):
        assert secret not in str(error) and secret not in repr(error)

    done_before = _counts(synced, new).get("k2", 0)
    assert done_before >= 6
    report = rekey.rotate_keys(synced, new, actor="t", batch_size=3)
    assert report.rotated == 50 - done_before and report.failed == []
    assert report.after == {"k2": 50} and report.verified == 50
    assert _fetch_all(synced, only_k2, ids) == {
        iid: ("k2", _secret(i)) for i, iid in enumerate(ids)
    }
    assert sum(r.details["count"] for r in _rotate_audit(synced)) == 50


# --------------------------------------------------------------------------------------
# Online: readers, writers, locks, a second run
# --------------------------------------------------------------------------------------


def test_reads_keep_working_while_rotating(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 50)
    new, _ = _rotated_ring(keyring)
    watched = ids[::10]
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[str, str, str]] = []

    def read() -> None:
        while not stop.is_set():
            for instance_id in watched:
                try:
                    with synced.transaction() as s:  # a new session each time
                        creds = vault.fetch_credentials(
                            s, new, instance_id, actor="reader", purpose="call"
                        )
                    seen.append((instance_id, creds.key_id, creds.reveal()["apikey"]["key"]))
                except BaseException as exc:
                    errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        report = rekey.rotate_keys(
            synced, new, actor="t", batch_size=2, on_batch=lambda _: time.sleep(0.01)
        )
        reads_during = len(seen)
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join(30)
    assert errors == []
    assert report.rotated == 50 and report.ok
    assert len(seen) > reads_during > 10
    assert {kid for _, kid, _ in seen} == {"k1", "k2"}
    assert all(value == _secret(ids.index(iid)) for iid, _, value in seen)


def test_two_concurrent_runs_split_the_rows(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 60)
    new, only_k2 = _rotated_ring(keyring)
    barrier = threading.Barrier(2)
    reports: list[rekey.RotationReport] = []
    errors: list[BaseException] = []

    def rotate(actor: str) -> None:
        try:
            barrier.wait(10)
            reports.append(
                rekey.rotate_keys(
                    synced, new, actor=actor, batch_size=3, on_batch=lambda _: time.sleep(0.01)
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(f"run{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(reports) == 2
    assert sum(r.rotated for r in reports) == 60
    assert all(r.rotated > 0 and r.failed == [] for r in reports)
    assert all(r.after == {"k2": 60} and r.verified == 60 for r in reports)
    rows = _rotate_audit(synced)
    assert sum(r.details["count"] for r in rows) == 60  # no row rotated twice
    by_actor = {a: sum(r.details["count"] for r in rows if r.actor == a) for a in ("run1", "run2")}
    assert sorted(by_actor.values()) == sorted(r.rotated for r in reports)
    assert _fetch_all(synced, only_k2, ids) == {
        iid: ("k2", _secret(i)) for i, iid in enumerate(ids)
    }


@contextmanager
def _locked(db: Database, instance_id: str) -> Iterator[sa.Connection]:
    """Hold the row lock of one instance in an open transaction."""
    with db.engine.connect() as conn, conn.begin():
        conn.execute(
            sa.text("SELECT 1 FROM integration_instances WHERE instance_id = :i FOR UPDATE"),
            {"i": instance_id},
        )
        yield conn


def test_a_row_locked_elsewhere_is_skipped_and_waited_for_with_its_new_content(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """A concurrent write under the row lock is neither blocked on nor lost."""
    ids = _make(synced, test_registry, keyring, 20)
    new, only_k2 = _rotated_ring(keyring)
    target = ids[7]
    finished = threading.Event()
    result: list[rekey.RotationReport] = []

    def rotate() -> None:
        result.append(rekey.rotate_keys(synced, new, actor="t", batch_size=4))
        finished.set()

    with _locked(synced, target) as conn, Session(bind=conn) as session:
        # a refresh in flight: new credentials, still under the old key, not yet committed
        version = vault.store_credentials(
            session, keyring, target, {"apikey": {"key": "refreshed"}}
        )
        worker = threading.Thread(target=rotate)
        worker.start()
        deadline = time.monotonic() + 10
        while _counts(synced, new).get("k2", 0) < 19 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _counts(synced, new) == {"k1": 1, "k2": 19}  # everything else done, no wait
        assert not finished.is_set()  # still waiting for the locked row
    # the lock is released with the refresh committed: the rotation picks up its content
    worker.join(30)
    assert finished.is_set()
    (report,) = result
    assert report.rotated == 20 and report.failed == [] and report.after == {"k2": 20}
    fetched = _fetch_all(synced, only_k2, [target])
    assert fetched == {target: ("k2", "refreshed")}
    assert _rows(synced)[target].credentials_version == version


def test_a_row_locked_too_long_is_reported_and_done_by_the_next_run(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 10)
    new, _ = _rotated_ring(keyring)
    with _locked(synced, ids[3]):
        started = time.monotonic()
        report = rekey.rotate_keys(synced, new, actor="t", batch_size=4, lock_wait=0.5)
        # The row stays locked until the block ends: finishing at all shows the run gave up
        # on it after lock_wait; the bound only keeps a regression from hanging the suite.
        assert time.monotonic() - started < 60
    assert report.rotated == 9 and report.failed == [(ids[3], rekey.LOCKED)]
    assert report.after == {"k1": 1, "k2": 9} and not report.ok
    locked = [r for r in _rotate_audit(synced) if r.outcome == "failure"]
    assert [(r.instance_id, r.details["reason"]) for r in locked] == [(ids[3], "locked")]
    again = rekey.rotate_keys(synced, new, actor="t")
    assert again.rotated == 1 and again.ok and again.after == {"k2": 10}


def test_an_open_audit_writer_does_not_hold_up_a_batch(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """The usage recorder appends audit rows, then updates ``last_used_at``. With one
    audit lock for everyone, a batch holding its row locks waited for that lock and
    deadlocked with the recorder; now the batch appends to another audit chain and
    finishes while the recorder's transaction is still open."""
    ids = _make(synced, test_registry, keyring, 10)
    new, only_k2 = _rotated_ring(keyring)
    result: list[rekey.RotationReport] = []
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            result.append(rekey.rotate_keys(synced, new, actor="t", batch_size=100))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=rotate)
    with synced.engine.connect() as writer:
        writer.begin()
        audit.record(
            writer, action=audit.AuditAction.METHOD_CALL, actor="recorder", instance_id=ids[4]
        )
        worker.start()
        worker.join(60)
        finished = not worker.is_alive()
        writer.execute(
            sa.text("UPDATE integration_instances SET last_used_at = now() WHERE instance_id = :i"),
            {"i": ids[4]},
        )
        writer.commit()
    worker.join(30)
    assert finished, "the batch waited for the recorder's transaction"
    assert errors == []
    (report,) = result
    assert report.rotated == 10 and report.ok and report.after == {"k2": 10}
    assert _fetch_all(synced, only_k2, ids) == _all_k2(ids)


# --------------------------------------------------------------------------------------
# CLI and secrecy
# --------------------------------------------------------------------------------------


def test_cli_status_and_rotate_name_key_ids_and_counts_only(
    synced: Database,
    test_registry: Registry,
    keyring: Keyring,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = _make(synced, test_registry, keyring, 20)
    with synced.transaction() as s:  # one row as written before the spec's shape
        write_old_shape(s, keyring, ids[0], {"api_key": _secret(0)})
    new, only_k2 = _rotated_ring(keyring)
    secrets = [*_keys_of(new), *(_secret(i) for i in range(20))]

    def cli(*args: str, code: int = 0) -> str:
        capsys.readouterr()
        assert run(list(args)) == code, capsys.readouterr()
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        for secret in secrets:
            assert secret not in out and secret not in err
        return out

    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _entry(new))
    reset_runtime()
    out = cli("keys", "status")
    assert "primary 'k2'" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:2] in KIDS}
    assert rows == {"k1": ["20", "yes", "no"], "k2": ["0", "yes", "yes", "no"]}
    assert "20 not under the primary key 'k2'" in out
    status = json.loads(cli("keys", "status", "--json"))
    assert status["primary"] == "k2" and status["to_rotate"] == 20 and status["unknown"] == 0
    assert {"key_id": "k1", "instances": 20, "in_keyring": True} in status["by_key"]
    assert status["registered"] == {"k2": "no", "k1": "no"}

    out = cli("keys", "rotate", "--batch-size", "8")
    assert "rotated: 20 instance(s) in 3 batch(es)" in out
    assert "upgraded: 1 instance(s) to the specification's credentials shape" in out
    assert "failed: 0" in out and "verified: 20 ok, 0 problem(s)" in out
    before, after = out.split("after:")
    assert "k1" in before and " 20 " in before
    assert [line.split()[:2] for line in after.splitlines() if line[:2] in KIDS] == [
        ["k1", "0"],
        ["k2", "20"],
    ]
    report = json.loads(cli("keys", "rotate", "--json"))
    assert report["rotated"] == 0 and report["after"] == {"k2": 20} and report["ok"] is True
    assert report["upgraded"] == 0
    assert json.loads(cli("keys", "status", "--json"))["registered"] == {"k2": "yes", "k1": "no"}

    # a keyring that lacks k2: the rows' key id is flagged as not in the keyring
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", f"k3:{generate_key()}")
    reset_runtime()
    out = cli("keys", "status")
    assert any(line.split()[:3] == ["k2", "20", "NO"] for line in out.splitlines())
    assert "20 under a key id not in the keyring" in out
    assert _fetch_all(synced, only_k2, ids[:1]) == {ids[0]: ("k2", _secret(0))}


def test_cli_rotate_shows_progress_on_a_terminal_and_says_what_to_keep(
    synced: Database,
    test_registry: Registry,
    keyring: Keyring,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _make(synced, test_registry, keyring, 6)
    new, _ = _rotated_ring(keyring)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", _entry(new))
    reset_runtime()
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as if on a terminal
    assert run(["keys", "rotate", "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "rotated: 6 instance(s) in 3 batch(es)" in out
    assert "re-encrypting" in err and "6/6" in err  # the bar, on standard error only
    assert "re-encrypting" not in out
    # (the bar is erased with terminal controls before the report's lines)
    reminders = [
        line[line.index("reminder: ") :] for line in err.splitlines() if "reminder: " in line
    ]
    assert reminders == [
        "reminder: keep the primary key 'k2' (PREFECT_INTEGRATIONS_KEYS): every credential "
        "is encrypted under it, and nothing can read them without it",
        "reminder: older keys ('k1') may be dropped from the keyring now, because this "
        "rotation completed with 0 failures; drop a key only after such a run",
    ]
    for secret in _keys_of(new):
        assert secret not in out + err

    assert run(["keys", "rotate", "--json"]) == 0  # no bar with --json, stdout is JSON
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is True
    assert "re-encrypting" not in err and err.startswith("reminder: keep the primary key")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # piped: no bar
    assert run(["keys", "rotate"]) == 0
    assert "re-encrypting" not in capsys.readouterr().err


def test_keys_never_reach_the_server_log(
    cluster: EmbeddedCluster, synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    ids = _make(synced, test_registry, keyring, 8)
    _spoil(synced, keyring, ids)  # the isolation path runs too
    new, _ = _rotated_ring(keyring)
    with synced.engine.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'"))
        conn.commit()
    synced.dispose()
    start = cluster.log_file.stat().st_size
    report = rekey.rotate_keys(synced, new, actor="t", batch_size=3)
    assert report.failed and report.rotated
    with cluster.log_file.open() as handle:
        handle.seek(start)
        logged = handle.read()
    assert "integration_try_decrypt" in logged and "FOR UPDATE" in logged
    for secret in _keys_of(new):
        assert secret not in logged


def test_verification_parses_as_reads_do(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """A row reads refuse (a lone surrogate, NUL) is reported by verification, not counted."""
    ids = _make(synced, test_registry, keyring, 6)
    prefix = '{"instance_id":"%s","credentials":{"apikey":{"key":'
    spoiled = {ids[1]: '"\\ud800abc"}}}', ids[4]: '"a\\u0000b"}}}'}
    with synced.transaction() as s:
        for instance_id, rest in spoiled.items():
            s.execute(
                sa.text(
                    "UPDATE integration_instances SET credentials = jsonb_set(credentials, "
                    "'{ct}', to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) "
                    "WHERE instance_id = :i"
                ),
                {
                    "pt": prefix % instance_id + rest,
                    "k": keyring.primary.get_secret_value(),
                    "o": vault.PGP_OPTIONS,
                    "i": instance_id,
                },
            )
    ok, problems = key_checks.verify_keys(synced, keyring)
    assert ok == 4
    assert sorted(problems) == sorted((i, rekey.MALFORMED) for i in spoiled)

    new, _ = _rotated_ring(keyring)
    report = rekey.rotate_keys(synced, new, actor="rotator", batch_size=4)
    assert report.verified == 4 and not report.ok
    assert sorted(report.problems) == sorted((i, rekey.MALFORMED) for i in spoiled)
    with synced.transaction() as s:
        got = vault.fetch_many(s, new, ids, actor="t", purpose="check")
    assert sorted(i for i, c in got.items() if isinstance(c, Exception)) == sorted(spoiled)


def test_a_wrong_key_row_puts_no_key_in_the_server_log(
    cluster: EmbeddedCluster, synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """A rotation or verification batch fails on a wrong-key row on purpose: even when the
    database logs a failing statement's parameters (any role may ask for that), its keys
    are not among them."""
    ids = _make(synced, test_registry, keyring, 4)
    with synced.transaction() as s:  # one row under k1's id, encrypted with another key
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
                "to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) "
                "WHERE instance_id = :i"
            ),
            {
                "pt": json.dumps({"instance_id": ids[1], "credentials": {"apikey": {"key": "x"}}}),
                "k": generate_key(),
                "o": vault.PGP_OPTIONS,
                "i": ids[1],
            },
        )
        name = s.execute(sa.text("SELECT current_database()")).scalar_one()
    with psycopg.connect(cluster.dsn(database="postgres"), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET log_parameter_max_length_on_error = -1").format(
                psycopg.sql.Identifier(name)
            )
        )
    synced.dispose()
    start = cluster.log_file.stat().st_size
    new, _ = _rotated_ring(keyring)
    report = rekey.rotate_keys(synced, new, actor="t", batch_size=10)
    assert (report.rotated, report.failed) == (3, [(ids[1], rekey.UNDECRYPTABLE)])
    with cluster.log_file.open() as handle:
        handle.seek(start)
        logged = handle.read()
    assert "Wrong key or corrupt data" in logged  # the batch did fail, and was logged
    assert not [key[:6] for key in _keys_of(new) if key in logged]
