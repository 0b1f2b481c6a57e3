"""The oidc-provider test server and its harness, end to end, with plain httpx."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from .oauth import OAuthServer, OAuthServerError, start_oauth_server

REDIRECT_URI = "http://127.0.0.1:9/callback"
SCOPE = "openid offline_access items.read"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthServer]:
    with start_oauth_server(
        redirect_uris=[REDIRECT_URI], tmp_path=tmp_path_factory.mktemp("oauth")
    ) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> None:
    if "server" in request.fixturenames:
        srv: OAuthServer = request.getfixturevalue("server")
        srv.clear_faults()
        srv.reset_stats()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_url(
    server: OAuthServer,
    *,
    state: str,
    challenge: str | None,
    client_id: str | None = None,
    redirect_uri: str = REDIRECT_URI,
    scope: str = SCOPE,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id or server.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return f"{server.authorization_url}?{urlencode(params)}"


def callback_params(url: str) -> dict[str, str]:
    assert url.startswith(REDIRECT_URI), url
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def get_code(server: OAuthServer, verifier: str | None = None) -> tuple[str, str]:
    verifier = verifier or pkce_pair()[0]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = secrets.token_urlsafe(16)
    url = authorize_url(server, state=state, challenge=challenge.rstrip(b"=").decode())
    params = callback_params(server.authorize(url))
    assert params["state"] == state
    assert params["iss"] == server.issuer
    return params["code"], verifier


def token_post(server: OAuthServer, **form: str) -> httpx.Response:
    data = {"client_id": server.client_id, "client_secret": server.client_secret, **form}
    return httpx.post(server.token_url, data=data, timeout=10)


def exchange(server: OAuthServer, code: str, verifier: str) -> dict[str, Any]:
    response = token_post(
        server,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=REDIRECT_URI,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_starts_serves_discovery_and_stops(tmp_path: Path) -> None:
    # How long the server takes to start is measured in bench/bench_oauth_server.py.
    with start_oauth_server(redirect_uris=[REDIRECT_URI], tmp_path=tmp_path) as srv:
        assert srv.discovery["issuer"] == srv.issuer
        assert srv.discovery["code_challenge_methods_supported"] == ["S256"]
        assert "client_credentials" in srv.discovery["grant_types_supported"]
        assert srv.token_url == f"{srv.issuer}/token"
        process = srv._process
    assert process is not None and process.poll() is not None  # stopped on exit


def test_authorization_code_with_pkce(server: OAuthServer) -> None:
    code, verifier = get_code(server)
    tokens = exchange(server, code, verifier)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["refresh_token"]
    # oidc-provider drops offline_access unless prompt=consent (OIDC Core 11); the server
    # issues refresh tokens to test-client regardless
    assert set(tokens["scope"].split()) == {"openid", "items.read"}
    # codes are single use
    again = token_post(
        server,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=REDIRECT_URI,
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_client_secret_basic_client(server: OAuthServer) -> None:
    verifier, challenge = pkce_pair()
    url = authorize_url(server, state="s1", challenge=challenge, client_id=server.basic_client_id)
    code = callback_params(server.authorize(url))["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
    }
    auth = (server.basic_client_id, server.basic_client_secret)
    response = httpx.post(server.token_url, data=form, auth=auth, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["refresh_token"]


def test_refresh_rotation_and_reuse_detection(server: OAuthServer) -> None:
    first = exchange(server, *get_code(server))
    rotated = token_post(server, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]

    reused = token_post(server, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    # reuse detection revokes the whole grant: the rotated token is dead too
    after = token_post(server, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert after.status_code == 400
    assert after.json()["error"] == "invalid_grant"


def test_wrong_client_secret(server: OAuthServer) -> None:
    code, verifier = get_code(server)
    response = httpx.post(
        server.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT_URI,
            "client_id": server.client_id,
            "client_secret": "wrong",
        },
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_pkce_is_required(server: OAuthServer) -> None:
    # no code_challenge: the authorization request itself is refused
    params = callback_params(server.authorize(authorize_url(server, state="x", challenge=None)))
    assert params["error"] == "invalid_request"
    assert params["state"] == "x"
    # a code issued with a challenge can't be redeemed without (or with a wrong) verifier
    code, _ = get_code(server)
    missing = token_post(
        server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI
    )
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_grant"
    code, _ = get_code(server)
    wrong = token_post(
        server,
        grant_type="authorization_code",
        code=code,
        code_verifier=pkce_pair()[0],
        redirect_uri=REDIRECT_URI,
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"


def test_redirect_uri_exact_match(server: OAuthServer) -> None:
    _, challenge = pkce_pair()
    url = authorize_url(
        server, state="s", challenge=challenge, redirect_uri=REDIRECT_URI + "/other"
    )
    with pytest.raises(OAuthServerError, match="redirect_uri"):
        server.authorize(url)


def test_consent_denied(server: OAuthServer) -> None:
    _, challenge = pkce_pair()
    url = authorize_url(server, state="deny-me", challenge=challenge)
    params = callback_params(server.authorize(url, deny=True))
    assert params["error"] == "access_denied"
    assert params["state"] == "deny-me"
    assert "code" not in params


def test_client_credentials_and_api(server: OAuthServer) -> None:
    response = httpx.post(
        server.token_url,
        data={"grant_type": "client_credentials", "scope": "items.read"},
        auth=(server.m2m_client_id, server.m2m_client_secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["scope"] == "items.read"
    assert "refresh_token" not in token
    api = httpx.get(
        server.api_url, headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=10
    )
    assert api.status_code == 200
    assert api.json()["client_id"] == server.m2m_client_id


def test_api_items(server: OAuthServer) -> None:
    tokens = exchange(server, *get_code(server))
    ok = httpx.get(
        server.api_url, headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10
    )
    assert ok.status_code == 200
    body = ok.json()
    assert body["client_id"] == server.client_id
    assert body["account_id"] == "alice"
    assert body["items"]
    bad = httpx.get(server.api_url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert httpx.get(server.api_url, timeout=10).status_code == 401


def test_access_token_expiry(tmp_path: Path) -> None:
    with start_oauth_server(
        redirect_uris=[REDIRECT_URI], access_token_ttl=3, tmp_path=tmp_path
    ) as srv:
        tokens = exchange(srv, *get_code(srv))
        assert tokens["expires_in"] == 3
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        time.sleep(3.2)
        assert httpx.get(srv.api_url, headers=headers, timeout=10).status_code == 401
        refreshed = token_post(
            srv, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
        )
        assert refreshed.status_code == 200, refreshed.text
        headers = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        assert httpx.get(srv.api_url, headers=headers, timeout=10).status_code == 200


def test_stats_count_token_requests(server: OAuthServer) -> None:
    tokens = exchange(server, *get_code(server))
    token_post(server, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    token_post(server, grant_type="refresh_token", refresh_token="bogus")
    stats = server.stats()
    assert stats["token_requests"] == 3
    assert stats["by_grant"] == {"authorization_code": 1, "refresh_token": 2}
    assert stats["by_status"] == {"200": 2, "400": 1}
    assert stats["by_client"] == {server.client_id: 3}
    server.reset_stats()
    assert server.stats()["token_requests"] == 0


def test_fault_injection(server: OAuthServer) -> None:
    code, verifier = get_code(server)
    server.inject_token_fault(status=503, count=2)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
    }
    for _ in range(2):
        response = token_post(server, **form)
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
    assert token_post(server, **form).status_code == 200  # faults did not consume the code

    server.inject_token_fault(body="not json", status=200)
    garbage = token_post(server, grant_type="refresh_token", refresh_token="x")
    assert garbage.status_code == 200
    assert garbage.text == "not json"

    server.inject_token_fault(delay_ms=300)
    started = time.monotonic()
    slow = token_post(server, grant_type="refresh_token", refresh_token="x")
    assert time.monotonic() - started >= 0.3
    assert slow.status_code == 400  # the real endpoint answered after the delay

    server.inject_token_fault(close=True)
    with pytest.raises(httpx.TransportError):
        token_post(server, grant_type="refresh_token", refresh_token="x")

    stats = server.stats()
    assert stats["token_requests"] == 6
    assert stats["faults_served"] == 5
    assert stats["by_status"] == {"503": 2, "200": 2, "400": 1, "closed": 1}
    assert stats["by_grant"] == {"authorization_code": 3, "refresh_token": 3}


def test_login_account_and_config_knobs(tmp_path: Path) -> None:
    config = {"deny_consent": True, "api_required_scope": "items.write"}
    with start_oauth_server(redirect_uris=[REDIRECT_URI], tmp_path=tmp_path, config=config) as srv:
        _, challenge = pkce_pair()
        url = authorize_url(srv, state="s", challenge=challenge)
        assert callback_params(srv.authorize(url))["error"] == "access_denied"

        response = httpx.post(
            srv.token_url,
            data={"grant_type": "client_credentials", "scope": "items.read"},
            auth=(srv.m2m_client_id, srv.m2m_client_secret),
            timeout=10,
        )
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        api = httpx.get(srv.api_url, headers=headers, timeout=10)
        assert api.status_code == 403
        assert 'error="insufficient_scope"' in api.headers["www-authenticate"]


def test_authorize_as_other_account(server: OAuthServer) -> None:
    verifier, challenge = pkce_pair()
    url = authorize_url(server, state="s", challenge=challenge)
    code = callback_params(server.authorize(url, account="bob"))["code"]
    tokens = exchange(server, code, verifier)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(server.api_url, headers=headers, timeout=10).json()["account_id"] == "bob"
