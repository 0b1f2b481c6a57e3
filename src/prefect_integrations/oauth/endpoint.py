"""Talking to an OAuth2 token endpoint with Authlib.

`TokenEndpoint` wraps Authlib's httpx ``OAuth2Client`` for one instance: the code
exchange (with the PKCE verifier), the refresh grant and the client-credentials grant.
Authlib accepts some error bodies as tokens, so every token response passes through a
compliance hook that refuses anything but a 2xx JSON object with an ``access_token`` and
turns provider errors into typed exceptions. A request that could not be sent is
`TokenEndpointUnavailable` with reason ``token_endpoint_unavailable``; one sent without a
whole answer (read timeout, connection dropped) has reason ``token_endpoint_no_answer``:
the endpoint may have processed it. A token response body that decodes to more than
``max_response_bytes`` (default 1 MiB) is not read further: `OAuthError` with reason
``token_response_too_large``; one in a coding other than gzip or deflate (or stacked
codings) is not read at all: reason ``token_response_undecodable``. Nothing raised here
contains a token, a code, a verifier or a client secret.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning

# Authlib announces its future httpx2 integration when its httpx client is imported (its
# deprecate module installs an "always" filter first, so ours must come after it).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

from prefect_integrations._decoding import (
    ACCEPT_ENCODING,
    DecodedTooLarge,
    LimitedDecoder,
    UnsupportedEncoding,
)
from prefect_integrations._http import retry_after_seconds
from prefect_integrations.credentials import Credentials, oauth2_section, to_iso, to_spec_shape
from prefect_integrations.definitions import Definition
from prefect_integrations.exceptions import (
    CredentialsError,
    InvalidGrant,
    OAuthError,
    TokenEndpointUnavailable,
)
from prefect_integrations.masking import basic_pairs, mask_secrets

__all__ = ["MAX_TOKEN_RESPONSE_BYTES", "TokenEndpoint", "merge_token", "oauth2_setting"]

#: The largest token response body read (decoded bytes); token responses are a few KiB.
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024


class _TooLarge(Exception):
    """A token response body went over the limit (turned into `OAuthError`)."""


class _LimitedStream(httpx.SyncByteStream):
    """A response body stream, decoded, that stops once it decodes to over ``limit`` bytes."""

    def __init__(self, inner: httpx.SyncByteStream, decoder: LimitedDecoder) -> None:
        self._inner = inner
        self._decoder = decoder

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                yield self._decoder.decode(chunk)
            yield self._decoder.flush()
        except DecodedTooLarge:
            raise _TooLarge from None

    def close(self) -> None:
        self._inner.close()


#: Token request parameters whose values are secret.
_GRANT_SECRETS = ("refresh_token", "code", "code_verifier")


#: Longest error text kept of what a token endpoint said (message, reason).
_MAX_MESSAGE = 500
_MAX_REASON = 100


def _scrub_error(exc: OAuthError, secrets: list[str]) -> None:
    """Mask ``secrets`` a token endpoint echoed into ``exc``, then shorten it.

    Masking comes first: a secret cut in two by shortening would no longer match.
    """
    exc.message = _shorten(mask_secrets(exc.message, secrets), _MAX_MESSAGE)
    exc.reason = _shorten(mask_secrets(exc.reason, secrets), _MAX_REASON)
    exc.args = (exc.message,)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def oauth2_setting(definition: Definition, config: Mapping[str, Any], name: str) -> str:
    """An OAuth2 URL, from the instance config override or the definition."""
    override = {"authorizationUrl": "authorization_url", "tokenUrl": "token_url"}.get(name)
    if override and isinstance(config.get(override), str):
        return str(config[override])
    value = definition.oauth2.url(name) if definition.oauth2 is not None else None
    if value is None:
        raise OAuthError(
            f"Definition '{definition.id}' has no oauth2Config.{name}", reason="not_oauth2"
        )
    return value


def _seconds(value: object) -> float | None:
    """``expires_in`` as seconds: a non-negative finite number, or its text; else None.

    ``3600``, ``3600.0`` and ``"3600.0"`` all mean an hour; booleans, negative numbers,
    NaN and values past year 9999 mean no expiry at all.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or len(text) > 16:
            return None
        try:
            value = float(text)
        except ValueError:
            return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or seconds > 1e11:
        return None
    return seconds


