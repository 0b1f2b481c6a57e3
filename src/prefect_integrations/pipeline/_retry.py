"""Retries, as a transport: bounded exponential backoff with full jitter.

A retry never resends what may have been acted upon unless the method is idempotent:
connection failures (nothing was sent), 429 and 503 (refused before processing) are
retried for every method; other transport errors (read timeouts, a broken body) and
500, 502 and 504 (a gateway may have passed the request on) only for idempotent ones.
``Retry-After`` is honoured, and one longer than ``max_retry_after`` ends the retries.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Final, Protocol

import httpx

from prefect_integrations._http import retry_after_seconds
from prefect_integrations.pipeline._request import CALL_EXTENSION

__all__ = ["AsyncRetryTransport", "RetryPolicy", "RetryTransport"]

_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Answers that say the request was not processed: retried for every method.
_ALWAYS_RETRY_STATUS: Final = frozenset({429, 503})
#: Answers after which an idempotent request is sent again.
_IDEMPOTENT_RETRY_STATUS: Final = frozenset({500, 502, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: A ``Retry-After`` longer than this is not waited for: the error is raised.
    max_retry_after: float = 60.0

    def delay(
        self,
        attempt: int,
        *,
        method: str,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to stop retrying."""
        if attempt >= self.max_attempts:
            return None
        idempotent = method.upper() in _IDEMPOTENT
        if error is not None:
            not_sent = isinstance(
                error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
            )
            if not (not_sent or (idempotent and isinstance(error, httpx.TransportError))):
                return None
        elif response is not None:
            status = response.status_code
            retryable = status in _ALWAYS_RETRY_STATUS or (
                idempotent and status in _IDEMPOTENT_RETRY_STATUS
            )
            if not retryable:
                return None
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = retry_after_seconds(response) if response is not None else None
        if retry_after is None:
            return backoff
        if retry_after > self.max_retry_after:
            return None
        return retry_after


class _Counter(Protocol):
    def sending(self, request: httpx.Request) -> None: ...


def _count(request: httpx.Request) -> None:
    """Tell the request's call (if any) that it is being sent once more."""
    counter: _Counter | None = request.extensions.get(CALL_EXTENSION)
    if counter is not None:
        counter.sending(request)


class RetryTransport(httpx.BaseTransport):
    """Send through ``transport``, retrying what ``policy`` says may be retried.

    The last response (or transport error) is returned (raised) when the policy stops;
    each attempt is counted on the request's `Call`. Responses to retry are closed before
    waiting.
    """

    def __init__(self, transport: httpx.BaseTransport, policy: RetryPolicy | None = None) -> None:
        self._transport = transport
        self.policy = policy or RetryPolicy()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, again after a retryable failure."""
        attempt = 0
        while True:
            attempt += 1
            _count(request)
            try:
                response = self._transport.handle_request(request)
            except httpx.TransportError as error:
                delay = self.policy.delay(attempt, method=request.method, error=error)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = self.policy.delay(attempt, method=request.method, response=response)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """`RetryTransport` for an async transport (waits with `asyncio.sleep`)."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, policy: RetryPolicy | None = None
    ) -> None:
        self._transport = transport
        self.policy = policy or RetryPolicy()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, again after a retryable failure."""
        attempt = 0
        while True:
            attempt += 1
            _count(request)
            try:
                response = await self._transport.handle_async_request(request)
            except httpx.TransportError as error:
                delay = self.policy.delay(attempt, method=request.method, error=error)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            if response.is_success:
                return response
            delay = self.policy.delay(attempt, method=request.method, response=response)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
