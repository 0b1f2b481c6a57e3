"""Retries, as a transport: bounded exponential backoff with full jitter, never a duplicate.

A request is sent again only when that cannot repeat a write:

- a connection failure (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``: nothing
  was sent) and 429 (the provider refused to process it) are retried for every method;
- 500, 502, 503, 504 and other transport errors (a read timeout, a dropped connection:
  the provider may have acted on it) only for an idempotent request: one whose method the
  definition declares ``idempotent``, or, when it declares nothing, a GET, HEAD, OPTIONS,
  PUT or DELETE; and any request carrying the provider's idempotency key
  (``idempotencyKeyHeader``).

``Retry-After`` is honoured, and one longer than ``max_retry_after`` ends the retries.
Every retry is logged (attempt, reason, wait), and so is a failure not retried because
the request may have been processed: to the Prefect run logger inside a flow or task run,
else to the ``prefect_integrations.retries`` logger. The log names the method and the
instance, never a URL, header or body.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from prefect_integrations._http import retry_after_seconds
from prefect_integrations.pipeline._request import (
    CALL_EXTENSION,
    IDEMPOTENT_VERBS,
    Call,
    idempotent_request,
)

__all__ = [
    "AsyncRetryTransport",
    "Retry",
    "RetryPolicy",
    "RetryTransport",
    "not_sent",
    "retry_logger",
]

#: Answers that say the request was not processed: retried for every method.
_UNPROCESSED_RETRY_STATUS: Final = frozenset({429})
#: Answers after which only an idempotent request is sent again.
_IDEMPOTENT_RETRY_STATUS: Final = frozenset({500, 502, 503, 504})

_module_logger = logging.getLogger("prefect_integrations.retries")


def not_sent(error: BaseException) -> bool:
    """True when ``error`` proves the request never reached the provider.

    A connection that could not be made (refused, unreachable, timed out) or a pooled
    connection never obtained. A read timeout or a dropped connection prove nothing: the
    provider may have received the request.
    """
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class Retry:
    """A decision to send again: after ``wait`` seconds, because of ``reason``."""

    wait: float
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: A ``Retry-After`` longer than this is not waited for: the error is raised.
    max_retry_after: float = 60.0

    def decide(
        self,
        attempt: int,
        *,
        idempotent: bool,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> Retry | None:
        """Whether to send attempt ``attempt + 1``, and after how long; None to stop.

        ``idempotent``: sending the request twice has the effect of sending it once (see
        the module's docstring for what is retried either way).
        """
        if attempt >= self.max_attempts:
            return None
        if error is not None:
            if not (not_sent(error) or (idempotent and isinstance(error, httpx.TransportError))):
                return None
            reason = type(error).__name__
        elif response is not None:
            status = response.status_code
            retryable = status in _UNPROCESSED_RETRY_STATUS or (
                idempotent and status in _IDEMPOTENT_RETRY_STATUS
            )
            if not retryable:
                return None
            reason = f"HTTP {status}"
        else:
            return None
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = retry_after_seconds(response) if response is not None else None
        if retry_after is None:
            return Retry(backoff, reason)
        if retry_after > self.max_retry_after:
            return None
        return Retry(retry_after, f"{reason}, Retry-After {retry_after:g} s")

    def delay(
        self,
        attempt: int,
        *,
        method: str,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` of an HTTP ``method``, or None.

        `decide` with the idempotency of the HTTP verb alone.
        """
        decided = self.decide(
            attempt, idempotent=method.upper() in IDEMPOTENT_VERBS, response=response, error=error
        )
        return None if decided is None else decided.wait


def retry_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The Prefect run logger inside a flow or task run, else this module's logger."""
    if "prefect.context" in sys.modules:  # Prefect is loaded: maybe inside a run
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is not None or FlowRunContext.get() is not None:
            from prefect.logging import get_run_logger

            return get_run_logger()
    return _module_logger


def _subject(request: httpx.Request) -> str:
    """What a log line names: the method and instance, or the verb and host (no path)."""
    call: Call | None = request.extensions.get(CALL_EXTENSION)
    if call is None:
        return f"{request.method} {request.url.host}"
    where = f"'{call.method.qualified_name}'"
    return f"{where} on instance '{call.instance_id}'" if call.instance_id else where


def _outcome(response: httpx.Response | None, error: Exception | None) -> str:
    return f"HTTP {response.status_code}" if response is not None else type(error).__name__


class _Attempts:
    """The retry loop's bookkeeping for one request: count, decide, log."""

    def __init__(self, policy: RetryPolicy, request: httpx.Request) -> None:
        self.policy = policy
        self.request = request
        self.idempotent = idempotent_request(request)
        self.attempt = 0

    def sending(self) -> None:
        """Count one more attempt, on the request's call too."""
        self.attempt += 1
        counter: _Counter | None = self.request.extensions.get(CALL_EXTENSION)
        if counter is not None:
            counter.sending(self.request)

    def again(
        self, response: httpx.Response | None = None, error: Exception | None = None
    ) -> float | None:
        """Seconds to wait before sending again after this failure, or None; logged."""
        decided = self.policy.decide(
            self.attempt, idempotent=self.idempotent, response=response, error=error
        )
        if decided is not None:
            retry_logger().warning(
                "%s: attempt %d of %d failed (%s); retrying in %.2f s",
                _subject(self.request),
                self.attempt,
                self.policy.max_attempts,
                decided.reason,
                decided.wait,
            )
            return decided.wait
        if not self.idempotent and self.attempt < self.policy.max_attempts:
            transient = (
                response.status_code in _IDEMPOTENT_RETRY_STATUS
                if response is not None
                else isinstance(error, httpx.TransportError)
            )
            if transient:
                retry_logger().warning(
                    "%s: attempt %d failed (%s); not retried: the provider may have processed "
                    "the request and the method is not idempotent",
                    _subject(self.request),
                    self.attempt,
                    _outcome(response, error),
                )
        return None


class _Counter(Protocol):
    def sending(self, request: httpx.Request) -> None: ...


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
        attempts = _Attempts(self.policy, request)
        while True:
            attempts.sending()
            try:
                response = self._transport.handle_request(request)
            except httpx.TransportError as error:
                wait = attempts.again(error=error)
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            if response.is_success:
                return response
            wait = attempts.again(response=response)
            if wait is None:
                return response
            response.close()
            time.sleep(wait)

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
        attempts = _Attempts(self.policy, request)
        while True:
            attempts.sending()
            try:
                response = await self._transport.handle_async_request(request)
            except httpx.TransportError as error:
                wait = attempts.again(error=error)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            if response.is_success:
                return response
            wait = attempts.again(response=response)
            if wait is None:
                return response
            await response.aclose()
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
