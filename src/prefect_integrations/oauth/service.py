"""The connect service: the OAuth2 authorization-code flow with PKCE, as an ASGI app.

``GET /connect/{instance_id}?link=...`` starts an authorization only for a connect link an
operator minted (`prefect_integrations.oauth.links`): signed, unexpired, unused and for
that instance (and for an ``active`` instance, minted with ``reconnect``). Anything else
gets one and the same refusal page, before any database write, decryption or audit row,
so the service tells nobody which instances exist and a flood of requests costs nothing.

A valid link is used up, and the browser is redirected to the provider's authorization
URL with the definition's scopes and ``additionalParameters``, a single-use ``state``
stored server-side with an expiry, and a PKCE S256 challenge; it also gets an HttpOnly,
SameSite=Lax cookie binding the state to it. The provider sends the user back to the exact
redirect URI (``PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI``), served here; the callback
requires the cookie, checks the state, exchanges the code with Authlib, refuses any token
response that is not a 2xx with an ``access_token``, stores the tokens encrypted, sets the
instance ``active`` and audits with the client's address and user agent. A provider's
``error`` is kept only as one of the standard OAuth error codes. No page or log line shows
a token, a code, a verifier or a client secret; every page forbids framing, sniffing,
referrers and any script.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import IntegrationError, OAuthError
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.endpoint import TokenEndpoint, merge_token, oauth2_setting
from prefect_integrations.oauth.links import (
    LinkClaims,
    authorization_code_config,
    browser_binding,
    is_bound,
    verify_link,
)
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.oauth_states import (
    STATE_TTL_SECONDS,
    consume_link_session,
    consume_state,
    create_state,
)

__all__ = [
    "COOKIE_NAME",
    "OAUTH_ERROR_CODES",
    "SECURITY_HEADERS",
    "create_app",
    "oauth_error_code",
]

#: The cookie that binds an authorization's state to the browser that started it.
COOKIE_NAME = "prefect_integrations_connect"
#: The error codes of an authorization response (RFC 6749 section 4.1.2.1).
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "unauthorized_client",
        "access_denied",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    }
)
#: Sent with every response of the connect service.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MAX_STATE = 512


def oauth_error_code(error: str) -> str:
    """The provider's ``error`` if it is a standard code, else ``unknown_error``."""
    return error if error in OAUTH_ERROR_CODES else "unknown_error"


class _Refused(Exception):
    """The link does not open an authorization (the page says nothing more)."""


class _AlreadyActive(Exception):
    """The instance became active after a link without ``reconnect`` was minted."""


def _client_details(request: Request) -> dict[str, Any]:
    return {
        "client_address": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent", "")[:256],
    }


