"""The three maintenance flows and `serve --once`, in a Prefect test server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from prefect_integrations.cli import run
from prefect_integrations.credentials import to_epoch
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.maintenance.flows import (
    health_check,
    refresh_tokens,
    rotate_credentials,
)
from prefect_integrations.runtime import reset_runtime
from prefect_integrations.store import key_registry, vault

from .factories import echo_instance, make_instance
from .oauth import OAuthServer, start_oauth_server
from .provider import FakeProvider, Reply

OK = Reply(200, {"id": 1, "name": "one"})


@pytest.fixture(scope="module")
def oauth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    with start_oauth_server(
        redirect_uris=["http://127.0.0.1:8765/callback"], tmp_path=tmp_path_factory.mktemp("oauth")
    ) as server:
        yield server


async def _artifact_descriptions(key: str) -> list[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return [a.description or "" for a in found]


@pytest.mark.usefixtures("env")
def test_health_check_flow(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    for name, reply in {"fine": OK, "sick": Reply(401, {})}.items():
        make_instance(
            echo_db,
            echo_registry,
            keyring,
            name,
            "echo",
            config={"base_url": f"{provider.url}/{name}"},
            credentials={"apikey": {"key": "k"}},
        )
        provider.reply("GET", f"/{name}/items/1", reply)
    summary = asyncio.run(health_check(min_interval_seconds=0))
    assert summary["checked"] == 2
    assert summary["results"] == {"ok": 1, "provider_auth_failed": 1}
    assert summary["degraded"] == ["sick"]
    descriptions = asyncio.run(_artifact_descriptions("integration-health"))
    # people read text, not a Python dict
    expected = "checked 2 instances: 1 ok, 1 provider_auth_failed; no outage; 1 degraded (sick)"
    assert f"Instance health: {expected}" in descriptions
    assert not [d for d in descriptions if "{" in d]


@pytest.mark.usefixtures("env")
def test_each_maintenance_run_publishes_a_signed_checkpoint(
    harness: Path, echo_db: Database, keyring: Keyring
) -> None:
    """Each run's checkpoint extends the previous one; `audit verify` reads them back."""
    from prefect_integrations.audit_seals import database_label
    from prefect_integrations.maintenance.checkpoints import (
        ARTIFACT_KEY,
        artifact_key,
        read_artifact_checkpoint,
    )
    from prefect_integrations.store import audit

    label = database_label(echo_db.url)
    with echo_db.transaction() as s:
        audit.record(s, action=audit.AuditAction.HEALTH_CHECK, actor="t")
    refresh_tokens()
    first = read_artifact_checkpoint(f"artifact:{ARTIFACT_KEY}", keyring, label)
    with echo_db.transaction() as s:
        audit.record(s, action=audit.AuditAction.HEALTH_CHECK, actor="t")
    refresh_tokens()
    second = read_artifact_checkpoint(f"artifact:{ARTIFACT_KEY}", keyring, label)
    assert (first.sequence, second.sequence, second.previous) == (1, 2, first.signature)
    assert first.database == label and second.rows == first.rows + 1
    with echo_db.transaction() as s:
        report = audit.verify(s, second.chains)
    assert report.ok and report.covered_rows == second.rows
    # by id too, and a key that names no artifact is a clear error
    artifact_id = asyncio.run(_artifact_ids(artifact_key(label)))[0]
    assert read_artifact_checkpoint(f"artifact:{artifact_id}", keyring, label) == second
    with pytest.raises(ValidationError, match="no artifact of that key"):
        read_artifact_checkpoint("artifact:no-such-key", keyring, label)


@pytest.mark.usefixtures("env")
def test_a_run_refuses_to_sign_over_a_cut_tail(
    harness: Path, echo_db: Database, keyring: Keyring
) -> None:
    """Rows removed since the last checkpoint fail the next run; nothing is signed."""
    import sqlalchemy as sa

    from prefect_integrations.audit_seals import database_label
    from prefect_integrations.exceptions import AuditChainBroken
    from prefect_integrations.maintenance.checkpoints import stored_checkpoints
    from prefect_integrations.store import audit

    with echo_db.transaction() as s:
        for _ in range(3):
            audit.record(s, action=audit.AuditAction.HEALTH_CHECK, actor="t")
    refresh_tokens()
    with echo_db.transaction() as s:
        s.execute(sa.text("SET LOCAL session_replication_role = replica"))
        s.execute(
            sa.text(
                "DELETE FROM integration_audit_log WHERE id = "
                "(SELECT max(id) FROM integration_audit_log)"
            )
        )
    with pytest.raises(AuditChainBroken, match="does not verify against checkpoint 1"):
        refresh_tokens()
    stored = stored_checkpoints(keyring, database_label(echo_db.url))
    assert [c.sequence for c in stored] == [1]


@pytest.mark.usefixtures("env")
def test_artifacts_without_a_valid_checkpoint_stop_the_chain(
    harness: Path, echo_db: Database, keyring: Keyring
) -> None:
    """Junk published under the key must not make a run start a new chain unnoticed."""
    from prefect.client.schemas.actions import ArtifactCreate

    from prefect_integrations.audit_seals import database_label
    from prefect_integrations.exceptions import AuditChainBroken
    from prefect_integrations.maintenance.checkpoints import artifact_key

    junk = ArtifactCreate(
        key=artifact_key(database_label(echo_db.url)), type="markdown", data="```json\n{}\n```"
    )
    with get_client(sync_client=True) as client:  # published by anyone with the API
        client.create_artifact(junk)
    with pytest.raises(AuditChainBroken, match="holds a valid checkpoint"):
        refresh_tokens()


