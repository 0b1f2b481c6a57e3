"""The connect service admits only operator-minted links, bound to one browser."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import ConfigurationError, OAuthError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.oauth import connect_link
from prefect_integrations.oauth.endpoint import TokenEndpoint
from prefect_integrations.oauth.links import mint_link, verify_link
from prefect_integrations.oauth.listener import listen
from prefect_integrations.oauth.service import COOKIE_NAME, SECURITY_HEADERS, create_app
from prefect_integrations.runtime import Runtime, runtime
from prefect_integrations.settings import Settings
from prefect_integrations.store import audit, instances
from prefect_integrations.store.definitions import sync_definitions

from .factories import make_instance

REDIRECT_URI = "http://127.0.0.1:8765/callback"
CLIENT_ID = "visible-client-id-7f3a"
PROVIDER = "http://127.0.0.1:9"  # never contacted: the tests stop before the token exchange


def _create(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    instance_id: str = "items_1",
    *,
    active: bool = False,
) -> None:
    oauth2: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": "cs-secret-91c2"}
    if active:
        oauth2 |= {"access_token": "at-91c2", "refresh_token": "rt-91c2", "token_type": "Bearer"}
    make_instance(
        db,
        registry,
        keyring,
        instance_id,
        "authsrv",
        config={
            "base_url": PROVIDER,
            "authorization_url": f"{PROVIDER}/auth",
            "token_url": f"{PROVIDER}/token",
        },
        credentials={"oauth2": oauth2},
        status={"state": "active" if active else "inactive"},
        actor="admin",
    )


def _browser(db: Database, registry: Registry, keyring: Keyring, **kw: Any) -> TestClient:
    app = create_app(
        db=db,
        registry=registry,
        keyring=keyring,
        actor="connect",
        redirect_uri=kw.get("redirect_uri", REDIRECT_URI),
    )
    return TestClient(app, base_url="http://127.0.0.1:8765", follow_redirects=False)


def _link(
    db: Database, registry: Registry, keyring: Keyring, instance_id: str = "items_1", **kw: Any
) -> str:
    return mint_link(
        db, registry, keyring, instance_id=instance_id, redirect_uri=REDIRECT_URI, **kw
    )


def _audit_rows(db: Database) -> list[audit.AuditEntry]:
    with db.transaction() as s:
        return list(audit.tail(s, limit=10000))


def _state_of(response: httpx.Response) -> str:
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)["state"][0]


def _token(link: str) -> str:
    return parse_qs(urlsplit(link).query)["link"][0]


def test_connect_without_a_valid_link_reveals_nothing_and_writes_nothing(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    _create(echo_db, echo_registry, keyring, "items_2")
    _create(echo_db, echo_registry, keyring, "gone")
    gone = _link(echo_db, echo_registry, keyring, "gone")
    with echo_db.transaction() as s:
        instances.delete_instance(s, "gone", actor="admin")
    good = _token(_link(echo_db, echo_registry, keyring))
    payload, signature = good.split(".")
    other_ring = parse_keyring(f"{keyring.primary_id}:{generate_key()}")
    foreign = _link(echo_db, echo_registry, other_ring)  # recorded, but signed with another key
    tampered = _token(_link(echo_db, echo_registry, keyring, "items_2")).split(".")[0]
    browser = _browser(echo_db, echo_registry, keyring)
    before = len(_audit_rows(echo_db))

    attempts = [
        "/connect/items_1",  # an existing instance, no link
        "/connect/no_such_instance",
        "/connect/no_such_instance?link=" + good,
        "/connect/items_1?link=garbage",
        f"/connect/items_1?link={payload}.{signature[:-2]}AA",  # forged signature
        f"/connect/items_1?link={tampered}.{signature}",  # another payload, this signature
        "/connect/items_1?link=" + _token(foreign),
        "/connect/items_2?link=" + good,  # a link for another instance
        gone,  # the instance was deleted
        "/connect/items_1?link=" + "A" * 5000,
    ]
    pages = [browser.get(url) for url in attempts * 20]
    assert {(p.status_code, p.text) for p in pages} == {(pages[0].status_code, pages[0].text)}
    assert pages[0].status_code == 403 and "invalid, expired or already used" in pages[0].text
    for text in ("items_1", "items_2", "no_such_instance", "gone", CLIENT_ID):
        assert text not in pages[0].text
    assert not any(COOKIE_NAME in p.headers.get("set-cookie", "") for p in pages)
    # no decryption (it is audited), no authorization row, nothing for a flood to grow
    assert len(_audit_rows(echo_db)) == before
    # the refusals used nothing up: the good link still opens one authorization
    assert browser.get("/connect/items_1?link=" + good).status_code == 302


def test_a_link_opens_one_authorization(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    link = _link(echo_db, echo_registry, keyring)
    assert link.startswith("http://127.0.0.1:8765/connect/items_1?link=")
    first = _browser(echo_db, echo_registry, keyring).get(link)
    location = first.headers["location"]
    assert location.startswith(f"{PROVIDER}/auth?") and f"client_id={CLIENT_ID}" in location
    again = _browser(echo_db, echo_registry, keyring).get(link)
    assert again.status_code == 403 and CLIENT_ID not in again.text


def test_concurrent_openings_of_one_link_start_one_authorization(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    link = _link(echo_db, echo_registry, keyring)
    barrier, statuses = threading.Barrier(6), []

    def open_link() -> None:
        browser = _browser(echo_db, echo_registry, keyring)
        barrier.wait()
        statuses.append(browser.get(link).status_code)

    threads = [threading.Thread(target=open_link) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [302] + [403] * 5
    assert [e.action for e in _audit_rows(echo_db)].count("oauth.authorize") == 1


def test_an_expired_link_is_refused(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    short = _link(echo_db, echo_registry, keyring, ttl=1)
    claims = verify_link(keyring, _token(short))
    assert claims is not None and verify_link(keyring, _token(short), now=claims.expires_at) is None
    time.sleep(1.1)
    assert _browser(echo_db, echo_registry, keyring).get(short).status_code == 403
    # the stored expiry counts too, whatever the signed one says
    stored = _link(echo_db, echo_registry, keyring)
    with echo_db.transaction() as s:
        s.execute(
            sa.text("UPDATE integration_oauth_states SET expires_at = now() - interval '1 second'")
        )
    assert _browser(echo_db, echo_registry, keyring).get(stored).status_code == 403
    with pytest.raises(OAuthError, match="1 to 604800 seconds"):
        _link(echo_db, echo_registry, keyring, ttl=0)


def test_an_active_instance_is_reconnected_only_with_a_reconnect_link(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring, active=True)
    with pytest.raises(OAuthError, match=r"is active.*--reconnect") as refused:
        _link(echo_db, echo_registry, keyring)
    assert refused.value.reason == "reconnect_required"
    reconnect = _link(echo_db, echo_registry, keyring, reconnect=True)
    assert _browser(echo_db, echo_registry, keyring).get(reconnect).status_code == 302

    # minted while inactive, opened after the instance became active
    _create(echo_db, echo_registry, keyring, "items_2")
    link = _link(echo_db, echo_registry, keyring, "items_2")
    with echo_db.transaction() as s:
        instances.update_instance(
            s,
            echo_registry,
            "items_2",
            status={"state": "active", "error": None, "details": {}},
            actor="admin",
        )
    before = len(_audit_rows(echo_db))
    page = _browser(echo_db, echo_registry, keyring).get(link)
    assert page.status_code == 409 and "reconnect link" in page.text
    assert "items_2" not in page.text and CLIENT_ID not in page.text
    assert len(_audit_rows(echo_db)) == before


def test_the_callback_needs_the_cookie_of_the_browser_that_opened_the_link(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    victim = _browser(echo_db, echo_registry, keyring)
    opened = victim.get(_link(echo_db, echo_registry, keyring))
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/callback"} <= attributes
    assert "secure" not in attributes  # the redirect URI is http
    state = _state_of(opened)
    callback = f"/callback?state={state}&error=access_denied"
    before = len(_audit_rows(echo_db))

    elsewhere = _browser(echo_db, echo_registry, keyring)
    for headers in ({}, {"Cookie": f"{COOKIE_NAME}={victim.cookies[COOKIE_NAME][:-2]}xx"}):
        page = elsewhere.get(callback, headers=headers)
        assert page.status_code == 400 and "started in another browser" in page.text
    # an attacker's callback (login CSRF) opened in the victim's browser fails and leaves
    # the victim's own flow alone
    page = victim.get("/callback?state=attackers-state&code=attackers-code")
    assert page.status_code == 400 and COOKIE_NAME in victim.cookies
    assert len(_audit_rows(echo_db)) == before  # and the state is still there

    page = victim.get(callback)
    assert page.status_code == 400 and "Access was not granted" in page.text
    assert COOKIE_NAME not in victim.cookies  # spent


def test_the_cookie_is_secure_when_the_redirect_uri_is_https(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    https = "https://connect.example.com/oauth/callback"
    link = mint_link(echo_db, echo_registry, keyring, instance_id="items_1", redirect_uri=https)
    assert link.startswith("https://connect.example.com/connect/items_1?link=")
    browser = _browser(echo_db, echo_registry, keyring, redirect_uri=https)
    opened = browser.get(f"/connect/items_1?link={_token(link)}")
    attributes = {p.strip().lower() for p in opened.headers["set-cookie"].split(";")[1:]}
    assert {"secure", "httponly", "samesite=lax", "path=/oauth/callback"} <= attributes


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("access_denied", "consent_denied"),
        ("invalid_scope", "invalid_scope"),
        ("<script>alert('x')</script>", "unknown_error"),
        ("server_error\nforged log line", "unknown_error"),
    ],
)
def test_the_provider_error_is_kept_only_as_a_standard_code(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, error: str, reason: str
) -> None:
    _create(echo_db, echo_registry, keyring)
    browser = _browser(echo_db, echo_registry, keyring)
    state = _state_of(browser.get(_link(echo_db, echo_registry, keyring)))
    description = "Call +1-555-0100 to unlock your account"
    page = browser.get(
        "/callback", params={"state": state, "error": error, "error_description": description}
    )
    assert page.status_code == 400
    assert description not in page.text and "script>" not in page.text
    assert "forged log line" not in page.text
    last = _audit_rows(echo_db)[-1]
    assert (last.action, last.outcome, last.details["reason"]) == (
        "oauth.connect",
        "failure",
        reason,
    )
    assert description not in str(last.details) and "forged" not in str(last.details)


def test_every_response_sends_the_security_headers(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    browser = _browser(echo_db, echo_registry, keyring)
    opened = browser.get(_link(echo_db, echo_registry, keyring))
    responses = [
        opened,
        browser.get(f"/callback?state={_state_of(opened)}&error=access_denied"),
        browser.get("/callback?state=x&code=y"),
        browser.get("/connect/items_1"),
        browser.get("/healthz"),
        browser.get("/nothing-here"),
    ]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_audit_rows_of_a_connect_name_the_client_address_and_user_agent(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _create(echo_db, echo_registry, keyring)
    browser = _browser(echo_db, echo_registry, keyring)
    agent = {"User-Agent": "Mozilla/5.0 (connect-test)"}
    opened = browser.get(_link(echo_db, echo_registry, keyring), headers=agent)
    browser.get(f"/callback?state={_state_of(opened)}&error=access_denied", headers=agent)
    rows = {e.action: e for e in _audit_rows(echo_db) if e.action.startswith("oauth.")}
    for action in ("oauth.authorize", "oauth.connect"):
        details = rows[action].details
        assert details["client_address"] == "testclient", details  # TestClient's peer
        assert details["user_agent"] == "Mozilla/5.0 (connect-test)", details


def test_applications_mint_links_with_the_configured_store(
    cli_env: dict[str, str], db: Database, keyring: Keyring
) -> None:
    rt = runtime()
    with db.transaction() as s:
        sync_definitions(s, rt.registry, actor="admin")
    make_instance(
        db,
        rt.registry,
        keyring,
        "xero_main",
        "xero",
        config={"tenant_id": "t1"},
        credentials={"oauth2": {"client_id": CLIENT_ID, "client_secret": "cs-secret-91c2"}},
    )
    link = connect_link("xero_main", ttl=60)
    assert link.startswith("http://127.0.0.1:8765/connect/xero_main?link=")
    claims = verify_link(keyring, _token(link))
    assert claims is not None and claims.instance_id == "xero_main" and not claims.reconnect
    assert claims.expires_at <= time.time() + 60


def _fake_exchange(self: TokenEndpoint, **kw: Any) -> dict[str, Any]:
    return {"access_token": "new-at", "refresh_token": "new-rt", "expires_in": 3600}


def _flow_at_the_provider(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    monkeypatch: pytest.MonkeyPatch,
    exchange: Any = _fake_exchange,
) -> tuple[TestClient, str]:
    """A browser that opened a link and is now at the provider, and the flow's state."""
    monkeypatch.setattr(TokenEndpoint, "exchange_code", exchange)
    _create(db, registry, keyring)
    browser = _browser(db, registry, keyring)
    return browser, _state_of(browser.get(_link(db, registry, keyring)))


