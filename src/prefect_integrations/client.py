"""Call one method of one instance: the path every generated task and block call takes.

``call(method_id, inputs)``:

1. validate the inputs against the method's ``inputSchema`` (nothing is sent otherwise);
2. load the instance and decrypt its credentials (audited), cached for ``credentials_ttl``
   seconds so a burst of calls decrypts once;
3. build the request from the method's HTTP binding (or handler) and apply the auth scheme;
4. send it with httpx over a pooled connection, retrying connection failures, 429 and
   502/503/504 (and read timeouts and 500 for idempotent methods) with bounded
   exponential backoff and full jitter, honouring ``Retry-After``; a response body larger
   than ``max_response_bytes`` (default 10 MiB) is never read whole: `ResponseTooLarge`;
5. turn other non-2xx answers into a typed `ProviderError`, validate the output against
   ``outputSchema``, and record one audit row (outcome, status, duration, attempts,
   Prefect flow-run and task-run ids) and ``last_used_at``.

No message this module raises contains a credential: provider messages are redacted
against the instance's secrets before they are raised.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from prefect_integrations import binding
from prefect_integrations._http import retry_after_seconds
from prefect_integrations.auth import apply_auth
from prefect_integrations.credentials import Credentials, mask_secrets, secret_strings
from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, Method, Registry, RequestContext
from prefect_integrations.exceptions import (
    InstanceUnavailable,
    IntegrationError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ResponseTooLarge,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.lifecycle import TokenLifecycle, refresh_due, should_refresh
from prefect_integrations.store.instances import Instance, require_instance
from prefect_integrations.store.usage import CallRecord, UsageRecorder
from prefect_integrations.store.vault import fetch_credentials

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AsyncIntegrationClient",
    "IntegrationClient",
    "RetryPolicy",
    "aread_limited",
    "build_call",
    "read_limited",
    "read_response",
    "redact",
]

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_ALWAYS_RETRY_STATUS = frozenset({429, 502, 503, 504})

#: The largest response body a client or health check reads (decoded bytes).
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
_UNBUFFERED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    declared = response.headers.get("content-length", "").strip()
    return declared.isdigit() and int(declared) > limit


def _buffered(response: httpx.Response, content: bytes) -> httpx.Response:
    """A read response holding ``content`` (already decoded) in place of a streamed one."""
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _UNBUFFERED_HEADERS
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=content,
        request=response.request,
        extensions=response.extensions,
    )


def read_limited(response: httpx.Response, limit: int) -> httpx.Response | None:
    """Read a streamed response's body, at most ``limit`` bytes; None when it is larger.

    The streamed response is closed either way; a larger body is never read whole (a
    declared ``Content-Length`` over the limit is refused before reading anything).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        if _declared_too_large(response, limit):
            return None
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    finally:
        response.close()
    return _buffered(response, b"".join(chunks))


async def aread_limited(response: httpx.Response, limit: int) -> httpx.Response | None:
    """`read_limited` for a response of an async client."""
    chunks: list[bytes] = []
    size = 0
    try:
        if _declared_too_large(response, limit):
            return None
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    finally:
        await response.aclose()
    return _buffered(response, b"".join(chunks))


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
            if status not in _ALWAYS_RETRY_STATUS and not (status == 500 and idempotent):
                return None
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))  # noqa: S311
        retry_after = retry_after_seconds(response) if response is not None else None
        if retry_after is None:
            return backoff
        if retry_after > self.max_retry_after:
            return None
        return retry_after


def redact(text: str, credentials: Credentials | None) -> str:
    """Replace every secret value of ``credentials`` found in ``text`` with a mask."""
    if credentials is None or not text:
        return text
    return mask_secrets(text, secret_strings(credentials.reveal(), min_length=4))


def _redacted(exc: IntegrationError, credentials: Credentials | None) -> IntegrationError:
    """Redact ``exc`` in place: its message and, for a `ProviderError`, every provider field.

    Exceptions are pickled with their attributes (Prefect result storage), so the
    provider's code and message are cleaned too, not only the text of the message.
    """
    clean = redact(exc.message, credentials)
    if clean != exc.message:
        exc.message = clean
        exc.args = (clean,)
    if isinstance(exc, ProviderError):
        if exc.provider_message:
            exc.provider_message = redact(exc.provider_message, credentials)
        if exc.provider_code:
            exc.provider_code = redact(exc.provider_code, credentials)
    return exc


