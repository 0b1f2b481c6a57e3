from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient, RetryPolicy
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    InstanceUnavailable,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.store import audit, instances
from prefect_integrations.store.usage import UsageRecorder

from .factories import make_instance
from .provider import FakeProvider, Reply, serve

SECRET = "canary-api-key-93b1f0"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def _instance(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    integration: str,
    url: str,
    credentials: dict[str, Any],
    instance_id: str | None = None,
    state: str = "active",
) -> str:
    iid = instance_id or f"{integration}_1"
    with db.transaction() as s:
        make_instance(
            s,
            registry,
            keyring,
            iid,
            integration,
            config={"base_url": url + "/v1"},
            credentials=credentials,
            status={"state": state},
            actor="t",
        )
    return iid


def _client(
    db: Database, registry: Registry, keyring: Keyring, iid: str, **kw: Any
) -> IntegrationClient:
    kw.setdefault("retry", FAST)
    return IntegrationClient(iid, db=db, registry=registry, keyring=keyring, actor="tester", **kw)


def _calls(db: Database) -> list[dict[str, Any]]:
    with db.transaction() as s:
        return [e.as_dict() for e in audit.tail(s, limit=1000, action="method.call")]


def test_call_applies_header_apikey_and_maps_output(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply("GET", "/v1/items/7", Reply(200, {"id": 7, "name": "seven", "extra": 1}))
    with _client(echo_db, echo_registry, keyring, iid) as client:
        assert client.call("get_item", {"item_id": 7, "verbose": True}) == {
            "id": 7,
            "name": "seven",
        }
        assert client.call("get_item", {"item_id": 7}) == {"id": 7, "name": "seven"}
    first, second = provider.requests
    assert first.headers["x-api-key"] == SECRET
    assert first.query == {"verbose": ["true"]}
    assert second.query == {}
    rows = _calls(echo_db)
    assert [(r["outcome"], r["details"]["status_code"], r["details"]["method"]) for r in rows] == [
        ("success", 200, "get_item"),
        ("success", 200, "get_item"),
    ]
    assert all(r["details"]["attempts"] == 1 and r["details"]["duration_ms"] > 0 for r in rows)
    with echo_db.transaction() as s:
        inst = instances.require_instance(s, iid)
        decrypts = audit.tail(s, action="credentials.decrypt")
        dump = s.execute(
            sa.text("SELECT string_agg(details::text, ' ') FROM integration_audit_log")
        ).scalar_one()
    assert inst.last_used_at is not None
    assert len(decrypts) == 1  # credentials cached by the client
    assert SECRET not in dump


@pytest.mark.parametrize(
    ("integration", "credentials", "check"),
    [
        ("echo_query", {"apikey": {"key": SECRET}}, lambda r: r.query == {"key": [SECRET]}),
        (
            "echo_basic",
            {"apikey": {"key": SECRET}},
            lambda r: (
                r.headers["authorization"]
                == "Basic " + base64.b64encode(f"{SECRET}:".encode()).decode()
            ),
        ),
        (
            "echo_oauth",
            {"oauth2": {"access_token": SECRET}},
            lambda r: r.headers["authorization"] == f"Bearer {SECRET}",
        ),
        (  # the specification's example document, verbatim but for the token value
            "echo_oauth",
            {
                "oauth2": {
                    "access_token": SECRET,
                    "refresh_token": "...",
                    "expires_at": "2030-01-01T00:00:00Z",
                    "token_type": "Bearer",
                }
            },
            lambda r: r.headers["authorization"] == f"Bearer {SECRET}",
        ),
        (
            "echo",
            {"apikey": {"key": SECRET, "secret": "apikey-secret"}},
            lambda r: r.headers["x-api-key"] == SECRET,
        ),
        (
            "echo_userpass",
            {"custom": {"username": "ann", "password": SECRET}},
            lambda r: (
                r.headers["authorization"]
                == "Basic " + base64.b64encode(f"ann:{SECRET}".encode()).decode()
            ),
        ),
    ],
)
def test_auth_schemes(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    integration: str,
    credentials: dict[str, Any],
    check: Any,
) -> None:
    iid = _instance(echo_db, echo_registry, keyring, integration, provider.url, credentials)
    provider.reply("GET", "/v1/items/1", Reply(200, {"id": 1, "name": "one"}))
    with _client(echo_db, echo_registry, keyring, iid) as client:
        client.call("get_item", {"item_id": 1})
    assert check(provider.requests[0])


def test_hmac_signature_verifies_on_the_server(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db,
        echo_registry,
        keyring,
        "echo_hmac",
        provider.url,
        {"custom": {"key_id": "key-1", "secret": SECRET}},
    )
    provider.reply("POST", "/v1/items", Reply(201, {"id": 3, "name": "ü"}))
    with _client(echo_db, echo_registry, keyring, iid) as client:
        assert client.call("create_item", {"name": "ü"}) == {"id": 3, "name": "ü"}
    req = provider.requests[0]
    timestamp = req.headers["x-timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    to_sign = "\n".join(["POST", "/v1/items", timestamp, hashlib.sha256(req.body).hexdigest()])
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    assert req.headers["authorization"] == f"HMAC-SHA256 keyId=key-1, signature={expected}"
    assert SECRET not in req.headers["authorization"]


def test_invalid_input_sends_nothing(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    with _client(echo_db, echo_registry, keyring, iid) as client:
        with pytest.raises(ValidationError) as info:
            client.call("get_item", {"item_id": 0})
        assert str(info.value).startswith("Input of 'echo.get_item' is invalid at $.item_id")
        with pytest.raises(ValidationError, match=r"at \$: 'item_id' is a required property"):
            client.call("get_item", {})
        with pytest.raises(ValidationError, match="'extra' was unexpected"):
            client.call("get_item", {"item_id": 1, "extra": "x"})
    assert provider.requests == []
    assert [r["details"]["error_code"] for r in _calls(echo_db)] == ["validation_error"] * 3


def test_retries_5xx_and_429_honouring_retry_after(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply(
        "GET",
        "/v1/items/1",
        Reply(503, {}),
        Reply(429, {}, {"Retry-After": "1"}),
        Reply(200, {"id": 1, "name": "one"}),
    )
    with _client(echo_db, echo_registry, keyring, iid) as client:
        started = time.monotonic()
        assert client.call("get_item", {"item_id": 1})["id"] == 1
        elapsed = time.monotonic() - started
    assert len(provider.requests) == 3
    assert elapsed >= 1.0  # waited for Retry-After
    assert _calls(echo_db)[0]["details"]["attempts"] == 3


def test_retries_are_bounded(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply(
        "GET", "/v1/items/1", Reply(503, {"error": {"code": "down", "message": "maintenance"}})
    )
    with (
        _client(echo_db, echo_registry, keyring, iid) as client,
        pytest.raises(ProviderUnavailable) as info,
    ):
        client.call("get_item", {"item_id": 1})
    assert len(provider.requests) == 3
    assert info.value.status == 503 and info.value.provider_code == "down"
    assert "maintenance" in str(info.value)


def test_retry_after_beyond_limit_is_not_waited_for(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply("GET", "/v1/items/1", Reply(429, {}, {"Retry-After": "3600"}))
    with (
        _client(echo_db, echo_registry, keyring, iid) as client,
        pytest.raises(ProviderUnavailable),
    ):
        client.call("get_item", {"item_id": 1})
    assert len(provider.requests) == 1


def test_post_is_not_retried_on_500_but_get_is(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply("POST", "/v1/items", Reply(500, {}))
    provider.reply("GET", "/v1/items/1", Reply(500, {}), Reply(200, {"id": 1, "name": "a"}))
    with _client(echo_db, echo_registry, keyring, iid) as client:
        with pytest.raises(ProviderUnavailable):
            client.call("create_item", {"name": "x"})
        assert client.call("get_item", {"item_id": 1})["id"] == 1
    assert [r.method for r in provider.requests] == ["POST", "GET", "GET"]


def test_connection_refused_is_retried_then_unavailable(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    with serve() as gone:
        url = gone.url
    iid = _instance(echo_db, echo_registry, keyring, "echo", url, {"apikey": {"key": SECRET}})
    with (
        _client(echo_db, echo_registry, keyring, iid) as client,
        pytest.raises(ProviderUnavailable, match="ConnectError") as info,
    ):
        client.call("create_item", {"name": "x"})
    assert info.value.status is None
    assert _calls(echo_db)[0]["details"]["error_code"] == "provider_unavailable"


def test_provider_errors_are_typed_and_redacted(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply(
        "POST",
        "/v1/items",
        Reply(
            400,
            {"error": {"code": "invalid_name", "message": f"name taken (key {SECRET} is fine)"}},
        ),
    )
    provider.reply(
        "GET", "/v1/items/1", Reply(403, {"error": {"code": "forbidden", "message": "no"}})
    )
    with _client(echo_db, echo_registry, keyring, iid) as client:
        with pytest.raises(ProviderError) as bad:
            client.call("create_item", {"name": "x"})
        with pytest.raises(ProviderAuthError):
            client.call("get_item", {"item_id": 1})
    assert type(bad.value) is ProviderError
    assert bad.value.status == 400 and bad.value.provider_code == "invalid_name"
    assert SECRET not in str(bad.value) and SECRET not in repr(bad.value.args)
    assert "name taken (key " in str(bad.value) and " is fine)" in str(bad.value)
    assert "'echo.create_item' on instance 'echo_1' failed: HTTP 400" in str(bad.value)


def test_output_that_breaks_its_schema_is_an_error(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply("GET", "/v1/items/1", Reply(200, {"id": "one", "name": "x"}))
    with (
        _client(echo_db, echo_registry, keyring, iid) as client,
        pytest.raises(ValidationError, match=r"Output of 'echo.get_item' is invalid at \$.id"),
    ):
        client.call("get_item", {"item_id": 1})


def test_inactive_instance_is_refused(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db,
        echo_registry,
        keyring,
        "echo",
        provider.url,
        {"apikey": {"key": SECRET}},
        state="error",
    )
    with (
        _client(echo_db, echo_registry, keyring, iid) as client,
        pytest.raises(InstanceUnavailable, match="'echo_1' is in error"),
    ):
        client.call("get_item", {"item_id": 1})
    assert provider.requests == []


def test_401_rereads_changed_credentials_and_retries_once(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": "old"}}
    )
    provider.reply("GET", "/v1/items/1", Reply(200, {"id": 1, "name": "a"}))
    with _client(echo_db, echo_registry, keyring, iid) as client:
        client.call("get_item", {"item_id": 1})
        with echo_db.transaction() as s:  # another process replaces the key
            instances.set_credentials(
                s, echo_registry, keyring, iid, {"apikey": {"key": "new"}}, actor="t"
            )
        provider.reply("GET", "/v1/items/1", Reply(401, {}), Reply(200, {"id": 1, "name": "a"}))
        assert client.call("get_item", {"item_id": 1})["id"] == 1
        provider.reply("GET", "/v1/items/1", Reply(401, {}))
        with pytest.raises(ProviderAuthError):
            client.call("get_item", {"item_id": 1})
    keys = [r.headers["x-api-key"] for r in provider.requests]
    assert keys == ["old", "old", "new", "new"]


def test_async_client(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", provider.url, {"apikey": {"key": SECRET}}
    )
    provider.reply("POST", "/v1/items", Reply(429, {}), Reply(201, {"id": 5, "name": "x"}))

    async def main() -> Any:
        async with AsyncIntegrationClient(
            iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="t", retry=FAST
        ) as client:
            return await asyncio.gather(
                *(client.call("create_item", {"name": "x"}) for _ in range(3))
            )

    assert asyncio.run(main()) == [{"id": 5, "name": "x"}] * 3
    assert len(provider.requests) == 4
    assert len(_calls(echo_db)) == 3


def test_mock_transport(echo_db: Database, echo_registry: Registry, keyring: Keyring) -> None:
    iid = _instance(
        echo_db, echo_registry, keyring, "echo", "https://api.test", {"apikey": {"key": SECRET}}
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": 9, "name": json.loads(request.content)["name"]})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with _client(echo_db, echo_registry, keyring, iid, http=http) as client:
        assert client.call("create_item", {"name": "n"}) == {"id": 9, "name": "n"}
    assert str(seen[0].url) == "https://api.test/v1/items"
    assert seen[0].headers["x-api-key"] == SECRET


def test_recorder_keeps_rows_while_the_database_is_down(db: Database, tmp_path: Path) -> None:
    from prefect_integrations.store.usage import CallRecord

    broken = Database.from_url("postgresql+psycopg://x@/nope?host=/nonexistent&port=1")
    recorder = UsageRecorder(broken, interval=3600)
    recorder.record(
        CallRecord(
            instance_id="i",
            integration_id="echo",
            method_id="m",
            actor="t",
            outcome="success",
            details={},
        )
    )
    assert recorder.flush(timeout=5) is False
    recorder._db = db  # the database is back
    assert recorder.flush(timeout=5) is True
    recorder.close()
    assert len(_calls(db)) == 1
