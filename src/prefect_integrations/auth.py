"""Apply stored credentials to an outgoing `httpx.Request`.

Values are read from the instance's credential section (the specification's shape):
``oauth2.access_token``, ``apikey.key``, and the ``custom`` section for custom schemes.

- ``apikey``: the key goes where the definition's ``auth.apikey`` places it: a header
  (with an optional prefix), a query parameter, or HTTP basic auth (key as user name).
  Without a placement: ``Authorization: Bearer <key>``.
- ``oauth2``: ``Authorization: Bearer <access_token>``.
- ``custom``: a named scheme from the ``prefect_integrations.auth_schemes`` entry-point
  group, chosen by the definition's ``auth.custom.scheme``. Two ship with the package:
  ``basic`` (HTTP basic from ``username``/``password``) and ``hmac_sha256`` (request
  signing with ``key_id``/``secret``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import httpx

from prefect_integrations.credentials import Credentials
from prefect_integrations.definitions import ApiKeyPlacement, CustomAuth, Definition
from prefect_integrations.exceptions import ConfigurationError, CredentialsError

__all__ = [
    "ENTRY_POINT_GROUP",
    "AuthScheme",
    "BasicScheme",
    "HmacSha256Scheme",
    "apply_auth",
    "load_scheme",
]

ENTRY_POINT_GROUP = "prefect_integrations.auth_schemes"


@runtime_checkable
class AuthScheme(Protocol):
    """A custom authentication scheme: signs or decorates one request."""

    def apply(
        self, request: httpx.Request, credentials: Credentials, options: Mapping[str, Any]
    ) -> None:
        """Add authentication to ``request`` in place."""


def _required(credentials: Credentials, section: str, name: str) -> str:
    value = credentials.secret(section, name)
    if value is None:
        raise CredentialsError(
            f"Instance '{credentials.instance_id}' has no '{section}.{name}' in its credentials"
        )
    return value.get_secret_value()


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class BasicScheme:
    """HTTP basic authentication from ``custom.username`` and ``custom.password``."""

    def apply(
        self, request: httpx.Request, credentials: Credentials, options: Mapping[str, Any]
    ) -> None:
        """Set ``Authorization: Basic ...``."""
        request.headers["Authorization"] = _basic(
            _required(credentials, "custom", "username"),
            _required(credentials, "custom", "password"),
        )


class HmacSha256Scheme:
    """Request signing: HMAC-SHA256 over method, path and query, timestamp and body hash.

    String to sign (lines joined with newlines): the HTTP method, the path with its raw
    query, the Unix timestamp, and the hex SHA-256 of the body. Headers set:
    ``X-Timestamp`` and ``Authorization: HMAC-SHA256 keyId=<key_id>, signature=<base64>``,
    with ``key_id`` and ``secret`` from the ``custom`` section.
    Options: ``header`` (default ``Authorization``), ``timestampHeader`` (default
    ``X-Timestamp``).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    @staticmethod
    def string_to_sign(request: httpx.Request, timestamp: str) -> bytes:
        """The exact bytes that are signed."""
        target = request.url.raw_path.decode("ascii")
        body_hash = hashlib.sha256(request.content).hexdigest()
        return "\n".join([request.method.upper(), target, timestamp, body_hash]).encode()

    def apply(
        self, request: httpx.Request, credentials: Credentials, options: Mapping[str, Any]
    ) -> None:
        """Sign ``request``."""
        key_id = _required(credentials, "custom", "key_id")
        secret = _required(credentials, "custom", "secret").encode()
        timestamp = str(int(self._clock()))
        digest = hmac.new(secret, self.string_to_sign(request, timestamp), hashlib.sha256)
        signature = base64.b64encode(digest.digest()).decode("ascii")
        request.headers[str(options.get("timestampHeader", "X-Timestamp"))] = timestamp
        request.headers[str(options.get("header", "Authorization"))] = (
            f"HMAC-SHA256 keyId={key_id}, signature={signature}"
        )


@cache
def load_scheme(name: str) -> AuthScheme:
    """Load the custom scheme registered under ``name`` in the entry-point group."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            factory = entry.load()
            scheme = factory() if isinstance(factory, type) else factory
            if not isinstance(scheme, AuthScheme):
                raise ConfigurationError(
                    f"Auth scheme '{name}' ({entry.value}) has no apply(request, credentials, "
                    "options) method"
                )
            return scheme
    known = sorted(e.name for e in entry_points(group=ENTRY_POINT_GROUP))
    raise ConfigurationError(
        f"No auth scheme '{name}' is registered in entry-point group '{ENTRY_POINT_GROUP}' "
        f"(known: {', '.join(known) or 'none'})"
    )


def apply_auth(definition: Definition, request: httpx.Request, credentials: Credentials) -> None:
    """Add the instance's credentials to ``request`` as the definition says.

    The placement is the one compiled with the definition (`Definition.auth`).
    """
    if definition.auth_type == "oauth2":
        token = _required(credentials, "oauth2", "access_token")
        request.headers["Authorization"] = f"Bearer {token}"
    elif definition.auth_type == "apikey":
        key = _required(credentials, "apikey", "key")
        placement = definition.auth
        if not isinstance(placement, ApiKeyPlacement):
            placement = ApiKeyPlacement()  # a definition built without its document's auth
        if placement.location == "query":
            request.url = request.url.copy_add_param(str(placement.name), key)
        elif placement.location == "basic":
            request.headers["Authorization"] = _basic(key, "")
        else:
            request.headers[str(placement.name)] = f"{placement.prefix}{key}"
    else:
        custom = definition.auth
        if not isinstance(custom, CustomAuth):
            raise ConfigurationError(
                f"Definition '{definition.id}' uses authType custom without auth.custom.scheme"
            )
        load_scheme(custom.scheme).apply(request, credentials, custom.options)
