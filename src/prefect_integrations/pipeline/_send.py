"""The call pipeline: an authorized request through retries and the size limit.

    Call.request ─▶ InstanceAuth ─▶ RetryTransport ─▶ SizeLimitTransport ─▶ ClientTransport
                    (credentials,    (backoff,         (reads the body,       (the httpx client:
                     renew once)      Retry-After)      at most N bytes)       pool, timeouts)

The innermost layer sends through an `httpx.Client` (or `AsyncClient`), the caller's or
a default one, so its pool, timeouts, hooks and transport all apply. The auth flow is
driven over the chain of transports the way `httpx.Client` drives it
(``_send_handling_auth``). `Pipeline.call` then reads the response into the method's
validated output, and turns what went wrong into the typed `ProviderError` it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from prefect_integrations.pipeline._errors import too_large, unavailable
from prefect_integrations.pipeline._limit import (
    MAX_RESPONSE_BYTES,
    AsyncSizeLimitTransport,
    BodyTooLarge,
    SizeLimitTransport,
)
from prefect_integrations.pipeline._request import Call
from prefect_integrations.pipeline._retry import (
    AsyncRetryTransport,
    RetryPolicy,
    RetryTransport,
    not_sent,
)

__all__ = ["AsyncClientTransport", "AsyncPipeline", "ClientTransport", "Pipeline"]


class ClientTransport(httpx.BaseTransport):
    """Send each request with an `httpx.Client`, the response streamed (not yet read).

    Redirects are never followed, whatever the client is configured to do: httpx drops
    only ``Authorization`` on a redirect to another host, so a key in another header
    would follow it.
    """

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the client."""
        return self._client.send(request, stream=True, follow_redirects=False)


class AsyncClientTransport(httpx.AsyncBaseTransport):
    """`ClientTransport` for an `httpx.AsyncClient`."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the client."""
        return await self._client.send(request, stream=True, follow_redirects=False)


@contextmanager
def _typed(call: Call) -> Iterator[None]:
    """Turn a failure without a usable response into the call's `ProviderError`."""
    integration_id, method_id = call.definition.id, call.method.id
    try:
        yield
    except BodyTooLarge as exc:
        call.status = exc.status
        raise too_large(
            exc.status,
            exc.limit,
            integration_id=integration_id,
            method_id=method_id,
            instance_id=call.instance_id,
        ) from None
    except httpx.TransportError as exc:
        call.unsent = not_sent(exc)
        raise unavailable(
            exc, integration_id=integration_id, method_id=method_id, instance_id=call.instance_id
        ) from None


class Pipeline:
    """Sends calls through ``http``: retries (unless ``retry`` is None), size limit, auth."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        transport: httpx.BaseTransport = SizeLimitTransport(
            ClientTransport(http), max_response_bytes
        )
        if retry is not None:
            transport = RetryTransport(transport, retry)
        self.transport = transport

    def send(self, request: httpx.Request, auth: httpx.Auth) -> httpx.Response:
        """Send ``request`` as ``auth`` says; the response is read."""
        flow = auth.sync_auth_flow(request)
        try:
            request = next(flow)
            while True:
                response = self.transport.handle_request(request)
                try:
                    try:
                        next_request = flow.send(response)
                    except StopIteration:
                        return response
                    response.read()
                    request = next_request
                except BaseException:
                    response.close()
                    raise
        finally:
            flow.close()

    def call(self, call: Call, auth: httpx.Auth) -> Any:
        """Send ``call`` and return its validated output; raise its typed error."""
        with _typed(call):
            response = self.send(call.request, auth)
        return call.read(response)


class AsyncPipeline:
    """`Pipeline` over an `httpx.AsyncClient`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        transport: httpx.AsyncBaseTransport = AsyncSizeLimitTransport(
            AsyncClientTransport(http), max_response_bytes
        )
        if retry is not None:
            transport = AsyncRetryTransport(transport, retry)
        self.transport = transport

    async def send(self, request: httpx.Request, auth: httpx.Auth) -> httpx.Response:
        """Send ``request`` as ``auth`` says; the response is read."""
        flow = auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self.transport.handle_async_request(request)
                try:
                    try:
                        next_request = await flow.asend(response)
                    except StopAsyncIteration:
                        return response
                    await response.aread()
                    request = next_request
                except BaseException:
                    await response.aclose()
                    raise
        finally:
            await flow.aclose()

    async def call(self, call: Call, auth: httpx.Auth) -> Any:
        """Send ``call`` and return its validated output; raise its typed error."""
        with _typed(call):
            response = await self.send(call.request, auth)
        return call.read(response)
