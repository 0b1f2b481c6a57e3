from __future__ import annotations

from typing import Any

import pytest

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    AmbiguousInstance,
    InstanceNotFound,
    InstanceUnavailable,
    NoInstanceFound,
)
from prefect_integrations.resolve import explain, resolve
from prefect_integrations.scope import Context, parse_scope
from prefect_integrations.store import instances

CONFIG = {"tenant_id": "t"}


def _add(
    db: Database,
    registry: Registry,
    instance_id: str,
    scope: str,
    state: str = "active",
    error: str | None = None,
    integration: str = "xero",
) -> None:
    status: dict[str, Any] = {"state": state}
    if error:
        status["error"] = error
    with db.transaction() as s:
        instances.create_instance(
            s,
            registry,
            None,
            instance_id=instance_id,
            integration_id=integration,
            name=instance_id,
            scope=parse_scope(scope),
            config=CONFIG if integration == "xero" else {},
            status=status,
            actor="t",
        )


def _resolve(db: Database, context: Context, instance_id: str | None = None) -> str:
    with db.transaction() as s:
        return resolve(s, "xero", context, instance_id=instance_id).instance_id


@pytest.fixture
def tenants(synced: Database, test_registry: Registry) -> Database:
    _add(synced, test_registry, "g", "global")
    _add(synced, test_registry, "c_acme", "client:acme")
    _add(synced, test_registry, "c_beta", "client:beta")
    _add(synced, test_registry, "u_ann", "user:ann")
    return synced


def test_most_specific_scope_wins(tenants: Database) -> None:
    assert _resolve(tenants, Context()) == "g"
    assert _resolve(tenants, Context(client_id="acme")) == "c_acme"
    assert _resolve(tenants, Context(client_id="acme", user_id="ann")) == "u_ann"
    assert _resolve(tenants, Context(client_id="acme", user_id="bob")) == "c_acme"
    assert _resolve(tenants, Context(client_id="zeta", user_id="bob")) == "g"


def test_explicit_id_only_when_visible(tenants: Database) -> None:
    assert _resolve(tenants, Context(client_id="acme"), "c_acme") == "c_acme"
    assert _resolve(tenants, Context(client_id="acme"), "g") == "g"
    with pytest.raises(InstanceNotFound) as other_tenant:
        _resolve(tenants, Context(client_id="acme"), "c_beta")
    with pytest.raises(InstanceNotFound) as missing:
        _resolve(tenants, Context(client_id="acme"), "does_not_exist")
    # other tenants' instances look exactly like missing ones
    assert str(other_tenant.value).replace("c_beta", "X") == str(missing.value).replace(
        "does_not_exist", "X"
    )
    with pytest.raises(InstanceNotFound):
        _resolve(tenants, Context(user_id="bob"), "u_ann")


def test_explicit_id_of_another_integration_is_not_found(
    tenants: Database, test_registry: Registry
) -> None:
    _add(tenants, test_registry, "acme_1", "global", integration="acme")
    with pytest.raises(InstanceNotFound):
        _resolve(tenants, Context(), "acme_1")


def test_error_at_most_specific_scope_never_falls_back(
    tenants: Database, test_registry: Registry
) -> None:
    _add(tenants, test_registry, "u_bob", "user:bob", state="error", error="invalid_grant")
    with pytest.raises(InstanceUnavailable, match=r"'u_bob' in error \('u_bob': invalid_grant"):
        _resolve(tenants, Context(client_id="acme", user_id="bob"))
    with tenants.transaction() as s:
        why = explain(s, "xero", Context(client_id="acme", user_id="bob"))
    assert why.chosen is None and why.error is not None
    assert "only in error" in why.rule
    assert [(c.instance_id, c.verdict) for c in why.candidates] == [
        ("u_bob", "unusable: error"),
        ("c_acme", "not considered: narrower scope decided"),
        ("g", "not considered: narrower scope decided"),
    ]


def test_inactive_scope_is_skipped(tenants: Database, test_registry: Registry) -> None:
    _add(tenants, test_registry, "u_cat", "user:cat", state="inactive")
    assert _resolve(tenants, Context(client_id="acme", user_id="cat")) == "c_acme"
    with tenants.transaction() as s:
        why = explain(s, "xero", Context(client_id="acme", user_id="cat"))
    assert ("u_cat", "skipped: inactive") in [(c.instance_id, c.verdict) for c in why.candidates]


def test_active_beside_errored_at_same_scope_is_chosen(
    tenants: Database, test_registry: Registry
) -> None:
    _add(tenants, test_registry, "c_acme_broken", "client:acme", state="error")
    assert _resolve(tenants, Context(client_id="acme")) == "c_acme"


def test_ambiguity_raises_naming_candidates(tenants: Database, test_registry: Registry) -> None:
    _add(tenants, test_registry, "c_acme_2", "client:acme")
    with pytest.raises(AmbiguousInstance, match="'c_acme', 'c_acme_2'") as info:
        _resolve(tenants, Context(client_id="acme"))
    assert info.value.scope == "client"
    # ambiguity elsewhere does not matter when a narrower scope decides
    assert _resolve(tenants, Context(client_id="acme", user_id="ann")) == "u_ann"


def test_nothing_visible(synced: Database, test_registry: Registry) -> None:
    _add(synced, test_registry, "c_acme", "client:acme")
    with pytest.raises(NoInstanceFound, match="for client 'beta'"):
        _resolve(synced, Context(client_id="beta"))
    with synced.transaction() as s:
        data = explain(s, "xero", Context(client_id="beta")).as_dict()
    assert data["chosen"] is None and data["error_code"] == "no_instance"
    assert data["candidates"] == []
