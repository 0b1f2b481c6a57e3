from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, Registry
from prefect_integrations.exceptions import (
    DefinitionError,
    InstanceExists,
    InstanceNotFound,
    UnknownIntegration,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import Scope, parse_scope
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.instance_checks import check_config

from .conftest import ACME_DEFINITION

XERO_CONFIG = {"tenant_id": "0ce8d8d2-4b0c-4d8a-9f2f-3a1e5b7a9c11"}


def _counts(db: Database) -> tuple[int, int]:
    with db.transaction() as s:
        n_inst = s.execute(sa.text("SELECT count(*) FROM integration_instances")).scalar_one()
        n_audit = s.execute(sa.text("SELECT count(*) FROM integration_audit_log")).scalar_one()
    return int(n_inst), int(n_audit)


def _create(db: Database, registry: Registry, keyring: Keyring | None, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "instance_id": "xero_main",
        "integration_id": "xero",
        "name": "Main Xero",
        "scope": Scope("global"),
        "config": XERO_CONFIG,
        "actor": "tester",
    }
    args.update(kw)
    with db.transaction() as s:
        return instances.create_instance(s, registry, keyring, **args)


def test_create_read_list_update_delete(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    created = _create(
        synced,
        test_registry,
        keyring,
        credentials={
            "oauth2": {"access_token": "at", "refresh_token": "rt", "expires_at": 1_900_000_000}
        },
    )
    assert created.state == "active"
    assert created.credentials is not None and created.credentials.key_id == "k1"
    assert created.credentials.metadata["has_refresh_token"] is True
    assert created.token_expires_at is not None
    assert created.credentials_version == 1
    _create(synced, test_registry, None, instance_id="xero_acme", scope=Scope("client", "acme"))
    with synced.transaction() as s:
        assert instances.get_instance(s, "nope") is None
        listed = instances.list_instances(s, integration_id="xero")
        assert [i.instance_id for i in listed] == ["xero_acme", "xero_main"]
        assert [i.instance_id for i in instances.list_instances(s, state="inactive")] == [
            "xero_acme"
        ]
        assert [
            i.instance_id for i in instances.list_instances(s, scope=Scope("client", "acme"))
        ] == ["xero_acme"]
        updated = instances.update_instance(
            s,
            test_registry,
            "xero_acme",
            name="Acme Xero",
            config={"tenant_id": "t2"},
            status={"state": "error", "error": "boom"},
            scope=Scope("user", "u1"),
            actor="tester",
        )
    assert (updated.name, updated.config, updated.state, str(updated.scope)) == (
        "Acme Xero",
        {"tenant_id": "t2"},
        "error",
        "user:u1",
    )
    with synced.transaction() as s:
        instances.delete_instance(s, "xero_acme", actor="tester")
        assert instances.get_instance(s, "xero_acme") is None
        with pytest.raises(InstanceNotFound):
            instances.delete_instance(s, "xero_acme", actor="tester")
        actions = [
            (r.action, r.instance_id)
            for r in audit.tail(s, limit=100)
            if r.action.startswith("instance.")
        ]
    assert actions == [
        ("instance.create", "xero_main"),
        ("instance.create", "xero_acme"),
        ("instance.update", "xero_acme"),
        ("instance.delete", "xero_acme"),
    ]


def test_oauth_instance_without_tokens_stays_inactive_until_credentials(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    inst = _create(
        synced,
        test_registry,
        keyring,
        credentials={"oauth2": {"client_id": "cid", "client_secret": "cs"}},
    )
    assert inst.state == "inactive"
    with synced.transaction() as s:
        after = instances.set_credentials(
            s,
            test_registry,
            keyring,
            "xero_main",
            {"oauth2": {"access_token": "a", "client_id": "cid", "client_secret": "cs"}},
            actor="tester",
        )
    assert after.state == "active" and after.credentials_version == 2


def test_base_url_and_oauth_overrides_allowed_in_config(
    synced: Database, test_registry: Registry
) -> None:
    config = {
        **XERO_CONFIG,
        "base_url": "http://127.0.0.1:8080",
        "authorization_url": "http://127.0.0.1:9000/authorize",
        "token_url": "http://127.0.0.1:9000/token",
    }
    assert _create(synced, test_registry, None, config=config).config == config
    acme = _create(
        synced,
        test_registry,
        None,
        instance_id="a1",
        integration_id="acme",
        config={"base_url": "http://localhost:1"},
    )
    assert acme.config["base_url"] == "http://localhost:1"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"integration_id": "nope"}, UnknownIntegration, "Unknown integration 'nope'"),
        (
            {"config": {}},
            ValidationError,
            "Config of instance 'xero_main' is invalid at $: 'tenant_id' is a required property",
        ),
        (
            {"integration_id": "acme", "config": {"region": "mars"}},
            ValidationError,
            "Config of instance 'xero_main' is invalid at $.region",
        ),
        (
            {"integration_id": "acme", "config": {"limits": {"per_minute": 0}}},
            ValidationError,
            "is invalid at $.limits.per_minute",
        ),
        (
            {"credentials": {"apikey": {"key": "k-SECRET"}}},
            ValidationError,
            "apikey credentials but integration 'xero' uses authType 'oauth2'",
        ),
        (
            {
                "integration_id": "acme",
                "config": {},
                "credentials": {"oauth2": {"access_token": "t-SECRET"}},
            },
            ValidationError,
            "oauth2 credentials but integration 'acme' uses authType 'apikey'",
        ),
        (
            {"credentials": {"oauth2": {"access_token": ""}}},
            ValidationError,
            "Credentials of instance 'xero_main' is invalid at $.oauth2.access_token",
        ),
        (
            {"credentials": {"oauth2": {"access_token": "t-SECRET", "client_secret": "c-SECRET"}}},
            ValidationError,
            "at $.oauth2: 'client_id' is a dependency of 'client_secret'",
        ),
        (
            {"credentials": {"access_token": "t-SECRET", "refresh_token": "r-SECRET"}},
            ValidationError,
            "at $.access_token: unexpected field; credentials take the specification's shape "
            '{"oauth2": {"access_token": ...',
        ),
        (
            {"integration_id": "acme", "config": {}, "credentials": {"api_key": "k-SECRET"}},
            ValidationError,
            "at $.api_key: unexpected field; credentials take the specification's shape "
            '{"apikey": {"key": ..., "secret": ...}}',
        ),
        (
            {"credentials": {"oauth2": {"access_token": "t-SECRET"}, "extra": "x-SECRET"}},
            ValidationError,
            "at $.extra: unexpected field",
        ),
        (
            {"credentials": {"oauth2": {"access_token": "t-SECRET", "expires_at": "soon-SECRET"}}},
            ValidationError,
            "at $.oauth2.expires_at",
        ),
        (
            {
                "credentials": {
                    "oauth2": {"access_token": "t", "expires_at": "2030-13-01T00:00:00Z"}
                }
            },
            ValidationError,
            "Credentials of instance 'xero_main' is invalid at $.oauth2.expires_at",
        ),
        (
            {"credentials": {}},
            ValidationError,
            "at $: the 'oauth2' section is required",
        ),
        (
            {"integration_id": "acme", "config": {}, "credentials": {"apikey": {"key": 5}}},
            ValidationError,
            "at $.apikey.key",
        ),
        (
            {"status": {"state": "broken"}},
            ValidationError,
            "Status of instance 'xero_main' is invalid at $.state",
        ),
        (
            {"status": {"state": "active", "lastChecked": "yesterday"}},
            ValidationError,
            "at $.lastChecked",
        ),
        ({"instance_id": "bad id!"}, ValidationError, "Instance id is invalid"),
        ({"name": "  "}, ValidationError, "name must not be empty"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    synced: Database,
    test_registry: Registry,
    keyring: Keyring,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    before = _counts(synced)
    with pytest.raises(error) as info:
        _create(synced, test_registry, keyring, **kwargs)
    assert message in str(info.value)
    assert "SECRET" not in str(info.value)
    assert _counts(synced) == before


def test_duplicate_instance_id_rolls_back_everything(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    _create(synced, test_registry, keyring, credentials={"oauth2": {"access_token": "a"}})
    before = _counts(synced)
    with pytest.raises(InstanceExists, match="Instance 'xero_main' already exists"):
        _create(synced, test_registry, keyring, credentials={"oauth2": {"access_token": "b"}})
    assert _counts(synced) == before
    with synced.transaction() as s:
        assert instances.require_instance(s, "xero_main").credentials_version == 1


def test_definition_not_synced_is_a_clear_error(db: Database, test_registry: Registry) -> None:
    with pytest.raises(DefinitionError, match="run `prefect-integrations definitions sync`"):
        _create(db, test_registry, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenant:1", "unknown context type 'tenant'"),
        ("client", "a client instance needs a context id"),
        ("user:", "a user instance needs a context id"),
        ("global:x", "a global instance has no context id"),
    ],
)
def test_bad_context(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_scope(text)


def test_scope_constraint_in_database(synced: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError), synced.transaction() as s:
        s.execute(
            sa.text(
                "INSERT INTO integration_instances "
                "(instance_id, integration_definition_id, name, context_type) "
                "SELECT 'x', id, 'x', 'client' FROM integration_definitions "
                "WHERE integration_id = 'xero'"
            )
        )


SPEC_EXAMPLE = {
    "oauth2": {
        "access_token": "...",
        "refresh_token": "...",
        "expires_at": "2030-01-01T00:00:00Z",
        "token_type": "Bearer",
    }
}


def test_the_specifications_example_credentials_are_accepted(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    inst = _create(synced, test_registry, keyring, credentials=SPEC_EXAMPLE)
    assert inst.state == "active"
    assert inst.token_expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert inst.credentials is not None
    assert inst.credentials.version == vault.ENVELOPE_VERSION == 2
    assert dict(inst.credentials.metadata) == {
        "kind": "oauth2",
        "fields": ["access_token", "expires_at", "refresh_token", "token_type"],
        "expires_at": "2030-01-01T00:00:00Z",
        "token_type": "Bearer",
        "has_refresh_token": True,
    }
    with synced.transaction() as s:
        creds = vault.fetch_credentials(s, keyring, "xero_main", actor="t", purpose="test")
    assert creds.reveal() == SPEC_EXAMPLE
    assert creds.kind == "oauth2"
    token = creds.secret("oauth2", "access_token")
    assert token is not None and token.get_secret_value() == "..."
    assert creds.value("oauth2", "expires_at") == "2030-01-01T00:00:00Z"


def test_epoch_times_are_stored_as_iso_8601_utc(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    epoch = 1_893_456_000  # 2030-01-01T00:00:00Z
    inst = _create(
        synced,
        test_registry,
        keyring,
        credentials={
            "oauth2": {
                "access_token": "a",
                "expires_at": epoch,
                "obtained_at": epoch - 3600.5,
            }
        },
    )
    assert inst.token_expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert inst.credentials is not None
    assert inst.credentials.metadata["expires_at"] == "2030-01-01T00:00:00Z"
    with synced.transaction() as s:
        stored = vault.fetch_credentials(s, keyring, "xero_main", actor="t", purpose="t")
        stored_values = stored.reveal()["oauth2"]
        assert stored_values["expires_at"] == "2030-01-01T00:00:00Z"
        assert stored_values["obtained_at"] == "2029-12-31T22:59:59.500000Z"
        # another timezone is stored as UTC
        instances.set_credentials(
            s,
            test_registry,
            keyring,
            "xero_main",
            {"oauth2": {"access_token": "a", "expires_at": "2030-01-01T02:00:00+02:00"}},
            actor="t",
        )
        again = vault.fetch_credentials(s, keyring, "xero_main", actor="t", purpose="t")
    assert again.reveal()["oauth2"]["expires_at"] == "2030-01-01T00:00:00Z"


def test_apikey_and_custom_sections(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    inst = _create(
        synced,
        test_registry,
        keyring,
        instance_id="a1",
        integration_id="acme",
        config={},
        credentials={"apikey": {"key": "k-SECRET", "secret": "s-SECRET", "key_id": "kid"}},
    )
    assert inst.credentials is not None
    assert dict(inst.credentials.metadata) == {
        "kind": "apikey",
        "fields": ["key", "key_id", "secret"],
    }
    assert "SECRET" not in json.dumps(inst.as_document())


# --------------------------------------------------------------------------------------
# URL overrides: where an instance may send its requests and tokens
# --------------------------------------------------------------------------------------

UNSAFE_OVERRIDES = [
    ("base_url", "http://api.example.com/v1", "must be https (plain http only for loopback"),
    ("token_url", "http://10.0.0.5/token", "must be https"),
    ("base_url", "ftp://files.example.com", "must be an https URL"),
    ("token_url", "https://169.254.169.254/latest/meta-data", "points at a cloud metadata service"),
    ("token_url", "http://169.254.169.254/latest/meta-data", "points at a cloud metadata service"),
    ("base_url", "https://[fd00:ec2::254]/", "points at a cloud metadata service"),
    (
        "authorization_url",
        "https://metadata.google.internal/x",
        "points at a cloud metadata service",
    ),
    ("base_url", "https://METADATA.google.internal./x", "points at a cloud metadata service"),
    ("base_url", "https://2852039166/", "points at a cloud metadata service"),  # 169.254.169.254
    ("base_url", "https://0xa9.0xfe.0xa9.0xfe/", "points at a cloud metadata service"),
    ("base_url", "https://[::ffff:169.254.169.254]/", "points at a cloud metadata service"),
    ("base_url", "https://169.254.10.1/", "points at a link-local address"),
    ("base_url", "https://[fe80::1]/", "points at a link-local address"),
    ("base_url", "http://0.0.0.0:8080/", "points at an unspecified address"),
    ("base_url", "https://user:pw@api.example.com/", "must not carry a user name or password"),
]


@pytest.mark.parametrize(("field", "url", "message"), UNSAFE_OVERRIDES)
def test_unsafe_url_overrides_are_refused_on_create_and_update(
    synced: Database, test_registry: Registry, field: str, url: str, message: str
) -> None:
    before = _counts(synced)
    with pytest.raises(ValidationError) as info:
        _create(synced, test_registry, None, config={**XERO_CONFIG, field: url})
    assert f"Instance 'xero_main' is invalid at $.config.{field}: {message}" in str(info.value)
    assert _counts(synced) == before
    _create(synced, test_registry, None)
    with synced.transaction() as s, pytest.raises(ValidationError) as info:
        instances.update_instance(
            s, test_registry, "xero_main", config={**XERO_CONFIG, field: url}, actor="t"
        )
    assert f"at $.config.{field}: {message}" in str(info.value)
    with synced.transaction() as s:
        assert instances.require_instance(s, "xero_main").config == XERO_CONFIG


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "http://127.0.0.1:8080",
        "http://127.3.2.1/v1",
        "http://[::1]:8080/",
        "http://localhost:1",
        "HTTPS://Api.Example.COM",
    ],
)
def test_safe_url_overrides_are_accepted(
    synced: Database, test_registry: Registry, url: str
) -> None:
    config = {**XERO_CONFIG, "base_url": url, "token_url": url, "authorization_url": url}
    assert _create(synced, test_registry, None, config=config).config == config


def test_url_overrides_are_audited_with_old_and_new_values(
    synced: Database, test_registry: Registry
) -> None:
    first = {**XERO_CONFIG, "base_url": "https://one.example.com", "token_url": "http://[::1]/t"}
    _create(synced, test_registry, None, config=first)
    second = {**XERO_CONFIG, "base_url": "https://two.example.com", "token_url": "http://[::1]/t"}
    with synced.transaction() as s:
        instances.update_instance(s, test_registry, "xero_main", config=second, actor="t")
        instances.update_instance(s, test_registry, "xero_main", config=XERO_CONFIG, actor="t")
        instances.update_instance(s, test_registry, "xero_main", name="renamed", actor="t")
        rows = [r for r in audit.tail(s, limit=100) if r.action.startswith("instance.")]
    assert [r.details.get("url_overrides") for r in rows] == [
        {
            "base_url": {"old": None, "new": "https://one.example.com"},
            "token_url": {"old": None, "new": "http://[::1]/t"},
        },
        {"base_url": {"old": "https://one.example.com", "new": "https://two.example.com"}},
        {
            "base_url": {"old": "https://two.example.com", "new": None},
            "token_url": {"old": "http://[::1]/t", "new": None},
        },
        None,  # no override changed
    ]


def _with_allowed_hosts(hosts: list[str]) -> Definition:
    document = json.loads(ACME_DEFINITION)
    document["allowedHosts"] = hosts
    return Definition.from_document(document, source="acme.json")


def test_a_definition_can_restrict_override_hosts() -> None:
    acme = _with_allowed_hosts(["*.xero.com", "api.xero.com"])
    assert acme.allowed_hosts == ("*.xero.com", "api.xero.com")
    for url in ("https://api.xero.com/v2", "https://identity.xero.com", "https://a.b.XERO.com"):
        assert check_config(acme, "a1", {"base_url": url}) == {"base_url": url}
    for url in (
        "https://xero.com",
        "https://evilxero.com",
        "https://api.xero.com.evil.example",
        "http://127.0.0.1:8080",  # loopback is fine by itself, but not one of the hosts
    ):
        with pytest.raises(ValidationError) as info:
            check_config(acme, "a1", {"base_url": url})
        assert "at $.config.base_url: host '" in str(info.value)
        assert "is not one of the definition's allowedHosts (*.xero.com, api.xero.com)" in str(
            info.value
        )
    assert check_config(acme, "a1", {}) == {}  # no override, nothing to check


@pytest.mark.parametrize("hosts", [[], ["https://api.xero.com"], ["api.*.com"], ["a b"]])
def test_allowed_hosts_must_be_host_names(hosts: list[str]) -> None:
    with pytest.raises(DefinitionError, match=r"\$\.allowedHosts"):
        _with_allowed_hosts(hosts)
