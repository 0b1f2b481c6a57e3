"""OAuth2 against a real authorization server on loopback (oidc-provider, tests/oauth_server)."""

from __future__ import annotations

import gzip
import logging
import multiprocessing
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from prefect_integrations.client import IntegrationClient
from prefect_integrations.credentials import TIME_FIELDS, normalize_times, to_epoch
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.exceptions import InvalidGrant, OAuthError, TokenEndpointUnavailable
from prefect_integrations.keyring import Keyring, parse_keyring
from prefect_integrations.oauth.endpoint import TokenEndpoint, merge_token
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.oauth.links import mint_link
from prefect_integrations.oauth.refresh_policy import should_refresh
from prefect_integrations.oauth.service import COOKIE_NAME, create_app
from prefect_integrations.store import audit, instances, vault

from .factories import make_instance
from .oauth import OAuthServer, start_oauth_server
from .provider import FakeProvider, Reply

REDIRECT_URI = "http://127.0.0.1:8765/callback"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    with start_oauth_server(
        redirect_uris=[REDIRECT_URI], tmp_path=tmp_path_factory.mktemp("oauth")
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_server(server: OAuthServer) -> None:
    server.clear_faults()
    server.reset_stats()


def _config(server: OAuthServer) -> dict[str, str]:
    return {
        "base_url": server.issuer,
        "authorization_url": server.authorization_url,
        "token_url": server.token_url,
    }


def _create(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
    instance_id: str = "items_1",
    *,
    secret: str | None = None,
    integration: str = "authsrv",
) -> None:
    client_id = server.m2m_client_id if integration == "authsrv_m2m" else server.client_id
    default_secret = (
        server.m2m_client_secret if integration == "authsrv_m2m" else server.client_secret
    )
    with db.transaction() as s:
        make_instance(
            s,
            registry,
            keyring,
            instance_id,
            integration,
            config=_config(server),
            credentials={
                "oauth2": {"client_id": client_id, "client_secret": secret or default_secret}
            },
            actor="admin",
        )


def _app(db: Database, registry: Registry, keyring: Keyring) -> TestClient:
    app = create_app(
        db=db, registry=registry, keyring=keyring, actor="connect", redirect_uri=REDIRECT_URI
    )
    return TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False)


def _link(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    instance_id: str = "items_1",
    **options: Any,
) -> str:
    return mint_link(
        db, registry, keyring, instance_id=instance_id, redirect_uri=REDIRECT_URI, **options
    )


def _start(
    app: TestClient,
    db: Database,
    registry: Registry,
    keyring: Keyring,
    instance_id: str = "items_1",
) -> str:
    """Open a fresh connect link in ``app`` (the browser); the provider URL it redirects to."""
    start = app.get(_link(db, registry, keyring, instance_id))
    assert start.status_code == 302, start.text
    location: str = start.headers["location"]
    return location


