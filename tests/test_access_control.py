from __future__ import annotations

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import PermissionDenied
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.definitions import sync_definitions


@pytest.fixture
def existing(synced: Database, test_registry: Registry, keyring: Keyring) -> None:
    with synced.transaction() as s:
        instances.create_instance(
            s,
            test_registry,
            keyring,
            instance_id="acme_1",
            integration_id="acme",
            name="Acme",
            scope=Scope("global"),
            credentials={"apikey": {"key": "k"}},
            actor="admin",
        )


@pytest.mark.usefixtures("existing")
def test_admin_role_manages_instances(
    admin_db: Database, test_registry: Registry, keyring: Keyring
) -> None:
    with admin_db.transaction() as s:
        instances.create_instance(
            s,
            test_registry,
            keyring,
            instance_id="acme_2",
            integration_id="acme",
            name="Acme 2",
            scope=Scope("client", "c1"),
            credentials={"apikey": {"key": "k2"}},
            actor="admin",
        )
        instances.update_instance(s, test_registry, "acme_2", name="Renamed", actor="admin")
        instances.delete_instance(s, "acme_2", actor="admin")
        sync_definitions(s, test_registry, actor="admin")


@pytest.mark.usefixtures("existing")
def test_runtime_role_reads_and_updates_operational_columns(
    runtime_db: Database, test_registry: Registry, keyring: Keyring
) -> None:
    with runtime_db.transaction() as s:
        assert instances.require_instance(s, "acme_1").state == "active"
        creds = vault.fetch_credentials(s, keyring, "acme_1", actor="flow", purpose="call")
        assert creds.reveal() == {"apikey": {"key": "k"}}
        instances.update_instance(
            s,
            test_registry,
            "acme_1",
            status={
                "state": "error",
                "error": "auth_failed",
                "lastChecked": "2026-11-27T10:00:00Z",
            },
            actor="flow",
        )
        instances.set_credentials(
            s, test_registry, keyring, "acme_1", {"apikey": {"key": "k3"}}, actor="flow"
        )
        assert audit.tail(s, limit=1)[0].db_role == "prefect_integrations_runtime"


@pytest.mark.usefixtures("existing")
@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ("create", "not allowed to create instance 'acme_9'"),
        ("delete", "not allowed to delete instance 'acme_1'"),
        ("rename", "not allowed to update instance 'acme_1'"),
        ("rescope", "not allowed to update instance 'acme_1'"),
        ("sync", "not allowed to sync definitions"),
    ],
)
def test_runtime_role_cannot_manage(
    runtime_db: Database,
    test_registry: Registry,
    keyring: Keyring,
    operation: str,
    message: str,
) -> None:
    with pytest.raises(PermissionDenied, match=message) as info, runtime_db.transaction() as s:
        if operation == "create":
            instances.create_instance(
                s,
                test_registry,
                keyring,
                instance_id="acme_9",
                integration_id="acme",
                name="x",
                scope=Scope("global"),
                actor="flow",
            )
        elif operation == "delete":
            instances.delete_instance(s, "acme_1", actor="flow")
        elif operation == "rename":
            instances.update_instance(s, test_registry, "acme_1", name="n", actor="flow")
        elif operation == "rescope":
            instances.update_instance(
                s, test_registry, "acme_1", scope=Scope("user", "u"), actor="flow"
            )
        else:
            sync_definitions(s, test_registry, actor="flow")
    assert info.value.code == "permission_denied"


@pytest.mark.parametrize("role_db", ["db", "admin_db", "runtime_db"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE integration_audit_log SET actor = 'mallory'",
        "DELETE FROM integration_audit_log",
        "TRUNCATE integration_audit_log",
    ],
)
@pytest.mark.usefixtures("existing")
def test_nobody_can_alter_the_audit_log(
    request: pytest.FixtureRequest, role_db: str, statement: str
) -> None:
    database: Database = request.getfixturevalue(role_db)
    with pytest.raises(PermissionDenied), database.transaction("alter the audit log") as s:
        s.execute(sa.text(statement))
    with database.transaction() as s:
        assert audit.verify(s).ok


@pytest.mark.parametrize("role", ["prefect_integrations", "prefect_integrations_admin"])
def test_runtime_role_cannot_become_another_role(runtime_db: Database, role: str) -> None:
    with pytest.raises(PermissionDenied), runtime_db.transaction("change role") as s:
        s.execute(sa.text(f'SET ROLE "{role}"'))
