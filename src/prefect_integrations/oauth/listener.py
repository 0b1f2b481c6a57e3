"""Where the connect service listens, and with which redirect URI.

`listen` binds the socket before the service starts, so a port in use is an error at
start rather than a log line while everything else keeps running.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI

from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.oauth.service import create_app
from prefect_integrations.runtime import Runtime

__all__ = ["ConnectListener", "bind_address", "listen", "runtime_app"]


def runtime_app(rt: Runtime, redirect_uri: str | None = None) -> FastAPI:
    """The connect service of the runtime's store, called back at ``redirect_uri``.

    The configured redirect URI when not given.
    """
    return create_app(
        db=rt.db,
        registry=rt.registry,
        keyring=rt.keyring,
        actor=rt.actor,
        redirect_uri=redirect_uri or rt.settings.oauth_redirect_uri,
    )


def bind_address(
    redirect_uri: str, *, host: str | None = None, port: int | None = None
) -> tuple[str, int]:
    """Where to listen: the given host and port, else those of the redirect URI."""
    redirect = urlsplit(redirect_uri)
    return host or redirect.hostname or "127.0.0.1", port or redirect.port or 8765


@dataclass(frozen=True, slots=True)
class ConnectListener:
    """The connect service's socket, bound, and the URIs it answers at."""

    socket: socket.socket
    url: str
    redirect_uri: str


def listen(rt: Runtime, *, host: str | None = None, port: int | None = None) -> ConnectListener:
    """Bind the connect service's socket now, so that a port in use is an error at start.

    The redirect URI follows ``host``/``port`` unless
    ``PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI`` is set explicitly.
    `ConfigurationError` names the address and what to change when it cannot be bound.
    """
    configured = rt.settings.oauth_redirect_uri
    bind_host, bind_port = bind_address(configured, host=host, port=port)
    redirect_uri = configured
    if "oauth_redirect_uri" not in rt.settings.model_fields_set and (host or port):
        parts = urlsplit(configured)
        shown = f"[{bind_host}]" if ":" in bind_host else bind_host
        redirect_uri = f"{parts.scheme}://{shown}:{bind_port}{parts.path or '/callback'}"
    try:
        bound = socket.create_server((bind_host, bind_port))
    except OSError as exc:
        raise ConfigurationError(
            f"The connect service cannot listen on {bind_host}:{bind_port}: "
            f"{exc.strerror or exc}; choose another port (--oauth-port, or --port of "
            "`oauth serve`) or stop what is using it"
        ) from None
    return ConnectListener(bound, f"http://{bind_host}:{bind_port}", redirect_uri)
