from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations import db as dbmod
from prefect_integrations.db import Database
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import PermissionDenied
from prefect_integrations.store.audit_seal import seal_pending
from prefect_integrations.store.grants import apply_grants

from .spec import EXTRA_COLUMNS, SPEC_COLUMNS, SPEC_INDEXES
from .test_schema import columns as _columns
from .test_schema import indexes as _indexes

# The head schema: the specification's columns plus the package's extra columns.
SCHEMA = {table: {**SPEC_COLUMNS[table], **EXTRA_COLUMNS[table]} for table in SPEC_COLUMNS}
# The schema of revision 0004, before the specification's layout (revision 0005).
SCHEMA_0004 = {
    "integration_definitions": {
        "id": ("character varying", 255, "NO"),
        "name": ("character varying", 255, "NO"),
        "description": ("text", None, "YES"),
        "version": ("character varying", 50, "NO"),
        "definition": ("jsonb", None, "NO"),
        "created_at": ("timestamp with time zone", None, "YES"),
        "updated_at": ("timestamp with time zone", None, "YES"),
    },
    "integration_instances": {
        **{
            name: shape
            for name, shape in SCHEMA["integration_instances"].items()
            if name not in ("integration_definition_id", "description")
        },
        "integration_id": ("character varying", 255, "NO"),
        "context_type": ("character varying", 20, "NO"),
    },
}
INDEXES = {
    **SPEC_INDEXES,
    "idx_integration_instances_last_used_at": "btree (last_used_at)",
    "idx_integration_definitions_name": "btree (name)",
    "idx_integration_instances_key_id": "btree (key_id)",
    "idx_integration_instances_token_expires_at": "btree (token_expires_at) WHERE",
}


@pytest.fixture
def empty_db(cluster: EmbeddedCluster) -> Iterator[Database]:
    name = "pi_empty_migrations"
    cluster.drop_database(name)
    url = cluster.ensure_running(database=name)
    database = Database.from_url(url)
    yield database
    database.dispose()
    cluster.drop_database(name)


def _tables(db: Database) -> set[str]:
    with db.transaction() as s:
        return set(
            s.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
        )


NOTIFY_TRIGGERS = {"integration_instances_notify_write", "integration_instances_notify_update"}


def _notify_objects(db: Database) -> tuple[set[str], bool]:
    """The change-notification triggers on instances, and whether their function exists."""
    with db.transaction() as s:
        triggers = set(
            s.execute(
                sa.text(
                    "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
                    "AND tgrelid = to_regclass('integration_instances')"
                )
            ).scalars()
        )
        function = s.execute(
            sa.text("SELECT to_regprocedure('integration_instances_notify()') IS NOT NULL")
        ).scalar_one()
    return triggers, bool(function)


def test_upgrade_downgrade_upgrade(empty_db: Database) -> None:
    assert dbmod.current_revision(empty_db) is None
    dbmod.upgrade(empty_db)
    assert dbmod.current_revision(empty_db) == dbmod.head_revision()
    assert _columns(empty_db) == SCHEMA
    indexes = _indexes(empty_db)
    for name, shape in INDEXES.items():
        assert shape in indexes[name], (name, indexes.get(name))
    with empty_db.transaction() as s:
        assert (
            s.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pgcrypto'")).scalar()
            == 1
        )

    assert _notify_objects(empty_db) == (NOTIFY_TRIGGERS, True)
    with empty_db.transaction() as s:
        update = s.execute(
            sa.text(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
                "WHERE tgname = 'integration_instances_notify_update'"
            )
        ).scalar_one()
    # row-level, and only when what resolution reads changes (not every status write)
    assert "FOR EACH ROW WHEN" in update and "'state'::text" in update, update
    assert _key_registry(empty_db) == KEY_REGISTRY
    dbmod.downgrade(empty_db, "2026_11_29_0005")
    assert "integration_keys" not in _tables(empty_db)
    assert _columns(empty_db) == SCHEMA
    dbmod.upgrade(empty_db)
    assert _key_registry(empty_db) == KEY_REGISTRY
    dbmod.downgrade(empty_db, "2026_11_27_0004")
    assert _columns(empty_db) == SCHEMA_0004
    assert _notify_objects(empty_db) == (NOTIFY_TRIGGERS, True)
    dbmod.downgrade(empty_db, "2026_11_27_0003")
    assert _notify_objects(empty_db) == (set(), False)
    assert _columns(empty_db) == SCHEMA_0004

    dbmod.downgrade(empty_db, "base")
    assert dbmod.current_revision(empty_db) is None
    assert _tables(empty_db) == {"prefect_integrations_alembic_version"}

    dbmod.upgrade(empty_db)
    apply_grants(empty_db)  # roles exist already: grants are idempotent
    assert _columns(empty_db) == SCHEMA
    assert _notify_objects(empty_db) == (NOTIFY_TRIGGERS, True)
    assert set(INDEXES) <= set(_indexes(empty_db))
    assert {
        "integration_definitions",
        "integration_instances",
        "integration_audit_log",
        "integration_keys",
    } <= _tables(empty_db)
    assert _key_registry(empty_db) == KEY_REGISTRY