def _callback(app: TestClient, callback_url: str) -> httpx.Response:
    parts = urlsplit(callback_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == REDIRECT_URI
    response: httpx.Response = app.get(f"{parts.path}?{parts.query}")
    return response


def _creds(db: Database, keyring: Keyring, instance_id: str = "items_1") -> dict[str, Any]:
    """The stored ``oauth2`` section of the instance (the only section it has)."""
    with db.transaction() as s:
        values = vault.fetch_credentials(s, keyring, instance_id, actor="t", purpose="t").reveal()
    assert list(values) == ["oauth2"]
    section: dict[str, Any] = values["oauth2"]
    return section


def _state(db: Database, instance_id: str = "items_1") -> dict[str, Any]:
    with db.transaction() as s:
        return instances.require_instance(s, instance_id).status


def _connect(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
    instance_id: str = "items_1",
) -> None:
    app = _app(db, registry, keyring)
    page = _callback(app, server.authorize(_start(app, db, registry, keyring, instance_id)))
    assert page.status_code == 200, page.text


def test_authorization_code_flow_with_pkce(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _create(echo_db, echo_registry, keyring, server)
    assert _state(echo_db)["state"] == "inactive"
    app = _app(echo_db, echo_registry, keyring)
    location = _start(app, echo_db, echo_registry, keyring)
    cookie = app.cookies[COOKIE_NAME]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert location.startswith(server.authorization_url + "?")
    assert query["response_type"] == "code" and query["client_id"] == server.client_id
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid offline_access items.read"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["prompt"] == "consent" and len(query["state"]) >= 43

    callback_url = server.authorize(location)
    code = parse_qs(urlsplit(callback_url).query)["code"][0]
    page = _callback(app, callback_url)
    assert page.status_code == 200 and "is connected" in page.text

    creds = _creds(echo_db, keyring)
    assert creds["access_token"] and creds["refresh_token"]
    assert to_epoch(creds["expires_at"]) > time.time() + 3000
    assert creds["expires_at"].endswith("Z") and creds["obtained_at"].endswith("Z")
    assert (creds["client_id"], creds["client_secret"]) == (server.client_id, server.client_secret)
    assert _state(echo_db)["state"] == "active"
    with IntegrationClient(
        "items_1", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        assert client.call("list_items")["client_id"] == server.client_id

    # the callback dropped the browser's cookie; a replay with it is refused: single use
    assert COOKIE_NAME not in app.cookies
    parts = urlsplit(callback_url)
    replay = app.get(f"{parts.path}?{parts.query}", headers={"Cookie": f"{COOKIE_NAME}={cookie}"})
    assert replay.status_code == 400 and "unknown or was already used" in replay.text
    with echo_db.transaction() as s:
        rows = [e for e in audit.tail(s, limit=100) if e.action.startswith("oauth.")]
        actions = [(e.action, e.outcome) for e in rows]
        stored = s.execute(sa.text("SELECT count(*) FROM integration_oauth_states")).scalar()
    assert actions == [
        ("oauth.authorize", "success"),
        ("oauth.connect", "success"),
        ("oauth.connect", "failure"),
    ]
    assert stored == 0
    connected = rows[1].details  # the browser: TestClient's peer name and user agent
    assert (connected["client_address"], connected["user_agent"]) == ("testclient", "testclient")
    secrets = [
        creds["access_token"],
        creds["refresh_token"],
        code,
        server.client_secret,
        query["state"],
    ]
    browser = (REDIRECT_URI, server.authorization_url, f"{server.issuer}/interaction")
    logged = (
        "\n".join(  # what the test's own browser requests logged is not ours
            r.getMessage()
            for r in caplog.records
            if not r.name.startswith("httpcore")  # transport debug lines of every connection
            and not (r.name == "httpx" and any(b in r.getMessage() for b in browser))
        )
        + page.text
        + replay.text
    )
    assert "HTTP Request: POST " + server.token_url in logged  # token exchange was logged
    leaks = [line for line in logged.splitlines() if any(x in line for x in secrets)]
    assert not [s for s in secrets if s in logged], leaks


def test_a_link_opens_one_authorization_in_the_browser_that_opened_it(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    victim, attacker = _app(echo_db, echo_registry, keyring), _app(echo_db, echo_registry, keyring)
    callback_url = server.authorize(_start(victim, echo_db, echo_registry, keyring))
    with echo_db.transaction() as s:
        rows_before = len(audit.tail(s, limit=1000))
    # the captured callback URL, opened in another browser, does nothing
    page = _callback(attacker, callback_url)
    assert page.status_code == 400 and "started in another browser" in page.text
    assert _state(echo_db)["state"] == "inactive"
    with echo_db.transaction() as s:
        assert len(audit.tail(s, limit=1000)) == rows_before
    # ... and the browser that started the flow still completes it
    page = _callback(victim, callback_url)
    assert page.status_code == 200 and "is connected" in page.text
    assert _state(echo_db)["state"] == "active"


def test_expired_state(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    app = _app(echo_db, echo_registry, keyring)
    callback_url = server.authorize(_start(app, echo_db, echo_registry, keyring))
    with echo_db.transaction() as s:
        s.execute(
            sa.text("UPDATE integration_oauth_states SET expires_at = now() - interval '1 second'")
        )
    page = _callback(app, callback_url)
    assert page.status_code == 400 and "expired; start it again" in page.text
    assert _state(echo_db)["state"] == "inactive"


def test_unknown_state(echo_db: Database, echo_registry: Registry, keyring: Keyring) -> None:
    with echo_db.transaction() as s:
        rows_before = len(audit.tail(s, limit=1000))
    page = _app(echo_db, echo_registry, keyring).get("/callback?code=abc&state=forged")
    assert page.status_code == 400 and "unknown" in page.text
    with echo_db.transaction() as s:
        assert len(audit.tail(s, limit=1000)) == rows_before


def test_consent_denied(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    app = _app(echo_db, echo_registry, keyring)
    denied = server.authorize(_start(app, echo_db, echo_registry, keyring), deny=True)
    assert "error=access_denied" in denied
    page = _callback(app, denied)
    assert page.status_code == 400 and "Access was not granted" in page.text
    assert _state(echo_db)["state"] == "inactive"
    with echo_db.transaction() as s:
        last = audit.tail(s, limit=1)[0]
    assert (last.action, last.outcome, last.details["reason"]) == (
        "oauth.connect",
        "failure",
        "consent_denied",
    )


def test_wrong_client_secret(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server, secret="not-the-secret")
    app = _app(echo_db, echo_registry, keyring)
    page = _callback(app, server.authorize(_start(app, echo_db, echo_registry, keyring)))
    assert page.status_code == 502 and "invalid_client" in page.text
    assert "not-the-secret" not in page.text
    assert _state(echo_db)["state"] == "inactive"
    assert "access_token" not in _creds(echo_db, keyring)


def test_token_response_without_access_token_is_refused(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    app = _app(echo_db, echo_registry, keyring)
    callback_url = server.authorize(_start(app, echo_db, echo_registry, keyring))
    server.inject_token_fault(status=200, body={"token_type": "Bearer"})
    page = _callback(app, callback_url)
    assert page.status_code == 502 and "without an access_token" in page.text
    assert _state(echo_db)["state"] == "inactive"


def _lifecycle(
    db: Database, registry: Registry, keyring: Keyring, *, skew: float = 0.0, **kw: Any
) -> TokenLifecycle:
    return TokenLifecycle(
        db,
        registry,
        keyring,
        actor="refresher",
        backoff=0.01,
        clock=lambda: time.time() + skew,
        **kw,
    )


def test_refresh_rotates_and_old_refresh_token_is_dead(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    before = _creds(echo_db, keyring)
    fresh = _lifecycle(echo_db, echo_registry, keyring).refresh("items_1")
    assert fresh.result == "not_needed" and fresh.reason == "fresh"
    outcome = _lifecycle(echo_db, echo_registry, keyring, skew=3590).refresh("items_1")
    assert outcome.result == "refreshed" and outcome.reason == "expiring"
    after = _creds(echo_db, keyring)
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # rotated, and saved
    assert server.stats()["by_grant"] == {"authorization_code": 1, "refresh_token": 1}
    reuse = httpx.post(
        server.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": before["refresh_token"],
            "client_id": server.client_id,
            "client_secret": server.client_secret,
        },
    )
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"


def test_response_without_refresh_token_keeps_the_old_one() -> None:
    old = {"oauth2": {"access_token": "a1", "refresh_token": "r1", "client_id": "c"}}
    merged = merge_token(old, {"access_token": "a2", "expires_in": 60}, now=1000.0)
    assert merged == {
        "oauth2": {
            "access_token": "a2",
            "refresh_token": "r1",
            "token_type": "Bearer",
            "obtained_at": "1970-01-01T00:16:40Z",
            "expires_at": "1970-01-01T00:17:40Z",
            "client_id": "c",
        }
    }


def test_merge_token_reads_a_flat_document_of_earlier_versions() -> None:
    old = {"access_token": "a1", "refresh_token": "r1", "oauth2": {"client_id": "c"}}
    merged = merge_token(old, {"access_token": "a2", "expires_at": 2_000}, now=1000.0)
    assert merged == {
        "oauth2": {
            "access_token": "a2",
            "refresh_token": "r1",
            "token_type": "Bearer",
            "obtained_at": "1970-01-01T00:16:40Z",
            "expires_at": "1970-01-01T00:33:20Z",
            "client_id": "c",
        }
    }


@pytest.mark.parametrize(
    ("values", "now", "expected"),
    [
        ({}, 0, (False, "not_connected")),
        ({"refresh_token": "r"}, 0, (True, "no_access_token")),
        ({"access_token": "a"}, 0, (False, "no_expiry")),
        (
            {"access_token": "a", "refresh_token": "r", "obtained_at": 0, "expires_at": 3600},
            3000,
            (False, "fresh"),
        ),
        (
            {"access_token": "a", "refresh_token": "r", "obtained_at": 0, "expires_at": 3600},
            3250,
            (True, "expiring"),
        ),  # within 10% of the lifetime
        (
            {"access_token": "a", "refresh_token": "r", "obtained_at": 0, "expires_at": 300},
            245,
            (True, "expiring"),
        ),  # the 60 s floor beats 10% of 300 s
        ({"access_token": "a", "refresh_token": "r", "expires_at": 100}, 100, (True, "expired")),
        ({"access_token": "a", "expires_at": 100}, 100, (False, "expiring_without_refresh_token")),
    ],
)
def test_should_refresh(values: dict[str, Any], now: float, expected: tuple[bool, str]) -> None:
    decision = should_refresh({"oauth2": values}, now=now)
    assert (decision.refresh, decision.reason) == expected
    iso = normalize_times({"oauth2": values})  # the stored form: ISO 8601 strings
    assert all(isinstance(iso["oauth2"][k], str) for k in TIME_FIELDS & values.keys())
    decision = should_refresh(iso, now=now)
    assert (decision.refresh, decision.reason) == expected


def test_invalid_grant_sets_error_after_rereading(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    creds = _creds(echo_db, keyring)
    with echo_db.transaction() as s:  # a refresh token the server never issued
        instances.set_credentials(
            s,
            echo_registry,
            keyring,
            "items_1",
            {"oauth2": {**creds, "refresh_token": "revoked-token"}},
            actor="t",
        )
    with pytest.raises(InvalidGrant, match="invalid_grant"):
        _lifecycle(echo_db, echo_registry, keyring).refresh("items_1", force=True)
    status = _state(echo_db)
    assert status["state"] == "error" and status["details"]["reason"] == "invalid_grant"
    with echo_db.transaction() as s:
        last = audit.tail(s, action="oauth.refresh", limit=1)[0]
    assert last.outcome == "failure" and last.details["reason"] == "invalid_grant"
    # reconnecting recovers the instance
    _connect(echo_db, echo_registry, keyring, server)
    assert _state(echo_db) == {"state": "active", "error": None, "details": {}}


def test_token_endpoint_outage_retries_then_errors_after_threshold(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    server.reset_stats()
    server.inject_token_fault(status=503, count=2)  # retried with backoff, then works
    outcome = _lifecycle(echo_db, echo_registry, keyring).refresh("items_1", force=True)
    assert outcome.result == "refreshed"
    assert server.stats()["token_requests"] == 3

    server.inject_token_fault(status=503, count=100)
    for failures in (1, 2):
        with pytest.raises(TokenEndpointUnavailable):
            _lifecycle(echo_db, echo_registry, keyring).refresh("items_1", force=True)
        status = _state(echo_db)
        assert status["state"] == "active"
        assert status["details"]["refresh_failures"] == failures
    with pytest.raises(TokenEndpointUnavailable):
        _lifecycle(echo_db, echo_registry, keyring).refresh("items_1", force=True)
    status = _state(echo_db)
    assert status["state"] == "error"
    assert status["details"]["reason"] == "token_endpoint_unavailable"


def test_malformed_token_response(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    before = _creds(echo_db, keyring)
    server.inject_token_fault(status=200, body="not json", content_type="application/json")
    with pytest.raises(OAuthError, match="not JSON"):
        _lifecycle(echo_db, echo_registry, keyring).refresh("items_1", force=True)
    assert _creds(echo_db, keyring) == before  # nothing half-written


def test_401_refreshes_and_retries_once(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    server.reset_stats()
    server.inject_api_fault(status=401, body={"error": "invalid_token"})
    with IntegrationClient(
        "items_1", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        assert client.call("list_items")["items"]
    stats = server.stats()
    assert stats["by_grant"] == {"refresh_token": 1} and stats["api_requests"] == 2


def test_client_refreshes_an_expiring_token_before_the_call(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    creds = _creds(echo_db, keyring)
    with echo_db.transaction() as s:
        instances.set_credentials(
            s,
            echo_registry,
            keyring,
            "items_1",
            # an hour-long token with 30 s left: within its lead time
            {
                "oauth2": {
                    **creds,
                    "obtained_at": time.time() - 3570,
                    "expires_at": time.time() + 30,
                }
            },
            actor="t",
        )
    server.reset_stats()
    with IntegrationClient(
        "items_1", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        client.call("list_items")
        client.call("list_items")
    assert server.stats()["by_grant"] == {"refresh_token": 1}
    assert to_epoch(_creds(echo_db, keyring)["expires_at"]) > time.time() + 3000


def test_concurrent_refresh_in_threads_makes_one_request(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    server.reset_stats()
    server.inject_token_fault(delay_ms=300)  # keep the winner busy while others arrive
    results: list[str] = []

    start = threading.Barrier(8)

    def worker() -> None:
        lifecycle = _lifecycle(echo_db, echo_registry, keyring, skew=3590)
        start.wait(timeout=60)
        results.append(lifecycle.refresh("items_1").result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.stats()["by_grant"] == {"refresh_token": 1}
    assert sorted(results) == ["refreshed"] + ["refreshed_elsewhere"] * 7


def _refresh_in_process(
    url: str, folder: str, key_text: str, skew: float, start: Any, out: Any
) -> None:
    db = Database.from_url(url)
    registry = load_registry([Path(folder)])
    lifecycle = TokenLifecycle(
        db, registry, parse_keyring(key_text), actor="proc", clock=lambda: time.time() + skew
    )
    db.engine.connect().close()  # connect before the start line, not after it
    start.wait(timeout=60)  # every process is ready: they refresh at the same moment
    out.put(lifecycle.refresh("items_1").result)
    db.dispose()


def test_concurrent_refresh_from_processes_makes_one_request(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
    echo_dir: Path,
) -> None:
    _create(echo_db, echo_registry, keyring, server)
    _connect(echo_db, echo_registry, keyring, server)
    server.reset_stats()
    server.inject_token_fault(delay_ms=500)
    key_text = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(4)
    procs = [
        ctx.Process(
            target=_refresh_in_process,
            args=(echo_db.url, str(echo_dir), key_text, 3590.0, start, out),
        )
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    results = sorted(out.get(timeout=5) for _ in procs)
    assert results == ["refreshed"] + ["refreshed_elsewhere"] * 3
    assert server.stats()["by_grant"] == {"refresh_token": 1}


def test_client_credentials_grant(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, server: OAuthServer
) -> None:
    _create(echo_db, echo_registry, keyring, server, "m2m_1", integration="authsrv_m2m")
    assert _state(echo_db, "m2m_1")["state"] == "active"
    with IntegrationClient(
        "m2m_1", db=echo_db, registry=echo_registry, keyring=keyring, actor="t"
    ) as client:
        assert client.call("list_items")["client_id"] == server.m2m_client_id
        client.call("list_items")
    assert server.stats()["by_grant"] == {"client_credentials": 1}
    assert "refresh_token" not in _creds(echo_db, keyring, "m2m_1")
    with pytest.raises(OAuthError, match="client-credentials grant"):
        _link(echo_db, echo_registry, keyring, "m2m_1")


@pytest.mark.parametrize("offset", [0, 290, 299, 5000])
def test_a_secret_echoed_anywhere_in_a_long_error_description_is_masked(
    provider: FakeProvider, offset: int
) -> None:
    """Masking comes before shortening: a secret straddling the cut is not half kept."""
    secret, client_secret = "RT-echoed-0123456789abcdef", "CS-echoed-fedcba9876543210"
    provider.reply(
        "POST",
        "/token",
        Reply(400, {"error": "invalid_request", "error_description": "x" * offset + secret}),
    )
    endpoint = TokenEndpoint(
        instance_id="i1",
        token_url=f"{provider.url}/token",
        client_id="c1",
        client_secret=client_secret,
    )
    with pytest.raises(OAuthError) as caught:
        endpoint.refresh(secret)
    text = f"{caught.value} {caught.value.reason!r} {caught.value.args!r}"
    for value in (secret, client_secret):
        assert value[:8] not in text and value[-8:] not in text
    assert len(str(caught.value)) <= 500


def _endpoint(provider: FakeProvider) -> TokenEndpoint:
    return TokenEndpoint(
        instance_id="i1", token_url=f"{provider.url}/token", client_id="c1", client_secret="cs"
    )


def _gzip_reply(body: bytes, encoding: str = "gzip") -> Reply:
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    return Reply(200, raw=gzip.compress(body), headers=headers)


def test_a_gzip_token_response_is_decoded_and_refused_once_too_large(
    provider: FakeProvider,
) -> None:
    """The limit counts decoded bytes: 64 MiB of spaces are 64 KiB of gzip."""
    token = b'{"access_token": "AT-1", "token_type": "Bearer"}'
    provider.reply("POST", "/token", _gzip_reply(token))
    assert _endpoint(provider).refresh("RT-1")["access_token"] == "AT-1"
    assert provider.requests[-1].headers["accept-encoding"] == "gzip, deflate"

    provider.reply("POST", "/token", _gzip_reply(token[:-1] + b" " * (64 << 20) + b"}"))
    tracemalloc.start()
    try:
        with pytest.raises(OAuthError) as caught:
            _endpoint(provider).refresh("RT-1")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "token_response_too_large"
    assert "larger than 1048576 bytes" in str(caught.value)
    assert peak < 8 << 20  # the limit and a network chunk, not 64 MiB


@pytest.mark.parametrize("encoding", ["gzip, gzip", "br", "zstd"])
def test_malformed_token_response_encodings_are_refused(
    provider: FakeProvider, encoding: str
) -> None:
    """Stacked or unknown codings are not decoded at all (they could not be bounded)."""
    provider.reply(
        "POST", "/token", _gzip_reply(gzip.compress(b'{"access_token": "AT"}'), encoding)
    )
    with pytest.raises(OAuthError) as caught:
        _endpoint(provider).refresh("RT-1")
    assert caught.value.reason == "token_response_undecodable"
    assert f"Content-Encoding '{encoding}'" in str(caught.value)