def _as_inputs(inputs: object) -> Any:
    """A copy of a mapping of inputs (``{}`` for None); anything else as is, for validation.

    Validation then refuses what is not a JSON object with a `ValidationError` naming the
    method, instead of ``dict()`` failing on it.
    """
    if inputs is None:
        return {}
    return dict(inputs) if isinstance(inputs, Mapping) else inputs


def build_call(
    definition: Definition,
    instance: Instance,
    credentials: Credentials,
    method_id: str,
    inputs: Mapping[str, Any],
    *,
    timeout: httpx.Timeout,
) -> tuple[Method, httpx.Request, RequestContext]:
    """Validate the inputs and build the authenticated request of one method call."""
    method = definition.method(method_id)
    method.require_bound()
    method.validate_input(_as_inputs(inputs))
    request, context = binding.prepare(
        definition, method, inputs, instance.config, instance_id=instance.instance_id
    )
    request.extensions["timeout"] = timeout.as_dict()
    apply_auth(definition, request, credentials)
    return method, request, context


def read_response(
    definition: Definition,
    method: Method,
    response: httpx.Response,
    context: RequestContext,
) -> Any:
    """The validated output of a response, or the typed `ProviderError` it amounts to."""
    if not response.is_success:
        raise binding.provider_error(definition, method, response, instance_id=context.instance_id)
    output = binding.parse(definition, method, response, context)
    method.validate_output(output)
    return output


def _refresh_after(definition: Definition, credentials: Credentials) -> float:
    """When the loaded token stops being usable without a refresh (epoch seconds)."""
    values = credentials.reveal()
    if should_refresh(values, now=0.0, grant_type=definition.grant_type).refresh:
        return 0.0  # no access token yet
    due = refresh_due(values)
    return float("inf") if due is None else due


def _changed(before: _Loaded, after: _Loaded) -> bool:
    """True when the stored credentials changed (someone refreshed or replaced them)."""
    return after.instance.credentials_version != before.instance.credentials_version


def _run_ids() -> dict[str, str]:
    """Prefect flow-run and task-run ids when called inside a run (Prefect loaded)."""
    if "prefect.context" not in sys.modules:
        return {}
    from prefect.context import FlowRunContext, TaskRunContext

    ids: dict[str, str] = {}
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        ids["flow_run_id"] = str(flow_ctx.flow_run.id)
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        ids["task_run_id"] = str(task_ctx.task_run.id)
        ids.setdefault("flow_run_id", str(task_ctx.task_run.flow_run_id))
    return ids


@dataclass(slots=True)
class _Loaded:
    instance: Instance
    definition: Definition
    credentials: Credentials
    loaded_at: float = field(default_factory=time.monotonic)
    #: Wall-clock time after which an OAuth2 token should be refreshed before use.
    refresh_after: float = float("inf")


@dataclass(slots=True)
class _Attempt:
    method: Method
    request: httpx.Request
    context: RequestContext
    started: float
    attempts: int = 0
    status: int | None = None


