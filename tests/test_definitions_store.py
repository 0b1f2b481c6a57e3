from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.exceptions import DefinitionError
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances
from prefect_integrations.store.definitions import list_definitions, sync_definitions

from .conftest import ACME_DEFINITION


def _stamps(db: Database) -> dict[str, object]:
    with db.transaction() as s:
        rows = s.execute(
            sa.text("SELECT integration_id, updated_at FROM integration_definitions")
        ).all()
    return {r.integration_id: r.updated_at for r in rows}


def test_sync_is_idempotent_and_moves_updated_at_only_on_change(
    db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "acme.json").write_text(ACME_DEFINITION)
    with db.transaction() as s:
        first = sync_definitions(s, load_registry([folder]), actor="t")
    assert sorted(first.created) == ["acme", "gmail", "slack", "xero"]
    stamps = _stamps(db)
    with db.transaction() as s:
        second = sync_definitions(s, load_registry([folder]), actor="t")
    assert not second.changed and sorted(second.unchanged) == sorted(first.created)
    assert _stamps(db) == stamps

    changed = json.loads(ACME_DEFINITION)
    changed["version"] = "1.3.0"
    (folder / "acme.json").write_text(json.dumps(changed, indent=4))
    with db.transaction() as s:
        third = sync_definitions(s, load_registry([folder]), actor="t")
        stored = {d.id: d for d in list_definitions(s)}
        actions = [(e.action, e.integration_id) for e in audit.tail(s, limit=50)]
    assert third.updated == ["acme"] and stored["acme"].version == "1.3.0"
    after = _stamps(db)
    assert after["acme"] != stamps["acme"]
    assert {k: v for k, v in after.items() if k != "acme"} == {
        k: v for k, v in stamps.items() if k != "acme"
    }
    assert actions.count(("definition.create", "acme")) == 1
    assert actions.count(("definition.update", "acme")) == 1


def test_removed_definition_deleted_unless_it_has_instances(
    db: Database, test_registry: Registry, registry: Registry, keyring: Keyring
) -> None:
    with db.transaction() as s:
        sync_definitions(s, test_registry, actor="t")
        instances.create_instance(
            s,
            test_registry,
            None,
            instance_id="acme_1",
            integration_id="acme",
            name="A",
            scope=Scope("global"),
            actor="t",
        )
    with db.transaction() as s:
        report = sync_definitions(s, registry, actor="t")  # shipped only: acme, signer gone
        remaining = {d.id: d.instance_count for d in list_definitions(s)}
    assert report.removed == ["signer"]
    assert report.orphaned == {"acme": 1}
    assert remaining == {"acme": 1, "gmail": 0, "slack": 0, "xero": 0}


def test_sync_refuses_an_auth_type_change_under_instances(
    db: Database, tmp_path: Path, keyring: Keyring
) -> None:
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "acme.json").write_text(ACME_DEFINITION)
    registry = load_registry([folder])
    with db.transaction() as s:
        sync_definitions(s, registry, actor="t")
        instances.create_instance(
            s,
            registry,
            keyring,
            instance_id="acme_1",
            integration_id="acme",
            name="A",
            scope=Scope("global"),
            credentials={"apikey": {"key": "k-1"}},
            actor="t",
        )
    changed = json.loads(ACME_DEFINITION)
    changed.update(authType="custom", auth={"custom": {"scheme": "basic"}})
    (folder / "acme.json").write_text(json.dumps(changed))
    stamps = _stamps(db)
    with pytest.raises(DefinitionError) as caught, db.transaction() as s:
        sync_definitions(s, load_registry([folder]), actor="t")
    (problem,) = caught.value.problems
    assert problem.path == ("authType",)
    assert "changes from 'apikey' to 'custom' while 1 instance(s)" in problem.message
    assert _stamps(db) == stamps
