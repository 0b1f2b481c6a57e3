"""Authorizing requests: an `httpx.Auth` that applies an instance's credentials.

`InstanceAuth` applies the credentials as the definition's compiled auth placement says
(`prefect_integrations.auth.apply_auth`). When the provider refuses them, it renews them
once through the caller's ``renew`` (an OAuth2 token is refreshed by force, unless
someone already did since; other credentials are reloaded) and sends the request again,
once. Renewing is blocking database work: the async flow runs it in a worker thread.
`refreshed` is the one refresh-before-use of a token that is due.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field

import httpx

from prefect_integrations.auth import apply_auth
from prefect_integrations.credentials import Credentials
from prefect_integrations.definitions import Definition
from prefect_integrations.oauth.refresh_policy import refresh_due, should_refresh
from prefect_integrations.pipeline._request import CALL_EXTENSION, Call
from prefect_integrations.store.instances import Instance

__all__ = ["Authorization", "InstanceAuth", "Renew", "refresh_after", "refreshed"]


def refresh_after(definition: Definition, credentials: Credentials) -> float:
    """When (epoch seconds) an OAuth2 token is to be refreshed before it is used.

    0 for a token still to obtain, infinity for a token that never needs it (no expiry)
    or cannot have it (no refresh token), and for other schemes. Before that time
    `should_refresh` says no, from then on yes: the one decision of refresh-before-use.
    """
    if definition.auth_type != "oauth2":
        return math.inf
    values = credentials.reveal()
    grant = definition.grant_type
    if should_refresh(values, now=0.0, grant_type=grant).refresh:
        return 0.0
    if not should_refresh(values, now=math.inf, grant_type=grant).refresh:
        return math.inf
    due = refresh_due(values)
    return math.inf if due is None else due


@dataclass(slots=True)
class Authorization:
    """An instance, its definition and its decrypted credentials, as loaded."""

    instance: Instance
    definition: Definition
    credentials: Credentials
    loaded_at: float = field(default_factory=time.monotonic)
    #: Wall-clock time from which the token is refreshed before use (`refresh_after`).
    refresh_after: float = field(init=False)

    def __post_init__(self) -> None:
        self.refresh_after = refresh_after(self.definition, self.credentials)

    @property
    def version(self) -> int:
        """The version of the stored credentials these were loaded from."""
        return self.instance.credentials_version

    def due(self) -> bool:
        """True when an OAuth2 token is to be refreshed before it is used now."""
        return self.refresh_after <= time.time()


#: ``renew(stale, force)``: credentials fresher than ``stale``, or None when there are
#: none. Not forced: refresh a due token. Forced: the provider refused ``stale``.
Renew = Callable[[Authorization, bool], Authorization | None]


def refreshed(current: Authorization, renew: Renew) -> Authorization:
    """The authorization to use now: ``current``, renewed first if its token is due.

    Blocking (a token refresh, a reload); call it in a worker thread from async code.
    """
    if not current.due():
        return current
    return renew(current, False) or current


def _refused(response: httpx.Response) -> bool:
    call: Call | None = response.request.extensions.get(CALL_EXTENSION)
    return call.refused(response) if call is not None else response.status_code == 401


class _Unsent:
    """What authorizing may change in a request (URL, headers, content), kept beforehand.

    Cheaper than copying the request, which is only rebuilt when it is sent again.
    """

    __slots__ = ("content", "headers", "url")

    def __init__(self, request: httpx.Request) -> None:
        self.url = request.url
        self.headers = request.headers.copy()
        self.content = request.content

    def again(self, request: httpx.Request) -> httpx.Request:
        """``request`` as it was before it was authorized."""
        return httpx.Request(
            request.method,
            self.url,
            headers=self.headers,
            content=self.content,
            extensions=dict(request.extensions),
        )


class InstanceAuth(httpx.Auth):
    """Authorize a call with an instance's credentials; renew them when they fail.

    ``current`` is the `Authorization` in use, the renewed one after a renewal (so the
    caller can redact and record with it). Without ``renew`` the credentials are only
    applied. ``refused`` tells a response refusing the credentials; by default the
    request's `Call` tells (`Call.refused`), or else a 401 does.
    """

    requires_response_body = True

    def __init__(
        self,
        current: Authorization,
        *,
        renew: Renew | None = None,
        refused: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        self.current = current
        self._renew = renew
        self._refused = refused or _refused

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Apply the current credentials and send.

        Renewing refused credentials is blocking I/O: `sync_auth_flow` and
        `async_auth_flow` do it.
        """
        apply_auth(self.current.definition, request, self.current.credentials)
        yield request

    def _adopt(self, fresh: Authorization | None) -> bool:
        if fresh is None:
            return False
        self.current = fresh
        return True

    def _prepare(self, request: httpx.Request) -> _Unsent | None:
        """Authorize ``request``; keep what it was before if it may be sent again."""
        unsent = _Unsent(request) if self._renew is not None else None
        apply_auth(self.current.definition, request, self.current.credentials)
        return unsent

    def _again(self, unsent: _Unsent, request: httpx.Request) -> httpx.Request:
        """``request`` as it was before authorizing, authorized with the renewed credentials."""
        again = unsent.again(request)
        apply_auth(self.current.definition, again, self.current.credentials)
        return again

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow, with ``renew`` called in this thread."""
        renew = self._renew
        unsent = self._prepare(request)
        response = yield request
        if unsent is None or renew is None:
            return
        if self.requires_response_body:
            response.read()
        if self._refused(response) and self._adopt(renew(self.current, True)):
            yield self._again(unsent, request)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow, with ``renew`` run in a worker thread."""
        renew = self._renew
        unsent = self._prepare(request)
        response = yield request
        if unsent is None or renew is None:
            return
        if self.requires_response_body:
            await response.aread()
        if self._refused(response) and self._adopt(
            await asyncio.to_thread(renew, self.current, True)
        ):
            yield self._again(unsent, request)
