"""The connect service: the OAuth2 authorization-code flow with PKCE, as an ASGI app.

``GET /connect/{instance_id}`` redirects to the provider's authorization URL with the
definition's scopes and ``additionalParameters``, a single-use ``state`` stored
server-side with an expiry, and a PKCE S256 challenge. The provider sends the user back to
the exact redirect URI (``PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI``), served here; the
callback checks the state, exchanges the code with Authlib, refuses any token response
that is not a 2xx with an ``access_token``, stores the tokens encrypted, sets the instance
``active`` and audits. Every failure gets a clear page and an audit row; no page or log
line shows a token, a code, a verifier or a client secret.
"""

from __future__ import annotations

import html
import time
from urllib.parse import urlencode, urlsplit

from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, OAuth2Config, Registry
from prefect_integrations.exceptions import IntegrationError, OAuthError
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.endpoint import TokenEndpoint, merge_token, oauth2_setting
from prefect_integrations.runtime import Runtime
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.oauth_states import consume_state, create_state

__all__ = ["authorization_url", "bind_address", "create_app", "runtime_app"]


def _authorization_code_definition(definition: Definition, instance_id: str) -> OAuth2Config:
    oauth2 = definition.oauth2
    if definition.auth_type != "oauth2" or oauth2 is None:
        raise OAuthError(
            f"Instance '{instance_id}' uses integration '{definition.id}', which is not OAuth2",
            reason="not_oauth2",
        )
    if definition.grant_type != "authorization_code":
        raise OAuthError(
            f"Integration '{definition.id}' uses the client-credentials grant: no user "
            "connects it; its tokens are fetched automatically",
            reason="not_authorization_code",
        )
    return oauth2


def authorization_url(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    instance_id: str,
    redirect_uri: str,
    actor: str,
) -> str:
    """Start an authorization for ``instance_id`` and return the provider URL to open."""
    with db.transaction(f"start an authorization for instance '{instance_id}'") as session:
        inst = instances.require_instance(session, instance_id)
        definition = registry.get(inst.integration_id)
        oauth2 = _authorization_code_definition(definition, instance_id)
        creds = vault.fetch_credentials(
            session, keyring, instance_id, actor=actor, purpose="oauth.connect"
        )
        client = TokenEndpoint.for_instance(definition, inst.config, creds)
        pkce = oauth2.pkce
        verifier = generate_token(64) if pkce else ""
        state = create_state(
            session, keyring, instance_id=instance_id, redirect_uri=redirect_uri, verifier=verifier
        )
        audit.record(
            session,
            action=AuditAction.OAUTH_AUTHORIZE,
            actor=actor,
            instance_id=instance_id,
            integration_id=definition.id,
            details={"redirect_uri": redirect_uri},
        )
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": oauth2.scope_separator.join(oauth2.scopes),
        "state": state,
    }
    if pkce:
        params["code_challenge"] = create_s256_code_challenge(verifier)
        params["code_challenge_method"] = "S256"
    for name, value in oauth2.additional_parameters.items():
        params.setdefault(name, value)
    base = oauth2_setting(definition, inst.config, "authorizationUrl")
    separator = "&" if urlsplit(base).query else "?"
    return f"{base}{separator}{urlencode(params)}"


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
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(
    *, db: Database, registry: Registry, keyring: Keyring, actor: str, redirect_uri: str
) -> FastAPI:
    """The connect service for one store; the callback is served at ``redirect_uri``'s path."""
    app = FastAPI(
        title="prefect-integrations connect", docs_url=None, redoc_url=None, openapi_url=None
    )
    callback_path = urlsplit(redirect_uri).path or "/"

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/connect/{instance_id}")
    def connect(instance_id: str) -> Response:
        try:
            url = authorization_url(
                db,
                registry,
                keyring,
                instance_id=instance_id,
                redirect_uri=redirect_uri,
                actor=actor,
            )
        except IntegrationError as exc:
            return _page("Cannot connect", str(exc), status=400)
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    @app.get(callback_path)
    def callback(request: Request) -> Response:
        query = request.query_params
        try:
            with db.transaction("finish an authorization") as session:
                consumed = consume_state(session, keyring, query.get("state", ""))
        except OAuthError as exc:
            audit_failure(db, actor, None, exc.reason)
            return _page("Authorization failed", str(exc), status=400)
        instance_id = consumed.instance_id
        error = query.get("error")
        if error:
            reason = "consent_denied" if error == "access_denied" else error[:64]
            description = query.get("error_description", "")[:300]
            audit_failure(db, actor, instance_id, reason)
            message = (
                "Access was not granted; the instance stays as it was."
                if error == "access_denied"
                else f"The provider answered '{error[:64]}': {description}"
            )
            return _page(f"Instance '{instance_id}' was not connected", message, status=400)
        code = query.get("code")
        if not code:
            audit_failure(db, actor, instance_id, "no_code")
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
            )
        except IntegrationError as exc:
            reason = getattr(exc, "reason", exc.code)
            audit_failure(db, actor, instance_id, reason)
            return _page(f"Instance '{instance_id}' was not connected", str(exc), status=502)
        return _page(
            f"Instance '{instance_id}' is connected",
            "The tokens are stored encrypted. You can close this page.",
            status=200,
            ok=True,
        )

    return app


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
) -> None:
    """Exchange the code for tokens, store them, and activate the instance."""
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
            },
        )


def audit_failure(db: Database, actor: str, instance_id: str | None, reason: str) -> None:
    """Record a failed authorization."""
    with db.transaction("record a failed authorization") as session:
        audit.record(
            session,
            action=AuditAction.OAUTH_CONNECT,
            actor=actor,
            outcome="failure",
            instance_id=instance_id,
            details={"reason": reason},
        )


def runtime_app(rt: Runtime) -> FastAPI:
    """The connect service of the runtime's store, called back at the configured URI."""
    return create_app(
        db=rt.db,
        registry=rt.registry,
        keyring=rt.keyring,
        actor=rt.actor,
        redirect_uri=rt.settings.oauth_redirect_uri,
    )


def bind_address(
    redirect_uri: str, *, host: str | None = None, port: int | None = None
) -> tuple[str, int]:
    """Where to listen: the given host and port, else those of the redirect URI."""
    redirect = urlsplit(redirect_uri)
    return host or redirect.hostname or "127.0.0.1", port or redirect.port or 8765
