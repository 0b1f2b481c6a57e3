"""The specification's credentials shape, and rows written before it (envelope v1)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import sqlalchemy as sa

from prefect_integrations.client import IntegrationClient
from prefect_integrations.credentials import (
    Credentials,
    credentials_metadata,
    is_spec_shape,
    to_epoch,
    to_iso,
    to_spec_shape,
)
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.masking import secret_strings
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.rekey import rotate_keys

from .factories import make_instance
from .legacy import envelope_versions, write_old_shape
from .provider import FakeProvider, Reply

EPOCH_2030 = 1_893_456_000  # 2030-01-01T00:00:00Z

# --------------------------------------------------------------------------------------
# Conversion (pure)
# --------------------------------------------------------------------------------------


def test_iso_and_epoch_helpers() -> None:
    assert to_iso(EPOCH_2030) == "2030-01-01T00:00:00Z"
    assert to_iso(EPOCH_2030 + 0.25) == "2030-01-01T00:00:00.250000Z"
    assert to_iso("2030-01-01T01:00:00+01:00") == "2030-01-01T00:00:00Z"
    assert to_epoch("2030-01-01T00:00:00Z") == EPOCH_2030
    assert to_epoch(to_iso(1234.5)) == 1234.5
    for bad in ("2030-01-01", "2030-01-01T00:00:00", "tomorrow", -1, 1e300, True):
        with pytest.raises(ValueError):
            to_epoch(bad)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"api_key": "k"}, {"apikey": {"key": "k"}}),
        ({"api_key": "k", "key_id": "id-1"}, {"apikey": {"key": "k", "key_id": "id-1"}}),
        (
            {
                "access_token": "a",
                "refresh_token": "r",
                "token_type": "Bearer",
                "scope": "s",
                "expires_at": EPOCH_2030,
                "obtained_at": EPOCH_2030 - 3600,
                "id_token": "i",
                "oauth2": {"client_id": "c", "client_secret": "cs"},
            },
            {
                "oauth2": {
                    "access_token": "a",
                    "refresh_token": "r",
                    "token_type": "Bearer",
                    "scope": "s",
                    "expires_at": "2030-01-01T00:00:00Z",
                    "obtained_at": "2029-12-31T23:00:00Z",
                    "id_token": "i",
                    "client_id": "c",
                    "client_secret": "cs",
                }
            },
        ),
        ({"access_token": "a"}, {"oauth2": {"access_token": "a"}}),
        (  # a bare OAuth client reads the same in both shapes
            {"oauth2": {"client_id": "c", "client_secret": "cs"}},
            {"oauth2": {"client_id": "c", "client_secret": "cs"}},
        ),
        ({"username": "u", "password": "p"}, {"custom": {"username": "u", "password": "p"}}),
        ({"key_id": "k", "secret": "s"}, {"custom": {"key_id": "k", "secret": "s"}}),
    ],
)
def test_old_flat_documents_convert_to_the_spec_shape(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert to_spec_shape(old) == new
    assert is_spec_shape(new) and to_spec_shape(new) == new  # idempotent


def test_metadata_describes_the_section_and_holds_no_secret() -> None:
    values = to_spec_shape(
        {
            "access_token": "secret-access",
            "refresh_token": "secret-refresh",
            "token_type": "Bearer",
            "scope": "items.read",
            "expires_at": EPOCH_2030,
            "oauth2": {"client_id": "secret-client", "client_secret": "secret-cs"},
        }
    )
    meta = credentials_metadata(values)
    assert meta == {
        "kind": "oauth2",
        "fields": [
            "access_token",
            "client_id",
            "client_secret",
            "expires_at",
            "refresh_token",
            "scope",
            "token_type",
        ],
        "token_type": "Bearer",
        "scope": "items.read",
        "expires_at": "2030-01-01T00:00:00Z",
        "has_refresh_token": True,
        "oauth2_client": ["client_id", "client_secret"],
    }
    for value in ("secret-access", "secret-refresh", "secret-client", "secret-cs"):
        assert value not in json.dumps(meta)
    assert sorted(secret_strings(values, min_length=4)) == [
        "secret-access",
        "secret-client",
        "secret-client:secret-cs",  # the pair HTTP Basic encodes
        "secret-cs",
        "secret-refresh",
    ]


def test_credentials_accessor() -> None:
    creds = Credentials(
        instance_id="i",
        key_id="k1",
        values={"apikey": {"key": "the-key", "secret": "the-secret"}},
    )
    assert creds.kind == "apikey"
    key = creds.secret("apikey", "key")
    assert key is not None and key.get_secret_value() == "the-key"
    assert creds.secret("apikey", "missing") is None and creds.secret("oauth2", "key") is None
    assert creds.has("apikey", "secret") and not creds.has("custom", "secret")
    assert "the-key" not in repr(creds) and "the-key" not in str(creds.section("apikey"))


# --------------------------------------------------------------------------------------
# Rows written before the spec shape
# --------------------------------------------------------------------------------------


def _reveal(db: Database, keyring: Keyring, instance_id: str) -> dict[str, Any]:
    with db.transaction() as s:
        return vault.fetch_credentials(s, keyring, instance_id, actor="t", purpose="t").reveal()


def _versions(db: Database) -> dict[str, int]:
    with db.transaction() as s:
        return envelope_versions(s)


def test_old_apikey_row_is_used_and_rewritten_in_the_spec_shape_on_its_next_write(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "old_key",
        "echo",
        config={"base_url": f"{provider.url}/v1"},
        credentials={"apikey": {"key": "placeholder"}},
    )
    with echo_db.transaction() as s:
        write_old_shape(s, keyring, "old_key", {"api_key": "old-api-key", "key_id": "id-1"})
    assert _versions(echo_db) == {"old_key": 1}
    assert _reveal(echo_db, keyring, "old_key") == {
        "apikey": {"key": "old-api-key", "key_id": "id-1"}
    }

    provider.reply("GET", "/v1/items/1", Reply(200, {"id": 1, "name": "one"}))
    with IntegrationClient(
        "old_key", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        client.call("get_item", {"item_id": 1})
    assert provider.requests[0].headers["x-api-key"] == "old-api-key"

    # the next write stores the spec shape, as v2
    values = _reveal(echo_db, keyring, "old_key")
    with echo_db.transaction() as s:
        instances.set_credentials(s, echo_registry, keyring, "old_key", values, actor="t")
        inst = instances.require_instance(s, "old_key")
    assert _versions(echo_db) == {"old_key": 2}
    assert inst.credentials is not None
    assert dict(inst.credentials.metadata) == {"kind": "apikey", "fields": ["key", "key_id"]}
    assert _reveal(echo_db, keyring, "old_key") == values


def test_old_oauth2_row_is_used_refreshed_and_rewritten(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    url = provider.url
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "old_oauth",
        "authsrv",
        config={"base_url": url, "token_url": f"{url}/token"},
        credentials={"oauth2": {"client_id": "cid", "client_secret": "client-secret-value"}},
        status={"state": "active"},
    )
    now = time.time()
    with echo_db.transaction() as s:
        version = write_old_shape(
            s,
            keyring,
            "old_oauth",
            {
                "access_token": "old-access",
                "refresh_token": "old-refresh",
                "token_type": "Bearer",
                "obtained_at": now - 600,
                "expires_at": now + 3000,
                "oauth2": {"client_id": "cid", "client_secret": "client-secret-value"},
            },
        )
    stored = _reveal(echo_db, keyring, "old_oauth")["oauth2"]
    assert stored["access_token"] == "old-access"
    assert stored["expires_at"].endswith("Z") and to_epoch(stored["expires_at"]) == pytest.approx(
        now + 3000, abs=1e-3
    )

    # used for a call as it is
    provider.reply("GET", "/api/items", Reply(200, {"items": [1]}))
    with IntegrationClient(
        "old_oauth", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        assert client.call("list_items")["items"] == [1]
    assert provider.requests[-1].headers["authorization"] == "Bearer old-access"
    assert _versions(echo_db) == {"old_oauth": 1}  # reading never rewrites

    provider.reply(
        "POST",
        "/token",
        Reply(200, {"access_token": "new-access", "token_type": "Bearer", "expires_in": 3600}),
    )
    lifecycle = TokenLifecycle(echo_db, echo_registry, keyring, actor="refresher", backoff=0.01)
    outcome = lifecycle.refresh("old_oauth", force=True)
    assert outcome.result == "refreshed" and outcome.credentials_version == version + 1
    sent = parse_qs(provider.requests[-1].body.decode())
    assert sent["refresh_token"] == ["old-refresh"] and sent["client_id"] == ["cid"]
    assert sent["client_secret"] == ["client-secret-value"]

    assert _versions(echo_db) == {"old_oauth": 2}
    after = _reveal(echo_db, keyring, "old_oauth")
    assert list(after) == ["oauth2"]
    section = after["oauth2"]
    assert section["access_token"] == "new-access"
    assert section["refresh_token"] == "old-refresh"  # kept: the answer had none
    assert (section["client_id"], section["client_secret"]) == ("cid", "client-secret-value")
    assert to_epoch(section["expires_at"]) > time.time() + 3000
    with echo_db.transaction() as s:
        inst = instances.require_instance(s, "old_oauth")
    assert inst.token_expires_at is not None
    assert inst.token_expires_at.timestamp() == pytest.approx(to_epoch(section["expires_at"]))
    assert inst.credentials is not None
    assert inst.credentials.metadata["expires_at"] == section["expires_at"]

    with IntegrationClient(
        "old_oauth", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        assert client.call("list_items")["items"] == [1]
    assert provider.requests[-1].headers["authorization"] == "Bearer new-access"


OLD_ROWS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "old_apikey": (
        "echo",
        {"api_key": "k-1", "key_id": "id-1"},
        {"apikey": {"key": "k-1", "key_id": "id-1"}},
    ),
    "old_oauth": (
        "authsrv",
        {
            "access_token": "a-1",
            "refresh_token": "r-1",
            "expires_at": EPOCH_2030,
            "oauth2": {"client_id": "c", "client_secret": "cs"},
        },
        {
            "oauth2": {
                "access_token": "a-1",
                "refresh_token": "r-1",
                "expires_at": "2030-01-01T00:00:00Z",
                "client_id": "c",
                "client_secret": "cs",
            }
        },
    ),
    "old_client": (
        "authsrv",
        {"oauth2": {"client_id": "c", "client_secret": "cs"}},
        {"oauth2": {"client_id": "c", "client_secret": "cs"}},
    ),
    "old_basic": (
        "echo_userpass",
        {"username": "u", "password": "p-1"},
        {"custom": {"username": "u", "password": "p-1"}},
    ),
}
PLACEHOLDER = {
    "echo": {"apikey": {"key": "x"}},
    "authsrv": {"oauth2": {"client_id": "x"}},
    "echo_userpass": {"custom": {"username": "x", "password": "x"}},
}


@pytest.mark.parametrize("new_key", [True, False], ids=["new-primary", "same-key"])
def test_keys_rotate_rewrites_every_old_row_in_the_spec_shape(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, new_key: bool
) -> None:
    for iid, (integration, old, _) in OLD_ROWS.items():
        make_instance(
            echo_db,
            echo_registry,
            keyring,
            iid,
            integration,
            config={"base_url": "https://x.invalid"},
            credentials=PLACEHOLDER[integration],
        )
        with echo_db.transaction() as s:
            write_old_shape(s, keyring, iid, old)
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "already_new",
        "echo",
        config={"base_url": "https://x.invalid"},
        credentials={"apikey": {"key": "new-1"}},
    )
    assert _versions(echo_db) == {**dict.fromkeys(OLD_ROWS, 1), "already_new": 2}
    with echo_db.transaction() as s:
        credential_versions = {
            i.instance_id: i.credentials_version for i in instances.list_instances(s)
        }

    ring = parse_keyring(f"k2:{generate_key()},k1:{keyring.primary.get_secret_value()}")
    ring = ring if new_key else keyring
    report = rotate_keys(echo_db, ring, actor="rotator", batch_size=2)
    assert report.ok, report.as_dict()
    assert report.upgraded == len(OLD_ROWS)
    assert report.rotated == (len(OLD_ROWS) + 1 if new_key else 0)
    assert report.as_dict()["upgraded"] == len(OLD_ROWS)

    with echo_db.transaction() as s:
        remaining = s.execute(
            sa.text(
                "SELECT count(*) FROM integration_instances "
                "WHERE credentials IS NOT NULL AND credentials->>'v' = '1'"
            )
        ).scalar_one()
        upgrades = audit.tail(s, limit=100, action="credentials.upgrade")
        rows = {i.instance_id: i for i in instances.list_instances(s)}
    assert remaining == 0
    assert sorted(str(e.instance_id) for e in upgrades) == sorted(OLD_ROWS)
    for iid, (_, _, expected) in OLD_ROWS.items():
        assert _reveal(echo_db, ring, iid) == expected
        envelope = rows[iid].credentials
        assert envelope is not None and envelope.version == 2
        assert envelope.key_id == ring.primary_id
        assert rows[iid].credentials_version == credential_versions[iid] + 1
        assert envelope.metadata == credentials_metadata(expected)
    assert _reveal(echo_db, ring, "already_new") == {"apikey": {"key": "new-1"}}
    assert rows["already_new"].credentials_version == credential_versions["already_new"]
    assert rows["old_oauth"].token_expires_at == datetime(2030, 1, 1, tzinfo=UTC)

    again = rotate_keys(echo_db, ring, actor="rotator")
    assert (again.rotated, again.upgraded) == (0, 0) and again.ok


def test_an_old_row_under_a_refresh_lease_is_upgraded_after_the_lease(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "leased",
        "echo",
        config={"base_url": "https://x.invalid"},
        credentials={"apikey": {"key": "x"}},
    )
    with echo_db.transaction() as s:
        write_old_shape(s, keyring, "leased", {"api_key": "k"})
        s.execute(
            sa.text(
                "UPDATE integration_instances SET refresh_lease_until = now() + interval '1 hour'"
            )
        )
    report = rotate_keys(echo_db, keyring, actor="rotator", lock_wait=0.3)
    assert report.upgraded == 0 and report.failed == [("leased", "locked")]
    assert _versions(echo_db) == {"leased": 1}
    assert _reveal(echo_db, keyring, "leased") == {"apikey": {"key": "k"}}  # nothing lost
    with echo_db.transaction() as s:
        s.execute(sa.text("UPDATE integration_instances SET refresh_lease_until = NULL"))
    assert rotate_keys(echo_db, keyring, actor="rotator").upgraded == 1
    assert _versions(echo_db) == {"leased": 2}


def test_old_custom_row_stays_custom_whatever_its_field_names(
    synced: Database, test_registry: Registry, keyring: Keyring
) -> None:
    """A flat custom document is converted by the definition's authType, not its fields."""
    make_instance(
        synced,
        test_registry,
        keyring,
        "old_signer",
        "signer",
        config={},
        credentials={"custom": {"key_id": "placeholder", "secret": "placeholder"}},
    )
    flat = {"key_id": "kid-1", "secret": "s-1", "api_key": "looks-like-apikey", "access_token": "t"}
    with synced.transaction() as s:
        write_old_shape(s, keyring, "old_signer", flat)
    assert _reveal(synced, keyring, "old_signer") == {"custom": flat}
    report = rotate_keys(synced, keyring, actor="t")
    assert report.upgraded == 1
    assert _versions(synced) == {"old_signer": 2}
    assert _reveal(synced, keyring, "old_signer") == {"custom": flat}


