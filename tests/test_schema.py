"""The database schema is the specification's: tables, column types, the five named indexes.

Also: revision 0005 converts a database of the previous layout in place, with its rows,
and converts it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from prefect_integrations import db as dbmod
from prefect_integrations.db import Database
from prefect_integrations.embedded import EmbeddedCluster

from .spec import (
    EXTRA_COLUMNS,
    SPEC_COLUMNS,
    SPEC_INDEXES,
    spec_document,
    spec_index_names,
    spec_tables,
)

BEFORE = "2026_11_27_0004"
TABLES = ("integration_definitions", "integration_instances")


def columns(db: Database) -> dict[str, dict[str, tuple[str, int | None, str]]]:
    with db.transaction() as s:
        rows = s.execute(
            sa.text(
                "SELECT table_name, column_name, data_type, character_maximum_length, "
                "is_nullable FROM information_schema.columns "
                "WHERE table_name = ANY(CAST(:tables AS text[]))"
            ),
            {"tables": list(TABLES)},
        ).all()
    out: dict[str, dict[str, tuple[str, int | None, str]]] = {}
    for r in rows:
        out.setdefault(r.table_name, {})[r.column_name] = (
            r.data_type,
            r.character_maximum_length,
            r.is_nullable,
        )
    return out


def indexes(db: Database) -> dict[str, str]:
    with db.transaction() as s:
        rows = s.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE tablename = ANY(CAST(:tables AS text[]))"
            ),
            {"tables": list(TABLES)},
        ).all()
    return {r.indexname: r.indexdef for r in rows}


def test_tables_are_the_specifications(db: Database) -> None:
    found = columns(db)
    for table, spec in SPEC_COLUMNS.items():
        for name, shape in spec.items():
            assert found[table].get(name) == shape, (table, name)
        extra = set(found[table]) - set(spec)
        assert extra == set(EXTRA_COLUMNS[table]), (table, extra)
        for name in extra:
            assert found[table][name] == EXTRA_COLUMNS[table][name], (table, name)


def test_the_five_indexes_have_the_specifications_names(db: Database) -> None:
    found = indexes(db)
    for name, definition in SPEC_INDEXES.items():
        assert found.get(name) == f"CREATE {definition}", name
    with db.transaction() as s:
        foreign_key = s.execute(
            sa.text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'fk_integration_instances_definition'"
            )
        ).scalar_one()
    assert foreign_key == (
        "FOREIGN KEY (integration_definition_id) REFERENCES integration_definitions(id)"
    )


def test_the_held_copy_is_the_specification() -> None:
    text = spec_document()
    if text is None:
        pytest.skip("the shared specifications are not beside this checkout")
    tables = spec_tables(text)
    assert {
        table: {name: shape[:2] for name, shape in columns.items()}
        for table, columns in SPEC_COLUMNS.items()
    } == tables
    assert sorted(spec_index_names(text)) == sorted(SPEC_INDEXES)


# --------------------------------------------------------------------------------------
# Revision 0005 converts rows in place, both ways
# --------------------------------------------------------------------------------------

OLD_DEFINITION = {
    "id": "acme",
    "name": "Acme",
    "description": "Old layout",
    "version": "1.0.0",
    "authType": "apikey",
    "configSchema": {"type": "object"},
    "baseUrl": "https://api.acme.test",
    "healthCheck": {"method": "ping"},
    "methods": [
        {
            "id": "ping",
            "name": "Ping",
            "description": "null inside stays: none",
            "inputSchema": {"type": "object", "properties": {"x": {"default": None}}},
            "outputSchema": {"type": "object"},
            "http": {"method": "GET", "path": "/ping"},
        }
    ],
}
OAUTH_DEFINITION = {
    "id": "xero",
    "name": "Xero",
    "description": "Old layout, oauth2",
    "version": "1.1.1",
    "authType": "oauth2",
    "configSchema": {"type": "object"},
    "oauth2Config": {
        "authorizationUrl": "https://a.test/authorize",
        "tokenUrl": "https://a.test/token",
        "scopes": ["s"],
    },
    "methods": [
        {
            "id": "m",
            "name": "M",
            "description": "d",
            "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object"},
        }
    ],
}
ENVELOPE = {"v": 1, "kid": "k1", "ct": "bm90IHJlYWxseSBhIGNpcGhlcnRleHQ=", "meta": {}}


@pytest.fixture
def old_db(cluster: EmbeddedCluster) -> Iterator[Database]:
    """A database at the revision before the specification's layout, with rows."""
    name = "pi_schema_0005"
    cluster.drop_database(name)
    database = Database.from_url(cluster.ensure_running(database=name))
    dbmod.upgrade(database, BEFORE)
    with database.transaction() as s:
        for document in (OLD_DEFINITION, OAUTH_DEFINITION):
            s.execute(
                sa.text(
                    "INSERT INTO integration_definitions (id, name, description, version, "
                    "definition) VALUES (:id, :name, :d, :v, CAST(:doc AS jsonb))"
                ),
                {
                    "id": document["id"],
                    "name": document["name"],
                    "d": document["description"],
                    "v": document["version"],
                    "doc": json.dumps(document),
                },
            )
        for instance_id, integration, context_type, context_id in (
            ("acme_main", "acme", "global", None),
            ("acme_client", "acme", "client", "c1"),
            ("xero_user", "xero", "user", "u1"),
        ):
            s.execute(
                sa.text(
                    "INSERT INTO integration_instances (instance_id, integration_id, name, "
                    "context_type, context_id, config, credentials, status, key_id, "
                    "credentials_version) VALUES (:i, :g, :n, :t, :c, "
                    "CAST(:config AS jsonb), CAST(:creds AS jsonb), "
                    """'{"state": "active"}', 'k1', 3)"""
                ),
                {
                    "i": instance_id,
                    "g": integration,
                    "n": f"Name of {instance_id}",
                    "t": context_type,
                    "c": context_id,
                    "config": json.dumps({"region": instance_id}),
                    "creds": json.dumps(ENVELOPE),
                },
            )
        s.execute(
            sa.text(
                "INSERT INTO integration_oauth_states (state_hash, instance_id, redirect_uri, "
                "key_id, verifier, expires_at) VALUES ('\\x01', 'xero_user', 'http://r', "
                "'k1', 'v', now() + interval '1 hour')"
            )
        )
    yield database
    database.dispose()
    cluster.drop_database(name)