#: The key registry of revision 0006: key id, fingerprint (never the key), when, by whom.
KEY_REGISTRY = {
    "key_id": ("character varying", 64, "NO"),
    "fingerprint": ("bytea", None, "NO"),
    "registered_at": ("timestamp with time zone", None, "NO"),
    "registered_by": ("text", None, "YES"),
}


def _key_registry(db: Database) -> dict[str, tuple[str, int | None, str]]:
    with db.transaction() as s:
        rows = s.execute(
            sa.text(
                "SELECT column_name, data_type, character_maximum_length, is_nullable "
                "FROM information_schema.columns WHERE table_name = 'integration_keys'"
            )
        ).all()
    return {r.column_name: (r.data_type, r.character_maximum_length, r.is_nullable) for r in rows}


def test_key_registry_grants(db: Database, runtime_db: Database, admin_db: Database) -> None:
    """Workers read the registry and register on first use; only the admin changes a row."""
    insert = sa.text(
        "INSERT INTO integration_keys (key_id, fingerprint) "
        "VALUES (:k, decode(repeat('ab', 32), 'hex'))"
    )
    with runtime_db.transaction() as s:
        s.execute(insert, {"k": "k1"})
        assert s.execute(sa.text("SELECT count(*) FROM integration_keys")).scalar() == 1
    with pytest.raises(PermissionDenied), runtime_db.transaction() as s:
        s.execute(sa.text("UPDATE integration_keys SET registered_by = 'x'"))
    with pytest.raises(PermissionDenied), runtime_db.transaction() as s:
        s.execute(sa.text("DELETE FROM integration_keys"))
    with admin_db.transaction() as s:
        s.execute(sa.text("UPDATE integration_keys SET registered_by = 'admin'"))
    with pytest.raises(sa.exc.IntegrityError), db.transaction() as s:  # 32 bytes only
        s.execute(
            sa.text(
                "INSERT INTO integration_keys (key_id, fingerprint) "
                "VALUES ('k2', decode(repeat('ab', 16), 'hex'))"
            )
        )


def test_missing_schema_is_a_clear_error(empty_db: Database) -> None:
    from prefect_integrations.exceptions import DatabaseError
    from prefect_integrations.store.instances import list_instances

    with (
        pytest.raises(DatabaseError, match="run `prefect-integrations db upgrade`"),
        empty_db.transaction() as s,
    ):
        list_instances(s)