class _ClientCore:
    """State and steps shared by the sync and async clients."""

    def __init__(
        self,
        instance_id: str,
        *,
        db: Database,
        registry: Registry,
        keyring: Keyring,
        actor: str,
        recorder: UsageRecorder | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = 30.0,
        credentials_ttl: float = 300.0,
        require_active: bool = True,
        lifecycle: TokenLifecycle | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        self.instance_id = instance_id
        self.max_response_bytes = max_response_bytes
        self._db = db
        self._registry = registry
        self._keyring = keyring
        self._actor = actor
        self._recorder = recorder or UsageRecorder(db)
        self._owns_recorder = recorder is None
        self.retry = retry or RetryPolicy()
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._ttl = credentials_ttl
        self._require_active = require_active
        self._lifecycle = lifecycle or TokenLifecycle(db, registry, keyring, actor=actor)
        self._loaded: _Loaded | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(instance_id={self.instance_id!r})"

    # -- loading ---------------------------------------------------------------------

    def _load_now(self, method_id: str | None = None) -> _Loaded:
        """Load the instance and credentials, refreshing an expiring OAuth2 token first.

        With ``method_id``, a method that is not callable is refused (`MethodNotBound`)
        before any credential is decrypted or token refreshed.
        """
        loaded = self._read(method_id)
        if loaded.definition.auth_type == "oauth2" and loaded.refresh_after <= time.time():
            self._lifecycle.refresh(self.instance_id)
            loaded = self._read()
        return loaded

    def _reauthorize(self, loaded: _Loaded) -> _Loaded | None:
        """After a 401/403: new credentials to retry with once, or None.

        OAuth2: refresh the token unless someone already did since ``loaded``. Other
        schemes: reload, in case the credentials were replaced meanwhile.
        """
        self.invalidate()
        if loaded.definition.auth_type == "oauth2":
            self._lifecycle.refresh(
                self.instance_id, force=True, if_version=loaded.instance.credentials_version
            )
        fresh = self._read()
        self._loaded = fresh
        return fresh if _changed(loaded, fresh) else None

    def _read(self, method_id: str | None = None) -> _Loaded:
        with self._db.transaction(f"load instance '{self.instance_id}'") as session:
            instance = require_instance(session, self.instance_id)
            if self._require_active and instance.state != "active":
                reason = instance.status.get("error")
                raise InstanceUnavailable(
                    f"Instance '{self.instance_id}' is {instance.state}"
                    + (f": {reason}" if reason else "")
                )
            definition = self._registry.get(instance.integration_id)
            if method_id is not None:
                definition.method(method_id).require_bound()
            credentials = fetch_credentials(
                session, self._keyring, self.instance_id, actor=self._actor, purpose="call"
            )
        loaded = _Loaded(instance=instance, definition=definition, credentials=credentials)
        if definition.auth_type == "oauth2":
            loaded.refresh_after = _refresh_after(definition, credentials)
        return loaded

    def _cached(self) -> _Loaded | None:
        loaded = self._loaded
        if (
            loaded is not None
            and time.monotonic() - loaded.loaded_at < self._ttl
            and time.time() < loaded.refresh_after
        ):
            return loaded
        return None

    def invalidate(self) -> None:
        """Forget the cached instance and credentials; the next call reloads them."""
        self._loaded = None

    # -- steps -----------------------------------------------------------------------

    def _start(self, loaded: _Loaded, method_id: str, inputs: Mapping[str, Any]) -> _Attempt:
        method, request, context = build_call(
            loaded.definition,
            loaded.instance,
            loaded.credentials,
            method_id,
            inputs,
            timeout=self._timeout,
        )
        return _Attempt(
            method=method, request=request, context=context, started=time.perf_counter()
        )

    def _finish(self, loaded: _Loaded, attempt: _Attempt, response: httpx.Response) -> Any:
        attempt.status = response.status_code
        return read_response(loaded.definition, attempt.method, response, attempt.context)

    def _too_large(self, loaded: _Loaded, attempt: _Attempt, status: int) -> ResponseTooLarge:
        attempt.status = status
        return ResponseTooLarge(
            integration_id=loaded.definition.id,
            method_id=attempt.method.id,
            status=status,
            limit=self.max_response_bytes,
            instance_id=self.instance_id,
        )

    def _unavailable(self, loaded: _Loaded, attempt: _Attempt, error: Exception) -> ProviderError:
        return ProviderUnavailable(
            integration_id=loaded.definition.id,
            method_id=attempt.method.id,
            status=None,
            provider_code=type(error).__name__,
            provider_message=str(error) or None,
            instance_id=self.instance_id,
        )

    def _record(
        self, loaded: _Loaded, method_id: str, attempt: _Attempt | None, error: Exception | None
    ) -> None:
        details: dict[str, Any] = {}
        if attempt is not None:
            details["status_code"] = attempt.status
            details["attempts"] = attempt.attempts
            details["duration_ms"] = round((time.perf_counter() - attempt.started) * 1000, 3)
        if error is not None:
            details["error_code"] = getattr(error, "code", type(error).__name__)
        details.update(_run_ids())
        self._recorder.record(
            CallRecord(
                instance_id=self.instance_id,
                integration_id=loaded.definition.id,
                method_id=method_id,
                actor=self._actor,
                outcome="success" if error is None else "failure",
                details=details,
            )
        )

    def _failed(
        self, loaded: _Loaded, method_id: str, attempt: _Attempt | None, exc: Exception
    ) -> IntegrationError:
        """Record a failed call; return the error to raise, redacted of every secret."""
        if not isinstance(exc, IntegrationError):
            text = redact(str(exc), loaded.credentials)[:500]
            exc = IntegrationError(
                f"'{loaded.definition.id}.{method_id}' on instance '{self.instance_id}' "
                f"failed: {type(exc).__name__}: {text}"
            )
        self._record(loaded, method_id, attempt, exc)
        return _redacted(exc, loaded.credentials)

    def flush(self) -> None:
        """Write queued audit rows now."""
        self._recorder.flush()


class IntegrationClient(_ClientCore):
    """Synchronous client for one instance (pooled connections, retries, audit)."""

    def __init__(
        self, instance_id: str, *, http: httpx.Client | None = None, **kwargs: Any
    ) -> None:
        super().__init__(instance_id, **kwargs)
        self._http = http or httpx.Client(timeout=self._timeout)
        self._owns_http = http is None

    def _load(self, method_id: str | None = None) -> _Loaded:
        loaded = self._cached()
        if loaded is None:
            loaded = self._loaded = self._load_now(method_id)
        return loaded

    def call(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call ``method_id`` with ``inputs``; return the validated output."""
        loaded = self._load(method_id)
        inputs = _as_inputs(inputs)
        attempt: _Attempt | None = None
        try:
            attempt = self._start(loaded, method_id, inputs)
            try:
                output = self._send(loaded, attempt)
            except ProviderAuthError:
                fresh = self._reauthorize(loaded)
                if fresh is None:
                    raise
                loaded, attempt = fresh, self._start(fresh, method_id, inputs)
                output = self._send(loaded, attempt)
        except Exception as exc:
            raise self._failed(loaded, method_id, attempt, exc) from None
        self._record(loaded, method_id, attempt, None)
        return output

    def _send(self, loaded: _Loaded, attempt: _Attempt) -> Any:
        while True:
            attempt.attempts += 1
            try:
                streamed = self._http.send(attempt.request, stream=True)
                response = read_limited(streamed, self.max_response_bytes)
            except httpx.TransportError as error:
                delay = self.retry.delay(
                    attempt.attempts, method=attempt.request.method, error=error
                )
                if delay is None:
                    raise self._unavailable(loaded, attempt, error) from None
                time.sleep(delay)
                continue
            if response is None:
                raise self._too_large(loaded, attempt, streamed.status_code)
            delay = None
            if not response.is_success:
                delay = self.retry.delay(
                    attempt.attempts, method=attempt.request.method, response=response
                )
            if delay is None:
                return self._finish(loaded, attempt, response)
            time.sleep(delay)

    def close(self) -> None:
        """Close pooled connections and flush the audit queue."""
        if self._owns_http:
            self._http.close()
        if self._owns_recorder:
            self._recorder.close()
        else:
            self._recorder.flush()

    def __enter__(self) -> IntegrationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncIntegrationClient(_ClientCore):
    """Asynchronous client for one instance; database work runs in a worker thread."""

    def __init__(
        self, instance_id: str, *, http: httpx.AsyncClient | None = None, **kwargs: Any
    ) -> None:
        super().__init__(instance_id, **kwargs)
        self._http = http or httpx.AsyncClient(timeout=self._timeout)
        self._owns_http = http is None

    async def _load(self, method_id: str | None = None) -> _Loaded:
        loaded = self._cached()
        if loaded is None:
            loaded = self._loaded = await asyncio.to_thread(self._load_now, method_id)
        return loaded

    async def call(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call ``method_id`` with ``inputs``; return the validated output."""
        loaded = await self._load(method_id)
        inputs = _as_inputs(inputs)
        attempt: _Attempt | None = None
        try:
            attempt = self._start(loaded, method_id, inputs)
            try:
                output = await self._send(loaded, attempt)
            except ProviderAuthError:
                fresh = await asyncio.to_thread(self._reauthorize, loaded)
                if fresh is None:
                    raise
                loaded, attempt = fresh, self._start(fresh, method_id, inputs)
                output = await self._send(loaded, attempt)
        except Exception as exc:
            raise self._failed(loaded, method_id, attempt, exc) from None
        self._record(loaded, method_id, attempt, None)
        return output

    async def _send(self, loaded: _Loaded, attempt: _Attempt) -> Any:
        while True:
            attempt.attempts += 1
            try:
                streamed = await self._http.send(attempt.request, stream=True)
                response = await aread_limited(streamed, self.max_response_bytes)
            except httpx.TransportError as error:
                delay = self.retry.delay(
                    attempt.attempts, method=attempt.request.method, error=error
                )
                if delay is None:
                    raise self._unavailable(loaded, attempt, error) from None
                await asyncio.sleep(delay)
                continue
            if response is None:
                raise self._too_large(loaded, attempt, streamed.status_code)
            delay = None
            if not response.is_success:
                delay = self.retry.delay(
                    attempt.attempts, method=attempt.request.method, response=response
                )
            if delay is None:
                return self._finish(loaded, attempt, response)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Close pooled connections and flush the audit queue."""
        if self._owns_http:
            await self._http.aclose()
        if self._owns_recorder:
            await asyncio.to_thread(self._recorder.close)
        else:
            await asyncio.to_thread(self._recorder.flush)

    async def __aenter__(self) -> AsyncIntegrationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