def _instance_rows(db: Database, reference: str) -> list[tuple[object, ...]]:
    with db.transaction() as s:
        return [
            tuple(r)
            for r in s.execute(
                sa.text(
                    f"SELECT instance_id, {reference}, name, context_type, context_id, config, "
                    "credentials, status, key_id, credentials_version, created_at "
                    "FROM integration_instances i ORDER BY instance_id"
                )
            )
        ]


def test_revision_0005_converts_rows_and_back(old_db: Database) -> None:
    before = _instance_rows(old_db, "integration_id")

    dbmod.upgrade(old_db)
    with old_db.transaction() as s:
        stored = {
            r.integration_id: r for r in s.execute(sa.text("SELECT * FROM integration_definitions"))
        }
        assert stored["acme"].methods == OLD_DEFINITION["methods"]
        assert stored["acme"].config_schema == {"type": "object"}
        assert stored["acme"].auth_type == "apikey"
        assert stored["acme"].oauth2_config is None
        assert stored["acme"].extensions == {
            "baseUrl": "https://api.acme.test",
            "healthCheck": {"method": "ping"},
        }
        assert stored["xero"].oauth2_config == OAUTH_DEFINITION["oauth2Config"]
        assert stored["xero"].extensions == {}
        references: dict[str, str] = dict(
            s.execute(
                sa.text(
                    "SELECT i.instance_id, d.integration_id FROM integration_instances i "
                    "JOIN integration_definitions d ON d.id = i.integration_definition_id"
                )
            ).all()
        )
        assert references == {"acme_main": "acme", "acme_client": "acme", "xero_user": "xero"}
        # the OAuth state still refers to its instance through the renamed unique index
        assert s.execute(sa.text("SELECT instance_id FROM integration_oauth_states")).all() == [
            ("xero_user",)
        ]
    converted = _instance_rows(
        old_db,
        "(SELECT integration_id FROM integration_definitions d "
        "WHERE d.id = i.integration_definition_id)",
    )
    assert converted == before

    dbmod.downgrade(old_db, BEFORE)
    assert _instance_rows(old_db, "integration_id") == before
    with old_db.transaction() as s:
        documents: dict[str, object] = dict(
            s.execute(sa.text("SELECT id, definition FROM integration_definitions")).all()
        )
        names = set(s.execute(sa.text("SELECT indexname FROM pg_indexes")).scalars())
    assert documents == {"acme": OLD_DEFINITION, "xero": OAUTH_DEFINITION}
    assert not set(SPEC_INDEXES) & names
    assert "uq_integration_instances_instance_id" in names
    assert "idx_integration_instances_integration_id" in names

    dbmod.upgrade(old_db)
    assert (
        _instance_rows(
            old_db,
            "(SELECT integration_id FROM integration_definitions d "
            "WHERE d.id = i.integration_definition_id)",
        )
        == before
    )


def test_a_synced_definition_reads_back_whole(db: Database) -> None:
    from prefect_integrations.definitions import load_registry
    from prefect_integrations.store.definitions import list_definitions, sync_definitions

    registry = load_registry()
    with db.transaction() as s:
        sync_definitions(s, registry, actor="test")
    with db.transaction() as s:
        stored = {d.id: d for d in list_definitions(s)}
        row = s.execute(
            sa.text(
                "SELECT methods, config_schema, auth_type, oauth2_config, extensions "
                "FROM integration_definitions WHERE integration_id = 'xero'"
            )
        ).one()
    for definition in registry:
        assert stored[definition.id].definition == definition.raw
    xero = registry.get("xero").raw
    assert row.methods == xero["methods"] and row.config_schema == xero["configSchema"]
    assert (row.auth_type, row.oauth2_config) == ("oauth2", xero["oauth2Config"])
    assert "baseUrl" in row.extensions and "integrationId" not in row.extensions