def _audit_rows(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as s:
        return [
            tuple(r)
            for r in s.execute(
                sa.text(
                    "SELECT id, actor, details::text, prev_hash, hash "
                    "FROM integration_audit_log ORDER BY id"
                )
            )
        ]


def _append_rows(db: Database, actor: str, n: int) -> None:
    for i in range(n):
        with db.transaction() as s:
            s.execute(
                sa.text(
                    "INSERT INTO integration_audit_log (actor, action, outcome, details) "
                    "VALUES (:a, 'health.check', 'success', CAST(:d AS jsonb))"
                ),
                {"a": actor, "d": f'{{"i": {i}, "s": "é\\\\n\\"😀"}}'},
            )


def _single_chain_intact(db: Database) -> bool:
    """The verification of revision 0005: one chain in id order, ids without a gap."""
    with db.transaction() as s:
        return bool(
            s.execute(
                sa.text(
                    "SELECT bool_and(ok) FROM (SELECT "
                    "hash = integration_audit_hash(lag(hash) OVER w, l) "
                    "AND prev_hash IS NOT DISTINCT FROM lag(hash) OVER w "
                    "AND id = row_number() OVER w AS ok FROM integration_audit_log l "
                    "WINDOW w AS (ORDER BY id)) x"
                )
            ).scalar()
        )


def test_audit_rows_survive_the_chains_both_ways(empty_db: Database) -> None:
    """Rows of one chain become chain 0's history, verified in Python; downgrading
    re-links every row, of every chain, into the one chain of the previous layout."""
    from prefect_integrations.store import audit

    dbmod.upgrade(empty_db, "2026_11_30_0006")
    _append_rows(empty_db, "before", 3)
    before = _audit_rows(empty_db)
    dbmod.upgrade(empty_db)
    assert _audit_rows(empty_db) == before
    with empty_db.transaction() as s:
        report = audit.verify(s)
    assert report.ok, report.problems
    assert [(c.chain, c.seq, c.head) for c in report.chains] == [(0, 3, before[-1][4].hex())]
    _append_rows(empty_db, "after", 3)
    with empty_db.transaction() as s:
        assert audit.verify(s).ok
    assert [r[0] for r in _audit_rows(empty_db)] == [1, 2, 3, 4, 5, 6]

    dbmod.downgrade(empty_db, "2026_11_30_0006")
    assert _single_chain_intact(empty_db)
    assert _audit_rows(empty_db)[:3] == before
    _append_rows(empty_db, "old trigger", 1)
    assert _single_chain_intact(empty_db)

    dbmod.upgrade(empty_db)
    _append_rows(empty_db, "again", 2)
    seal_pending(empty_db)
    with empty_db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and report.rows == 9, report.problems


def test_rows_chained_by_the_trigger_and_by_the_sealer_verify_alike(empty_db: Database) -> None:
    """Revision 0009: rows the chaining trigger of 0008 wrote, in several chains, stay
    valid; new rows wait for the sealer; downgrading seals them and brings the chaining
    trigger back."""
    from prefect_integrations.store import audit

    dbmod.upgrade(empty_db, "2026_11_30_0008")
    for chain in (3, 7):
        with empty_db.transaction() as s:
            s.execute(
                sa.text("SELECT set_config('prefect_integrations.audit_chain', :c, true)"),
                {"c": str(chain)},
            )
            for i in range(2):
                s.execute(
                    sa.text(
                        "INSERT INTO integration_audit_log (actor, action, outcome, details) "
                        "VALUES ('chained', 'health.check', 'success', CAST(:d AS jsonb))"
                    ),
                    {"d": f'{{"i": {i}}}'},
                )
    dbmod.upgrade(empty_db)
    _append_rows(empty_db, "stamped", 3)
    with empty_db.transaction() as s:
        report = audit.verify(s)
    assert report.ok, report.problems
    assert [(c.chain, c.rows) for c in report.chains] == [(3, 2), (7, 2)]
    assert report.unsealed == 3
    seal_pending(empty_db)
    with empty_db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and (report.rows, report.unsealed) == (7, 0)
    assert [(c.chain, c.rows) for c in report.chains] == [(0, 3), (3, 2), (7, 2)]

    _append_rows(empty_db, "unsealed", 2)
    dbmod.downgrade(empty_db, "2026_11_30_0008")
    with empty_db.transaction() as s:
        empty = s.execute(
            sa.text("SELECT count(*) FROM integration_audit_log WHERE seq IS NULL")
        ).scalar_one()
    assert empty == 0
    _append_rows(empty_db, "chained again", 1)  # NOT NULL columns: the trigger chains it
    dbmod.upgrade(empty_db)
    with empty_db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and report.rows == 10, report.problems


def test_the_upgrade_narrows_what_roles_could_write_to_the_log(empty_db: Database) -> None:
    """A role granted INSERT and UPDATE on the log before revision 0009 may afterwards
    append a row's content and call the sealer, nothing more: no window in which it could
    write an id, a time or a role that the sealer would then chain."""
    from prefect_integrations.store import audit

    dbmod.upgrade(empty_db, "2026_11_30_0008")
    with empty_db.transaction() as s:
        s.execute(
            sa.text(
                "DO $$ BEGIN CREATE ROLE pi_legacy_writer; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        )
        s.execute(sa.text("GRANT INSERT, UPDATE ON integration_audit_log TO pi_legacy_writer"))
        s.execute(sa.text("GRANT INSERT ON integration_audit_log TO PUBLIC"))
    dbmod.upgrade(empty_db)
    with empty_db.transaction() as s:
        may = s.execute(
            sa.text(
                "SELECT has_column_privilege('pi_legacy_writer', 'integration_audit_log', "
                "'actor', 'INSERT') AS content, "
                "has_column_privilege('pi_legacy_writer', 'integration_audit_log', 'id', "
                "'INSERT') AS id, "
                "has_any_column_privilege('pi_legacy_writer', 'integration_audit_log', "
                "'UPDATE') AS updates, "
                "has_function_privilege('pi_legacy_writer', "
                "'integration_audit_seal(bigint, integer, double precision)', 'EXECUTE') AS seals"
            )
        ).one()
        report = audit.verify(s)
    assert (may.content, may.id, may.updates, may.seals) == (True, False, False, True)
    assert report.ok, report.problems
