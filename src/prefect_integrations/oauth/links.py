"""Connect links: short-lived, single-use, signed URLs that open the connect flow.

The connect service starts an authorization only for a link an operator minted
(`mint_link`, `connect_link`, ``prefect-integrations oauth connect ID``). A link reads
``<service>/connect/<instance_id>?link=<token>``; the token is
``base64url(payload) "." base64url(signature)``, where the payload is compact JSON::

    {"v": 1, "k": key id, "i": instance id, "n": nonce, "e": expiry (epoch s), "r": reconnect}

and the signature is HMAC-SHA256 over ``connect-link.v1.`` and the encoded payload, with a
subkey derived by HKDF-SHA256 from the keyring key named by ``k`` (so keys rotated out of
the keyring invalidate the links they signed, and the subkey never encrypts anything).
The nonce (256 bits) is also recorded in the store (`store.oauth_states`) and deleted
when the link is used: a link opens one authorization, in whichever process.

The browser that opens a link gets a cookie holding an HMAC of the authorization
``state`` under a second subkey (`browser_binding`); the callback is served only to a
browser that presents it, so a captured callback URL completes nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, OAuth2Config, Registry
from prefect_integrations.exceptions import OAuthError
from prefect_integrations.keyring import Keyring
from prefect_integrations.runtime import runtime
from prefect_integrations.store import instances
from prefect_integrations.store.oauth_states import create_link_session

__all__ = [
    "LINK_TTL_SECONDS",
    "MAX_LINK_TTL_SECONDS",
    "LinkClaims",
    "authorization_code_config",
    "browser_binding",
    "connect_link",
    "is_bound",
    "link_base",
    "mint_link",
    "verify_link",
]

LINK_TTL_SECONDS = 600
MAX_LINK_TTL_SECONDS = 7 * 24 * 3600
_VERSION = 1
_LINK_INFO = b"prefect-integrations connect-link v1"
_BROWSER_INFO = b"prefect-integrations connect-browser v1"
_SIGNED_PREFIX = b"connect-link.v1."
_MAX_TOKEN = 2048


@dataclass(frozen=True, slots=True)
class LinkClaims:
    """What a link with a valid signature stands for."""

    instance_id: str
    nonce: str
    expires_at: int
    reconnect: bool


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(subkey: bytes, payload: str) -> str:
    return _b64(hmac.new(subkey, _SIGNED_PREFIX + payload.encode(), hashlib.sha256).digest())


def verify_link(keyring: Keyring, token: str, *, now: float | None = None) -> LinkClaims | None:
    """The claims of a well-formed, correctly signed, unexpired token; else None.

    Checks only the token itself (no database): that it is still unused is for the store.
    """
    if not token or len(token) > _MAX_TOKEN or token.count(".") != 1:
        return None
    payload, signature = token.split(".")
    if not (payload.isascii() and signature.isascii()):
        return None  # hmac.compare_digest refuses non-ASCII text
    try:
        claims: Any = json.loads(_unb64(payload))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(claims, dict) or claims.get("v") != _VERSION:
        return None
    key_id = claims.get("k")
    subkey = keyring.subkey(key_id, _LINK_INFO) if isinstance(key_id, str) else None
    if subkey is None or not hmac.compare_digest(_sign(subkey, payload), signature):
        return None
    instance_id, nonce = claims.get("i"), claims.get("n")
    expires_at, reconnect = claims.get("e"), claims.get("r")
    if not (
        isinstance(instance_id, str)
        and isinstance(nonce, str)
        and isinstance(expires_at, int)
        and isinstance(reconnect, bool)
    ):
        return None
    if expires_at <= (time.time() if now is None else now):
        return None
    return LinkClaims(instance_id, nonce, expires_at, reconnect)


def browser_binding(keyring: Keyring, state: str, key_id: str | None = None) -> str:
    """The cookie value that ties ``state`` to the browser that started the flow.

    Signed with a subkey of ``key_id`` (the primary key when not given).
    """
    subkey = keyring.subkey(key_id or keyring.primary_id, _BROWSER_INFO)
    if subkey is None:
        raise KeyError(key_id)
    return _b64(hmac.new(subkey, state.encode("utf-8", "surrogatepass"), hashlib.sha256).digest())


def is_bound(keyring: Keyring, state: str, cookie: str) -> bool:
    """Whether ``cookie`` is the binding of ``state`` under any key of the keyring.

    Any key, not only the primary: a key added as primary while a flow is under way
    does not break it.
    """
    if not (state and cookie and cookie.isascii()):
        return False
    return any(
        hmac.compare_digest(browser_binding(keyring, state, key_id), cookie)
        for key_id in keyring.ids
    )


def link_base(redirect_uri: str) -> str:
    """The connect service's origin: the scheme and host of the redirect URI."""
    parts = urlsplit(redirect_uri)
    return f"{parts.scheme}://{parts.netloc}"


def authorization_code_config(definition: Definition, instance_id: str) -> OAuth2Config:
    """The definition's OAuth2 settings, or `OAuthError` when no person connects it."""
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


def mint_link(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    instance_id: str,
    redirect_uri: str,
    ttl: int = LINK_TTL_SECONDS,
    reconnect: bool = False,
) -> str:
    """Record and sign a single-use connect link for ``instance_id``, valid ``ttl`` seconds.

    Refused (`OAuthError`) for an instance that does not use the authorization-code grant,
    and for an ``active`` one unless ``reconnect``: opening the link replaces its tokens
    with those of whoever signs in.
    """
    if not 1 <= ttl <= MAX_LINK_TTL_SECONDS:
        raise OAuthError(
            f"A connect link lives 1 to {MAX_LINK_TTL_SECONDS} seconds, not {ttl}",
            reason="bad_ttl",
        )
    nonce = secrets.token_urlsafe(32)
    with db.transaction(f"make a connect link for instance '{instance_id}'") as session:
        inst = instances.require_instance(session, instance_id)
        authorization_code_config(registry.get(inst.integration_id), instance_id)
        if inst.state == "active" and not reconnect:
            raise OAuthError(
                f"Instance '{instance_id}' is active: connecting it again replaces its tokens "
                "with those of whoever opens the link; pass --reconnect (reconnect=True) "
                "to allow that",
                reason="reconnect_required",
            )
        create_link_session(
            session,
            keyring,
            instance_id=instance_id,
            nonce=nonce,
            redirect_uri=redirect_uri,
            ttl=ttl,
        )
    claims = {
        "v": _VERSION,
        "k": keyring.primary_id,
        "i": instance_id,
        "n": nonce,
        "e": int(time.time()) + ttl,
        "r": reconnect,
    }
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    subkey = keyring.subkey(keyring.primary_id, _LINK_INFO)
    assert subkey is not None  # the primary key is always in the keyring
    token = f"{payload}.{_sign(subkey, payload)}"
    return f"{link_base(redirect_uri)}/connect/{quote(instance_id, safe='')}?link={token}"


def connect_link(instance_id: str, *, ttl: int = LINK_TTL_SECONDS, reconnect: bool = False) -> str:
    """A connect link for ``instance_id`` from the configured store (see `mint_link`).

    Hand it to the person who should connect their account; it works once, for ``ttl``
    seconds, on the connect service at ``PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI``'s host.
    """
    rt = runtime()
    return mint_link(
        rt.db,
        rt.registry,
        rt.keyring,
        instance_id=instance_id,
        redirect_uri=rt.settings.oauth_redirect_uri,
        ttl=ttl,
        reconnect=reconnect,
    )