def merge_token(
    credentials: Mapping[str, Any], token: Mapping[str, Any], *, now: float | None = None
) -> dict[str, Any]:
    """New spec-shaped credentials from a token response.

    ``credentials`` are the current plain values (``{"oauth2": {...}}``; a flat document
    of earlier versions is converted first). The OAuth client and other fields are kept,
    a missing refresh token keeps the old one, and ``expires_at``/``obtained_at`` are
    written as ISO 8601 UTC.
    """
    now = time.time() if now is None else now
    current = oauth2_section(to_spec_shape(credentials))
    merged = {
        k: v
        for k, v in current.items()
        if k not in ("access_token", "expires_at", "obtained_at", "id_token")
    }
    merged["access_token"] = str(token["access_token"])
    merged["token_type"] = str(token.get("token_type") or "Bearer")
    merged["obtained_at"] = to_iso(now)
    lifetime = _seconds(token.get("expires_in"))
    if lifetime is not None:
        # an expiry beyond what a time can say: the token is treated as without one
        with contextlib.suppress(ValueError, OverflowError):
            merged["expires_at"] = to_iso(now + lifetime)
    elif isinstance(token.get("expires_at"), int | float | str):
        # an expiry that is not a time: the token is treated as without one
        with contextlib.suppress(ValueError):
            merged["expires_at"] = to_iso(token["expires_at"])
    if isinstance(token.get("refresh_token"), str) and token["refresh_token"]:
        merged["refresh_token"] = token["refresh_token"]
    if isinstance(token.get("scope"), str):
        merged["scope"] = token["scope"]
    if isinstance(token.get("id_token"), str):
        merged["id_token"] = token["id_token"]
    return {"oauth2": merged}


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error = body.get("error")
    description = body.get("error_description")
    return (
        str(error) if error else None,
        description if isinstance(description, str) else None,  # shortened once masked
    )