def test_a_deactivation_during_the_flow_stands(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator deactivates while the person is at the provider: nothing is stored."""
    browser, state = _flow_at_the_provider(echo_db, echo_registry, keyring, monkeypatch)
    unused = _link(echo_db, echo_registry, keyring)
    with echo_db.transaction() as s:
        instances.update_instance(
            s,
            echo_registry,
            "items_1",
            status={"state": "error", "error": "paused", "details": {}},
            actor="operator",
        )
        instances.update_instance(
            s,
            echo_registry,
            "items_1",
            status={"state": "inactive", "error": None, "details": {}},
            actor="operator",
        )
    page = browser.get(f"/callback?state={state}&code=c0de")
    assert page.status_code == 400
    assert _browser(echo_db, echo_registry, keyring).get(unused).status_code == 403  # spent
    with echo_db.transaction() as s:
        assert instances.require_instance(s, "items_1").state == "inactive"


def test_a_state_change_during_the_token_exchange_stands(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exchange_while_the_operator_acts(self: TokenEndpoint, **kw: Any) -> dict[str, Any]:
        with echo_db.transaction() as s:
            instances.update_instance(
                s,
                echo_registry,
                "items_1",
                status={"state": "error", "error": "held", "details": {}},
                actor="operator",
            )
        return _fake_exchange(self, **kw)

    browser, state = _flow_at_the_provider(
        echo_db, echo_registry, keyring, monkeypatch, exchange_while_the_operator_acts
    )
    page = browser.get(f"/callback?state={state}&code=c0de")
    assert page.status_code != 200
    with echo_db.transaction() as s:
        assert instances.require_instance(s, "items_1").state == "error"


def test_a_new_primary_key_does_not_break_a_flow_under_way(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser, state = _flow_at_the_provider(echo_db, echo_registry, keyring, monkeypatch)
    rotated = parse_keyring(
        f"k-new:{generate_key()},"
        + ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)
    )
    after = _browser(echo_db, echo_registry, rotated)
    after.cookies.set(COOKIE_NAME, browser.cookies[COOKIE_NAME])
    assert after.get(f"/callback?state={state}&code=c0de").status_code == 200


@pytest.mark.parametrize("signature", ["\u00e9", "abc\u00e9"])
def test_non_ascii_links_and_cookies_get_the_refusal_page(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, signature: str
) -> None:
    _create(echo_db, echo_registry, keyring)
    browser = _browser(echo_db, echo_registry, keyring)
    payload = _token(_link(echo_db, echo_registry, keyring)).split(".")[0]
    refused = browser.get(f"/connect/items_1?link={payload}.{signature}")
    assert refused.status_code == 403 and refused.headers["X-Frame-Options"] == "DENY"
    state = _state_of(browser.get(_link(echo_db, echo_registry, keyring)))
    browser.cookies.clear()
    raw_cookie = f"{COOKIE_NAME}=\u00e9t\u00e9".encode("latin-1")  # as a raw client sends it
    page = browser.get(f"/callback?state={state}&code=c0de", headers={"cookie": raw_cookie})
    assert page.status_code == 400


def _runtime_with(monkeypatch: pytest.MonkeyPatch, redirect_uri: str | None) -> Runtime:
    monkeypatch.delenv("PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI", raising=False)
    if redirect_uri is not None:
        monkeypatch.setenv("PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI", redirect_uri)
    return Runtime(Settings())


def test_the_callback_follows_the_port_unless_it_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    listener = listen(_runtime_with(monkeypatch, None), port=free)
    with listener.socket:
        assert listener.url == f"http://127.0.0.1:{free}"
        assert listener.redirect_uri == f"http://127.0.0.1:{free}/callback"
    explicit = "https://connect.example.com/oauth/callback"
    listener = listen(_runtime_with(monkeypatch, explicit), host="127.0.0.1", port=free)
    with listener.socket:
        assert listener.redirect_uri == explicit  # set explicitly: kept as it is


def test_a_port_in_use_is_a_clear_error_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{port}.*--oauth-port"):
            listen(_runtime_with(monkeypatch, None), port=port)