def _start(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    claims: LinkClaims,
    redirect_uri: str,
    actor: str,
    client: Mapping[str, Any],
) -> tuple[str, str]:
    """Use the link up and start its authorization: the provider URL and the state."""
    instance_id = claims.instance_id
    with db.transaction("open a connect link") as session:
        if not consume_link_session(session, instance_id=instance_id, nonce=claims.nonce):
            raise _Refused
        inst = instances.get_instance(session, instance_id)
        if inst is None:
            raise _Refused
        if inst.state == "active" and not claims.reconnect:
            raise _AlreadyActive
        definition = registry.get(inst.integration_id)
        oauth2 = authorization_code_config(definition, instance_id)
        creds = vault.fetch_credentials(
            session, keyring, instance_id, actor=actor, purpose="oauth.connect"
        )
        endpoint = TokenEndpoint.for_instance(definition, inst.config, creds)
        verifier = generate_token(64) if oauth2.pkce else ""
        state = create_state(
            session, keyring, instance_id=instance_id, redirect_uri=redirect_uri, verifier=verifier
        )
        audit.record(
            session,
            action=AuditAction.OAUTH_AUTHORIZE,
            actor=actor,
            instance_id=instance_id,
            integration_id=definition.id,
            details={"redirect_uri": redirect_uri, "reconnect": claims.reconnect, **client},
        )
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": endpoint.client_id,
        "redirect_uri": redirect_uri,
        "scope": oauth2.scope_separator.join(oauth2.scopes),
        "state": state,
    }
    if oauth2.pkce:
        params["code_challenge"] = create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    for name, value in oauth2.additional_parameters.items():
        params.setdefault(name, value)
    base = oauth2_setting(definition, inst.config, "authorizationUrl")
    separator = "&" if urlsplit(base).query else "?"
    return f"{base}{separator}{urlencode(params)}", state


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}
h1{{font-size:1.4rem}} .ok{{color:#176f2c}} .bad{{color:#a1260d}}</style></head>
<body><h1 class="{css}">{title}</h1><p>{message}</p></body></html>
"""


def _page(title: str, message: str, *, status: int, ok: bool = False) -> HTMLResponse:
    body = _PAGE.format(
        title=html.escape(title), message=html.escape(message), css="ok" if ok else "bad"
    )
    return HTMLResponse(body, status_code=status)


def _refusal() -> HTMLResponse:
    return _page(
        "This link does not work",
        "The connect link is invalid, expired or already used. Ask for a new one.",
        status=403,
    )


def create_app(
    *, db: Database, registry: Registry, keyring: Keyring, actor: str, redirect_uri: str
) -> FastAPI:
    """The connect service for one store; the callback is served at ``redirect_uri``'s path."""
    app = FastAPI(
        title="prefect-integrations connect", docs_url=None, redoc_url=None, openapi_url=None
    )
    callback_path = urlsplit(redirect_uri).path or "/"
    secure_cookie = urlsplit(redirect_uri).scheme == "https"

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/connect/{instance_id}")
    def connect(instance_id: str, request: Request) -> Response:
        claims = verify_link(keyring, request.query_params.get("link", ""))
        if claims is None or claims.instance_id != instance_id:
            return _refusal()
        try:
            url, state = _start(
                db,
                registry,
                keyring,
                claims=claims,
                redirect_uri=redirect_uri,
                actor=actor,
                client=_client_details(request),
            )
        except _Refused:
            return _refusal()
        except _AlreadyActive:
            return _page(
                "Already connected",
                "This account is already connected; connecting it again needs a reconnect "
                "link. Ask for one.",
                status=409,
            )
        except IntegrationError:
            return _page(
                "Cannot connect", "This link cannot start an authorization now.", status=400
            )
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(
            COOKIE_NAME,
            browser_binding(keyring, state),
            max_age=STATE_TTL_SECONDS,
            path=callback_path,
            secure=secure_cookie,
            httponly=True,
            samesite="lax",
        )
        return response

    @app.get(callback_path)
    def callback(request: Request) -> Response:
        state = request.query_params.get("state", "")
        if not _bound(keyring, state, request.cookies.get(COOKIE_NAME, "")):
            # another browser's (or a forged) callback: it leaves this browser's flow alone
            return _page(
                "Authorization failed",
                "This authorization is unknown, expired or was started in another browser. "
                "Open the connect link again in this browser, or ask for a new one.",
                status=400,
            )
        response = _callback(db, registry, keyring, request, state=state, actor=actor)
        response.delete_cookie(
            COOKIE_NAME, path=callback_path, secure=secure_cookie, httponly=True, samesite="lax"
        )
        return response

    return app


def _bound(keyring: Keyring, state: str, cookie: str) -> bool:
    """Whether ``cookie`` is the one set with ``state`` by this service."""
    return len(state) <= _MAX_STATE and is_bound(keyring, state, cookie)


def _callback(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    request: Request,
    *,
    state: str,
    actor: str,
) -> Response:
    query = request.query_params
    client = _client_details(request)
    try:
        with db.transaction("finish an authorization") as session:
            consumed = consume_state(session, keyring, state)
    except OAuthError as exc:
        audit_failure(db, actor, None, exc.reason, client=client)
        return _page("Authorization failed", str(exc), status=400)
    instance_id = consumed.instance_id
    error = query.get("error")
    if error:
        error_code = oauth_error_code(error)
        reason = "consent_denied" if error_code == "access_denied" else error_code
        audit_failure(db, actor, instance_id, reason, client=client)
        message = (
            "Access was not granted; the instance stays as it was."
            if error_code == "access_denied"
            else f"The provider refused the authorization ({error_code}); the instance stays "
            "as it was."
        )
        return _page(f"Instance '{instance_id}' was not connected", message, status=400)
    code = query.get("code")
    if not code:
        audit_failure(db, actor, instance_id, "no_code", client=client)
        return _page("Authorization failed", "The provider sent no code.", status=400)
    try:
        finish(
            db,
            registry,
            keyring,
            instance_id=instance_id,
            code=code,
            verifier=consumed.verifier,
            redirect_uri=consumed.redirect_uri,
            actor=actor,
            client=client,
        )
    except IntegrationError as exc:
        reason = getattr(exc, "reason", exc.code)
        audit_failure(db, actor, instance_id, reason, client=client)
        return _page(f"Instance '{instance_id}' was not connected", str(exc), status=502)
    return _page(
        f"Instance '{instance_id}' is connected",
        "The tokens are stored encrypted. You can close this page.",
        status=200,
        ok=True,
    )


def finish(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    instance_id: str,
    code: str,
    verifier: str,
    redirect_uri: str,
    actor: str,
    client: Mapping[str, Any] | None = None,
) -> None:
    """Exchange the code for tokens, store them, and activate the instance.

    ``client`` (the browser's address and user agent) goes into the audit row.
    """
    with db.transaction(f"read instance '{instance_id}'") as session:
        inst = instances.require_instance(session, instance_id)
        definition = registry.get(inst.integration_id)
        creds = vault.fetch_credentials(
            session, keyring, instance_id, actor=actor, purpose="oauth.connect"
        )
    endpoint = TokenEndpoint.for_instance(definition, inst.config, creds)
    token = endpoint.exchange_code(
        code=code, code_verifier=verifier or None, redirect_uri=redirect_uri
    )
    merged = merge_token(creds.reveal(), token, now=time.time())
    with db.transaction(f"store the tokens of instance '{instance_id}'") as session:
        now_state = instances.require_instance(session, instance_id).state
        if now_state != inst.state:  # an operator acted during the flow: their change stands
            raise OAuthError(
                f"Instance '{instance_id}' became {now_state} while it was being connected; "
                "nothing was stored",
                reason="instance_changed",
            )
        instances.set_credentials(
            session, registry, keyring, instance_id, merged, actor=actor, activate=False
        )
        instances.update_instance(
            session,
            registry,
            instance_id,
            status={"state": "active", "error": None, "details": {}},
            actor=actor,
            reason="connected",
        )
        audit.record(
            session,
            action=AuditAction.OAUTH_CONNECT,
            actor=actor,
            instance_id=instance_id,
            integration_id=definition.id,
            details={
                "scope": merged["oauth2"].get("scope"),
                "refresh_token": "refresh_token" in merged["oauth2"],
                **(client or {}),
            },
        )


def audit_failure(
    db: Database,
    actor: str,
    instance_id: str | None,
    reason: str,
    *,
    client: Mapping[str, Any] | None = None,
) -> None:
    """Record a failed authorization (``client``: the browser's address and user agent)."""
    with db.transaction("record a failed authorization") as session:
        audit.record(
            session,
            action=AuditAction.OAUTH_CONNECT,
            actor=actor,
            outcome="failure",
            instance_id=instance_id,
            details={"reason": reason, **(client or {})},
        )