@dataclass(frozen=True, slots=True)
class TokenEndpoint:
    """The token endpoint of one instance: URL, client and client authentication."""

    instance_id: str
    token_url: str
    client_id: str
    client_secret: str | None
    auth_method: str = "client_secret_basic"
    timeout: float = 15.0
    max_response_bytes: int = MAX_TOKEN_RESPONSE_BYTES

    @classmethod
    def for_instance(
        cls, definition: Definition, config: Mapping[str, Any], credentials: Credentials
    ) -> TokenEndpoint:
        """The endpoint of an instance whose credentials hold its OAuth client."""
        client_id = credentials.secret("oauth2", "client_id")
        if client_id is None:
            raise CredentialsError(
                f"Instance '{credentials.instance_id}' has no OAuth client in its credentials "
                '(set {"oauth2": {"client_id": ..., "client_secret": ...}})'
            )
        secret = credentials.secret("oauth2", "client_secret")
        return cls(
            instance_id=credentials.instance_id,
            token_url=oauth2_setting(definition, config, "tokenUrl"),
            client_id=client_id.get_secret_value(),
            client_secret=secret.get_secret_value() if secret is not None else None,
            auth_method=(
                definition.oauth2.token_endpoint_auth_method
                if definition.oauth2 is not None
                else "client_secret_basic"
            ),
        )

    def _check(self, response: httpx.Response) -> httpx.Response:
        """Authlib compliance hook: refuse anything that is not a usable token response."""
        status = response.status_code
        error, description = _error_fields(response)
        where = f"Token endpoint of instance '{self.instance_id}'"
        detail = f" ({description})" if description else ""
        if status == 429 or status >= 500:
            raise TokenEndpointUnavailable(
                f"{where} answered HTTP {status}",
                reason="token_endpoint_unavailable",
                retry_after=retry_after_seconds(response),
            )
        if error == "invalid_grant":
            raise InvalidGrant(
                f"{where} refused the grant: invalid_grant{detail}", reason="invalid_grant"
            )
        if not 200 <= status < 300 or error:
            raise OAuthError(
                f"{where} answered HTTP {status}: {error or 'no error code'}{detail}",
                reason=error or f"http_{status}",
            )
        try:
            body = response.json()
        except ValueError:
            raise OAuthError(
                f"{where} answered a body that is not JSON", reason="malformed_token_response"
            ) from None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("access_token"), str)
            or not body["access_token"]
        ):
            raise OAuthError(
                f"{where} answered without an access_token", reason="malformed_token_response"
            )
        return response

    def _limit_body(self, response: httpx.Response) -> None:
        """Response hook: refuse a body over the limit before and while it is decoded.

        The body is decoded here, at most ``max_response_bytes`` of it, and the response
        loses its ``Content-Encoding`` and ``Content-Length`` so httpx does not decode it
        again.
        """
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise _TooLarge
        decoder = LimitedDecoder(response.headers, self.max_response_bytes)
        if not isinstance(response.stream, httpx.SyncByteStream):
            raise TypeError("the token endpoint reads synchronous responses only")
        response.stream = _LimitedStream(response.stream, decoder)
        for name in ("content-encoding", "content-length"):
            if name in response.headers:
                del response.headers[name]

    def _client(
        self, *, redirect_uri: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> OAuth2Client:
        kwargs: dict[str, Any] = {
            "timeout": self.timeout,
            "headers": {"Accept-Encoding": ACCEPT_ENCODING},
            "event_hooks": {"response": [self._limit_body]},
        }
        if transport is not None:
            kwargs["transport"] = transport
        client = OAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method=self.auth_method,
            redirect_uri=redirect_uri,
            **kwargs,
        )
        client.register_compliance_hook("access_token_response", self._check)
        client.register_compliance_hook("refresh_token_response", self._check)
        return client

    def _secrets(self, params: Mapping[str, Any]) -> list[str]:
        """The secret values one token request carries: client secret, token, code."""
        values = [self.client_secret, *(params.get(name) for name in _GRANT_SECRETS)]
        client = {"oauth2": {"client_id": self.client_id, "client_secret": self.client_secret}}
        return [v for v in values if isinstance(v, str) and len(v) >= 4] + basic_pairs(client)

    def _request(self, *, redirect_uri: str | None = None, **params: Any) -> dict[str, Any]:
        try:
            with self._client(redirect_uri=redirect_uri) as client:
                token = client.fetch_token(self.token_url, **params)
        except OAuthError as exc:
            _scrub_error(exc, self._secrets(params))
            raise
        except _TooLarge:
            raise OAuthError(
                f"Token endpoint of instance '{self.instance_id}' answered a body larger than "
                f"{self.max_response_bytes} bytes",
                reason="token_response_too_large",
            ) from None
        except UnsupportedEncoding as exc:
            raise OAuthError(
                f"Token endpoint of instance '{self.instance_id}' answered a body that cannot "
                f"be read: {exc}",
                reason="token_response_undecodable",
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TokenEndpointUnavailable(
                f"Token endpoint of instance '{self.instance_id}' unreachable: "
                f"{type(exc).__name__}",
                reason="token_endpoint_unavailable",
            ) from None
        except httpx.TransportError as exc:
            # Sent, but no (whole) answer: the endpoint may have processed the request.
            raise TokenEndpointUnavailable(
                f"Token endpoint of instance '{self.instance_id}' did not answer: "
                f"{type(exc).__name__} (the request may have been processed)",
                reason="token_endpoint_no_answer",
            ) from None
        except Exception as exc:  # Authlib's own errors: keep the class, drop the text
            raise OAuthError(
                f"Token request of instance '{self.instance_id}' failed: {type(exc).__name__}",
                reason="token_request_failed",
            ) from None
        return dict(token)

    def exchange_code(
        self, *, code: str, code_verifier: str | None, redirect_uri: str
    ) -> dict[str, Any]:
        """Exchange an authorization code (with its PKCE verifier) for tokens."""
        params: dict[str, Any] = {"grant_type": "authorization_code", "code": code}
        if code_verifier:
            params["code_verifier"] = code_verifier
        return self._request(redirect_uri=redirect_uri, **params)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """Use a refresh token."""
        return self._request(grant_type="refresh_token", refresh_token=refresh_token)

    def client_credentials(self, scope: str | None = None) -> dict[str, Any]:
        """The client-credentials grant (machine to machine)."""
        params: dict[str, Any] = {"grant_type": "client_credentials"}
        if scope:
            params["scope"] = scope
        return self._request(**params)