@pytest.mark.parametrize(
    "flat",
    [
        {"apikey": "s-1"},
        {"custom": "s-1"},
        {"custom": {"key_id": "k"}, "apikey": "x"},
        {"oauth2": {"client_id": "c"}},
    ],
)
def test_old_custom_row_named_like_sections_is_wrapped(
    synced: Database, test_registry: Registry, keyring: Keyring, flat: dict[str, Any]
) -> None:
    make_instance(
        synced,
        test_registry,
        keyring,
        "old_sections",
        "signer",
        config={},
        credentials={"custom": {"x": "y"}},
    )
    with synced.transaction() as s:
        write_old_shape(s, keyring, "old_sections", flat)
    assert _reveal(synced, keyring, "old_sections") == {"custom": flat}
    assert rotate_keys(synced, keyring, actor="t").upgraded == 1
    assert _reveal(synced, keyring, "old_sections") == {"custom": flat}


def test_an_expiry_beyond_any_time_is_no_expiry() -> None:
    from prefect_integrations.oauth.endpoint import merge_token

    for expires_in in (10**12, "9" * 5000, 10**13):
        merged = merge_token(
            {"oauth2": {"refresh_token": "old"}},
            {"access_token": "new", "refresh_token": "rotated", "expires_in": expires_in},
            now=1_700_000_000,
        )
        assert merged["oauth2"]["refresh_token"] == "rotated"
        assert "expires_at" not in merged["oauth2"]