async def _artifact_ids(key: str) -> list[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )
    return [str(a.id) for a in found]


@pytest.mark.usefixtures("env")
def test_refresh_tokens_flow(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    oauth_server: OAuthServer,
) -> None:
    now = time.time()
    config = {"base_url": oauth_server.issuer, "token_url": oauth_server.token_url}
    client = {
        "client_id": oauth_server.m2m_client_id,
        "client_secret": oauth_server.m2m_client_secret,
    }
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "m2m_expiring",
        "authsrv_m2m",
        config=config,
        credentials={
            "oauth2": {
                "access_token": "old",
                "obtained_at": now - 3500,
                "expires_at": now + 100,
                **client,
            }
        },
    )
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "m2m_fresh",
        "authsrv_m2m",
        config=config,
        credentials={
            "oauth2": {
                "access_token": "new",
                "obtained_at": now,
                "expires_at": now + 3600,
                **client,
            }
        },
    )
    oauth_server.reset_stats()
    summary = refresh_tokens(horizon_seconds=900)
    assert summary == {"candidates": 1, "results": {"refreshed": 1}, "failed": {}}
    assert oauth_server.stats()["by_grant"] == {"client_credentials": 1}
    with echo_db.transaction() as s:
        creds = vault.fetch_credentials(s, keyring, "m2m_expiring", actor="t", purpose="t").reveal()
    token = creds["oauth2"]
    assert token["access_token"] != "old" and to_epoch(token["expires_at"]) > now + 3000
    assert token["client_id"] == client["client_id"]  # the client stays in the section


@pytest.mark.usefixtures("env")
def test_rotate_credentials_flow(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "rot",
        "echo_rotating",
        config={"base_url": f"{provider.url}/rot"},
        credentials={"apikey": {"key": "old-key", "key_id": "key-1"}},
    )
    echo_instance(echo_db, echo_registry, keyring, provider, "plain", {"apikey": {"key": "k"}})
    provider.reply("POST", "/rot/keys", Reply(201, {"secret": "new-key", "id": "key-2"}))
    provider.reply("GET", "/rot/items/1", OK)
    provider.reply("DELETE", "/rot/keys/key-1", Reply(200, {}))
    new_ring = parse_keyring(f"k2:{generate_key()},k1:{keyring.primary.get_secret_value()}")
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_KEYS",
        ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in new_ring),
    )
    reset_runtime()
    with echo_db.transaction() as s:  # the operator registers the new primary key
        key_registry.register(s, new_ring, new_ring.ids, actor="operator")

    summary = rotate_credentials(batch_size=1)
    assert summary["keys"]["rotated"] == 2 and summary["keys"]["after"] == {"k2": 2}
    assert summary["provider"] == {"rot": "rotated", "plain": "not_applicable"}
    requests = [(r.method, r.path, r.headers.get("x-api-key")) for r in provider.requests]
    assert requests == [
        ("POST", "/rot/keys", "old-key"),
        ("GET", "/rot/items/1", "new-key"),
        ("DELETE", "/rot/keys/key-1", "new-key"),
    ]
    only_new = parse_keyring(f"k2:{new_ring.primary.get_secret_value()}")
    with echo_db.transaction() as s:
        creds = vault.fetch_credentials(s, only_new, "rot", actor="t", purpose="t").reveal()
    assert creds == {"apikey": {"key": "new-key", "key_id": "key-2"}}


@pytest.mark.usefixtures("env")
def test_rotation_keeps_the_old_key_when_the_new_one_fails(
    harness: Path,
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
) -> None:
    make_instance(
        echo_db,
        echo_registry,
        keyring,
        "rot",
        "echo_rotating",
        config={"base_url": f"{provider.url}/rot"},
        credentials={"apikey": {"key": "old-key", "key_id": "key-1"}},
    )
    provider.reply("POST", "/rot/keys", Reply(201, {"secret": "bad-key", "id": "key-2"}))
    provider.reply("GET", "/rot/items/1", Reply(401, {}))
    summary = rotate_credentials(provider_rotation=True)
    assert summary["provider"] == {"rot": "failed"}
    assert not [r for r in provider.requests if r.method == "DELETE"]
    with echo_db.transaction() as s:
        creds = vault.fetch_credentials(s, keyring, "rot", actor="t", purpose="t").reveal()
    assert creds["apikey"]["key"] == "old-key"


@pytest.mark.usefixtures("env")
def test_serve_once_runs_each_flow(harness: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--once", "--no-oauth"]) == 0
    out = capsys.readouterr().out
    assert "Prefect UI: http://127.0.0.1:" in out
    lines = out.splitlines()
    assert "health-check: checked 0 instances (none due)" in lines
    assert "refresh-tokens: no token expiring" in lines
    assert (
        "rotate-credentials: keys: 0 re-encrypted, 0 failed; per key id none -> none; "
        "provider credentials: none"
    ) in lines
    assert "{" not in out

    assert run(["serve", "--once", "--no-oauth", "--json"]) == 0
    captured = capsys.readouterr()
    summaries = json.loads(captured.out)  # nothing else on stdout
    assert list(summaries) == ["health-check", "refresh-tokens", "rotate-credentials"]
    assert summaries["refresh-tokens"] == {"candidates": 0, "results": {}, "failed": {}}
    assert "Prefect UI: http://127.0.0.1:" in captured.err
    assert "health-check: checked 0 instances (none due)" in captured.err

    assert run(["serve", "--json"]) == 2  # only with --once
    assert "--json" in capsys.readouterr().err
