"""Call one method of one instance: the path every generated task and block call takes.

``call(method_id, inputs)``:

1. load the instance and decrypt its credentials (audited), cached for ``credentials_ttl``
   seconds so a burst of calls decrypts once; a method that is not callable is refused
   (`MethodNotBound`) before any credential is decrypted;
2. validate the inputs against the method's ``inputSchema`` (nothing is sent otherwise)
   and send the call through the pipeline (`prefect_integrations.pipeline`): the auth
   scheme applied (an expiring OAuth2 token refreshed first; refused credentials renewed
   and the request sent again, once), connection failures and 429 (and 5xx and read
   timeouts for idempotent methods) retried with bounded exponential backoff and full
   jitter, honouring ``Retry-After``, each retry logged; a response body larger than
   ``max_response_bytes`` (default 10 MiB) is never read whole: `ResponseTooLarge`;
3. turn other non-2xx answers into a typed `ProviderError`, validate the output against
   ``outputSchema``, and record one audit row (outcome, status, duration, attempts,
   Prefect flow-run and task-run ids) and ``last_used_at``. An error after which the
   call must not be sent again (`Call.retry_safe`) says so: ``retry_safe`` is False.

No message this module raises contains a credential: provider messages are redacted
against the instance's secrets before they are raised.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx

from prefect_integrations import logfilter
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import IntegrationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.pipeline import (
    MAX_RESPONSE_BYTES,
    AsyncPipeline,
    Authorization,
    Call,
    InstanceAuth,
    Pipeline,
    RetryPolicy,
    as_inputs,
    build_call,
    redact,
    redacted,
    refreshed,
)
from prefect_integrations.store.instances import require_instance
from prefect_integrations.store.usage import CallRecord, UsageRecorder
from prefect_integrations.store.vault import fetch_credentials

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AsyncIntegrationClient",
    "IntegrationClient",
    "RetryPolicy",
]


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
        logfilter.install()  # decrypted values never reach the HTTP libraries' logs
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
        self._loaded: Authorization | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(instance_id={self.instance_id!r})"

    # -- loading ---------------------------------------------------------------------

    def _read(self, method_id: str | None = None) -> Authorization:
        """Load the instance and decrypt its credentials.

        With ``method_id``, a method that is not callable is refused (`MethodNotBound`)
        before any credential is decrypted.
        """
        with self._db.transaction(f"load instance '{self.instance_id}'") as session:
            instance = require_instance(session, self.instance_id)
            if self._require_active and instance.state != "active":
                raise instance.unavailable()
            definition = self._registry.get(instance.integration_id)
            if method_id is not None:
                definition.method(method_id).require_bound()
            credentials = fetch_credentials(
                session, self._keyring, self.instance_id, actor=self._actor, purpose="call"
            )
        return Authorization(instance=instance, definition=definition, credentials=credentials)

    def _load_now(self, method_id: str | None = None) -> Authorization:
        """`_read`, then refresh an OAuth2 token that is due (`refreshed`)."""
        return refreshed(self._read(method_id), self._renew)

    def _renew(self, stale: Authorization, force: bool) -> Authorization | None:
        """Credentials fresher than ``stale``, or None (the `Renew` of `InstanceAuth`).

        Not forced (the token is due): refresh it and reload. Forced (the provider refused
        ``stale``): OAuth2 refreshes the token unless someone already did since ``stale``;
        other schemes reload, in case the credentials were replaced meanwhile.
        """
        self.invalidate()
        if stale.definition.auth_type == "oauth2":
            if force:
                self._lifecycle.refresh(self.instance_id, force=True, if_version=stale.version)
            else:
                self._lifecycle.refresh(self.instance_id)
        fresh = self._loaded = self._read()
        return fresh if fresh.version != stale.version else None

    def _cached(self) -> Authorization | None:
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

    def _record(
        self, loaded: Authorization, method_id: str, call: Call | None, error: Exception | None
    ) -> None:
        details: dict[str, Any] = {}
        if call is not None and call.attempts:
            details["status_code"] = call.status
            details["attempts"] = call.attempts
            details["duration_ms"] = round((time.perf_counter() - call.started) * 1000, 3)
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
        self, loaded: Authorization, method_id: str, call: Call | None, exc: Exception
    ) -> IntegrationError:
        """Record a failed call; return the error to raise, redacted of every secret."""
        if not isinstance(exc, IntegrationError):
            text = redact(str(exc), loaded.credentials)[:500]
            exc = IntegrationError(
                f"'{loaded.definition.id}.{method_id}' on instance '{self.instance_id}' "
                f"failed: {type(exc).__name__}: {text}"
            )
        exc.retry_safe = call is None or call.retry_safe
        self._record(loaded, method_id, call, exc)
        return redacted(exc, loaded.credentials)

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
        self._pipeline = Pipeline(
            self._http, retry=self.retry, max_response_bytes=self.max_response_bytes
        )

    def _load(self, method_id: str | None = None) -> Authorization:
        loaded = self._cached()
        if loaded is None:
            loaded = self._loaded = self._load_now(method_id)
        return loaded

    def call(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call ``method_id`` with ``inputs``; return the validated output."""
        loaded = self._load(method_id)
        inputs = as_inputs(inputs)
        auth = InstanceAuth(loaded, renew=self._renew)
        call: Call | None = None
        try:
            call = build_call(
                loaded.definition, loaded.instance, method_id, inputs, timeout=self._timeout
            )
            output = self._pipeline.call(call, auth)
        except Exception as exc:
            raise self._failed(auth.current, method_id, call, exc) from None
        self._record(auth.current, method_id, call, None)
        return output

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
        self._pipeline = AsyncPipeline(
            self._http, retry=self.retry, max_response_bytes=self.max_response_bytes
        )

    async def _load(self, method_id: str | None = None) -> Authorization:
        loaded = self._cached()
        if loaded is None:
            loaded = self._loaded = await asyncio.to_thread(self._load_now, method_id)
        return loaded

    async def call(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call ``method_id`` with ``inputs``; return the validated output."""
        loaded = await self._load(method_id)
        inputs = as_inputs(inputs)
        auth = InstanceAuth(loaded, renew=self._renew)
        call: Call | None = None
        try:
            call = build_call(
                loaded.definition, loaded.instance, method_id, inputs, timeout=self._timeout
            )
            output = await self._pipeline.call(call, auth)
        except Exception as exc:
            raise self._failed(auth.current, method_id, call, exc) from None
        self._record(auth.current, method_id, call, None)
        return output

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
