from __future__ import annotations

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
from prefect_integrations.scope import Context

from .factories import make_instance

CONFIG = {"tenant_id": "t"}


def _resolve(db: Database, context: Context, instance_id: str | None = None) -> str:
    with db.transaction() as s:
        return resolve(s, "xero", context, instance_id=instance_id).instance_id


@pytest.fixture
def tenants(synced: Database, test_registry: Registry) -> Database:
    make_instance(
        synced, test_registry, None, "g", "xero", config=CONFIG, status={"state": "active"}
    )
    make_instance(
        synced,
        test_registry,
        None,
        "c_acme",
        "xero",
        scope="client:acme",
        config=CONFIG,
        status={"state": "active"},
    )
    make_instance(
        synced,
        test_registry,
        None,
        "c_beta",
        "xero",
        scope="client:beta",
        config=CONFIG,
        status={"state": "active"},
    )
    make_instance(
        synced,
        test_registry,
        None,
        "u_ann",
        "xero",
        scope="user:ann",
        config=CONFIG,
        status={"state": "active"},
    )
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
    make_instance(
        tenants, test_registry, None, "acme_1", "acme", config={}, status={"state": "active"}
    )
    with pytest.raises(InstanceNotFound):
        _resolve(tenants, Context(), "acme_1")


def test_error_at_most_specific_scope_never_falls_back(
    tenants: Database, test_registry: Registry
) -> None:
    make_instance(
        tenants,
        test_registry,
        None,
        "u_bob",
        "xero",
        scope="user:bob",
        config=CONFIG,
        status={"state": "error", "error": "invalid_grant"},
    )
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
    make_instance(
        tenants,
        test_registry,
        None,
        "u_cat",
        "xero",
        scope="user:cat",
        config=CONFIG,
        status={"state": "inactive"},
    )
    assert _resolve(tenants, Context(client_id="acme", user_id="cat")) == "c_acme"
    with tenants.transaction() as s:
        why = explain(s, "xero", Context(client_id="acme", user_id="cat"))
    assert ("u_cat", "skipped: inactive") in [(c.instance_id, c.verdict) for c in why.candidates]


def test_active_beside_errored_at_same_scope_is_chosen(
    tenants: Database, test_registry: Registry
) -> None:
    make_instance(
        tenants,
        test_registry,
        None,
        "c_acme_broken",
        "xero",
        scope="client:acme",
        config=CONFIG,
        status={"state": "error"},
    )
    assert _resolve(tenants, Context(client_id="acme")) == "c_acme"


def test_ambiguity_raises_naming_candidates(tenants: Database, test_registry: Registry) -> None:
    make_instance(
        tenants,
        test_registry,
        None,
        "c_acme_2",
        "xero",
        scope="client:acme",
        config=CONFIG,
        status={"state": "active"},
    )
    with pytest.raises(AmbiguousInstance, match="'c_acme', 'c_acme_2'") as info:
        _resolve(tenants, Context(client_id="acme"))
    assert info.value.scope == "client"
    # ambiguity elsewhere does not matter when a narrower scope decides
    assert _resolve(tenants, Context(client_id="acme", user_id="ann")) == "u_ann"


def test_nothing_visible(synced: Database, test_registry: Registry) -> None:
    make_instance(
        synced,
        test_registry,
        None,
        "c_acme",
        "xero",
        scope="client:acme",
        config=CONFIG,
        status={"state": "active"},
    )
    with pytest.raises(NoInstanceFound, match="for client 'beta'"):
        _resolve(synced, Context(client_id="beta"))
    with synced.transaction() as s:
        data = explain(s, "xero", Context(client_id="beta")).as_dict()
    assert data["chosen"] is None and data["error_code"] == "no_instance"
    assert data["candidates"] == []
