"""Health checks: run each instance's ``healthCheck`` and keep its status true.

A sweep works in batches. Each batch is claimed with ``FOR UPDATE SKIP LOCKED`` and a
lease (owner = this run), so two runs at once split the instances and never check one
twice; an instance is due when it was not checked within ``min_interval``. Per batch:
one statement decrypts every claimed instance's credentials (audited), the checks run
concurrently over one pooled async HTTP client, and one transaction writes every status,
one audit row per instance, and releases the claims. A status is written only where the
state is still the one claimed (an instance set ``inactive`` during its check stays
``inactive``). One failing instance never stops the batch.

Outcomes and the status they lead to:

- ``ok``: ``active``;
- ``provider_auth_failed``, ``invalid_grant``, ``config_invalid``: ``error`` with that
  reason;
- ``provider_response_too_large`` (the body exceeds ``max_response_bytes``, never read
  whole): ``error`` with that reason;
- ``provider_unavailable`` (5xx, or a body declared JSON that does not parse),
  ``network``: ``error`` with that reason, unless most checked
  instances of the integration fail the same transient way in the batch: then it is a
  provider outage, reported once, and the instances keep their state;
- ``rate_limited``: the state is kept (the credentials work), the reason recorded.

A reason is the ``code`` of the exception the check raised where it has one
(`prefect_integrations.pipeline.failure_reason`): the vocabulary of the clients' errors.
The check sends through the clients' pipeline, without retries and without renewing
refused credentials (an expiring OAuth2 token is refreshed first).

Status changes emit ``integration.instance.degraded`` / ``integration.instance.recovered``
events, an outage ``integration.provider.outage``.

A fault of the worker itself (an integration it does not know, a key id its keyring
lacks, a database role without rights: `worker_checks`) changes no status: the sweep
stops with `WorkerMisconfigured`, releases its claims and records one audit row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import httpx

from prefect_integrations.credentials import Credentials
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.events import emit_event
from prefect_integrations.exceptions import (
    CredentialsError,
    IntegrationError,
    WorkerMisconfigured,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.maintenance.health_report import (
    HealthReport,
    HealthResult,
    replace_result,
    result_of,
    status_document,
)
from prefect_integrations.maintenance.worker_checks import check_worker, record_fault, worker_fault
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.pipeline import (
    MAX_RESPONSE_BYTES,
    AsyncPipeline,
    Authorization,
    Call,
    InstanceAuth,
    build_call,
    failure_reason,
    redact,
    refreshed,
)
from prefect_integrations.store import audit, leases, vault
from prefect_integrations.store.instances import Instance
from prefect_integrations.store.status import StatusWrite, write_statuses

__all__ = [
    "TRANSIENT",
    "HealthChecker",
    "HealthReport",
    "HealthResult",
    "classify",
]

#: Reasons that say the provider, not the instance, is in trouble.
TRANSIENT = frozenset({"provider_unavailable", "network"})
_KEEP_STATE = frozenset({"rate_limited"})


def classify(error: BaseException) -> str:
    """The typed reason of a failed check: `failure_reason`, the exceptions' own codes."""
    return failure_reason(error)


class HealthChecker:
    """Runs health sweeps over one store."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        keyring: Keyring,
        *,
        actor: str,
        batch_size: int = 200,
        concurrency: int = 50,
        timeout: float = 10.0,
        min_interval: float = 60.0,
        lease_seconds: float = 300.0,
        outage_share: float = 0.5,
        outage_min: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        lifecycle: TokenLifecycle | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._db = db
        self.max_response_bytes = max_response_bytes
        self._registry = registry
        self._keyring = keyring
        self._actor = actor
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._timeout = httpx.Timeout(timeout)
        self.min_interval = min_interval
        self.lease_seconds = lease_seconds
        self.outage_share = outage_share
        self.outage_min = outage_min
        self._transport = transport
        self._lifecycle = lifecycle or TokenLifecycle(db, registry, keyring, actor=actor)

    async def run(
        self,
        *,
        integrations: Sequence[str] | None = None,
        instance_ids: Sequence[str] | None = None,
        run_id: str | None = None,
        on_batch: Callable[[list[HealthResult]], None] | None = None,
    ) -> HealthReport:
        """Check every due instance (optionally only some integrations or ids).

        ``on_batch`` is called with the results of each batch once they are written.
        """
        report = HealthReport(run_id=run_id or uuid.uuid4().hex)
        started = time.perf_counter()
        await asyncio.to_thread(
            check_worker,
            self._db,
            self._registry,
            self._keyring,
            flow="health-check",
            actor=self._actor,
            integrations=integrations,
            instance_ids=instance_ids,
        )
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        run_started = await asyncio.to_thread(self._now)
        async with httpx.AsyncClient(
            timeout=self._timeout, limits=limits, transport=self._transport
        ) as http:
            while True:
                claimed = await asyncio.to_thread(
                    self._claim, report.run_id, run_started, integrations, instance_ids
                )
                if not claimed:
                    break
                report.batches += 1
                try:
                    results = await self._check_batch(http, claimed)
                except WorkerMisconfigured as fault:
                    await asyncio.to_thread(self._abandon, report.run_id, claimed, fault)
                    raise
                self._apply_outages(results, report)
                results = await asyncio.to_thread(self._write, report.run_id, claimed, results)
                report.results.extend(results)
                if on_batch is not None:
                    on_batch(results)
        report.seconds = time.perf_counter() - started
        return report

    # -- steps -----------------------------------------------------------------------

    def _now(self) -> datetime:
        with self._db.transaction("read the database clock") as session:
            return leases.database_now(session)

    def _claim(
        self,
        owner: str,
        run_started: datetime,
        integrations: Sequence[str] | None,
        instance_ids: Sequence[str] | None,
    ) -> list[Instance]:
        """Claim the next batch: due (not checked within the interval, nor by this run)."""
        with self._db.transaction("claim instances to check") as session:
            return leases.claim_maintenance_batch(
                session,
                owner=owner,
                lease_seconds=self.lease_seconds,
                batch_size=self.batch_size,
                run_started=run_started,
                min_interval=self.min_interval,
                integrations=integrations,
                instance_ids=instance_ids,
            )

    def _decrypt(self, ids: list[str]) -> dict[str, Credentials | CredentialsError]:
        with self._db.transaction("read credentials to check") as session:
            return vault.fetch_many(
                session, self._keyring, ids, actor=self._actor, purpose="health_check"
            )

    async def _check_batch(
        self, http: httpx.AsyncClient, claimed: list[Instance]
    ) -> list[HealthResult]:
        creds = await asyncio.to_thread(self._decrypt, [i.instance_id for i in claimed])
        gate = asyncio.Semaphore(self.concurrency)

        async def one(instance: Instance) -> HealthResult:
            async with gate:
                return await self._check(http, instance, creds.get(instance.instance_id))

        outcomes = await asyncio.gather(*(one(i) for i in claimed), return_exceptions=True)
        for outcome in outcomes:  # a fault of this worker first: it explains the others
            if isinstance(outcome, WorkerMisconfigured):
                raise outcome
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [o for o in outcomes if isinstance(o, HealthResult)]

    def _abandon(self, owner: str, claimed: list[Instance], fault: WorkerMisconfigured) -> None:
        """Release a batch a worker fault stopped, writing no status; audit the fault."""
        with self._db.transaction("release instances not checked") as session:
            leases.release_maintenance_batch(
                session, owner=owner, instance_ids=[i.instance_id for i in claimed]
            )
        record_fault(self._db, fault, flow="health-check", actor=self._actor)

    async def _check(
        self,
        http: httpx.AsyncClient,
        instance: Instance,
        creds: Credentials | CredentialsError | None,
    ) -> HealthResult:
        started = time.perf_counter()
        call: Call | None = None
        auth: InstanceAuth | None = None
        try:
            definition = self._registry.get(instance.integration_id)
            check = definition.health_check
            if check is None:
                return result_of(instance, "not_applicable", started, keep=True)
            if creds is None or isinstance(creds, CredentialsError):
                raise creds or CredentialsError(
                    f"Instance '{instance.instance_id}' has no credentials"
                )
            current = Authorization(instance=instance, definition=definition, credentials=creds)
            if current.due():
                current = await asyncio.to_thread(refreshed, current, self._renew)
            auth = InstanceAuth(current)
            call = build_call(
                definition, instance, check.method_id, check.input, timeout=self._timeout
            )
            pipeline = AsyncPipeline(http, max_response_bytes=self.max_response_bytes)
            await pipeline.call(call, auth)
        except (IntegrationError, httpx.HTTPError) as exc:
            fault = worker_fault(exc)
            if fault is not None:  # this worker's settings, not the instance, are wrong
                raise fault from None
            reason = classify(exc)
            # The provider may echo a credential the request never carried (a signing
            # secret, a refresh token): clean the message with all of them.
            if auth is not None:
                creds = auth.current.credentials
            return result_of(
                instance,
                reason,
                started,
                error=redact(str(exc), creds if isinstance(creds, Credentials) else None),
                status_code=call.status if call is not None else None,
                keep=reason in _KEEP_STATE,
            )
        return result_of(instance, "ok", started, status_code=call.status)

    def _renew(self, stale: Authorization, force: bool) -> Authorization | None:
        """The `Renew` of a check: refresh a due token and decrypt again (never forced)."""
        instance_id = stale.instance.instance_id
        self._lifecycle.refresh(instance_id)
        fresh = self._decrypt([instance_id]).get(instance_id)
        if not isinstance(fresh, Credentials):
            raise fresh or CredentialsError(f"Instance '{instance_id}' has no credentials")
        return Authorization(
            instance=stale.instance, definition=stale.definition, credentials=fresh
        )

    def _apply_outages(self, results: list[HealthResult], report: HealthReport) -> None:
        by_integration: dict[str, list[HealthResult]] = defaultdict(list)
        for result in results:
            if result.reason != "not_applicable":
                by_integration[result.integration_id].append(result)
        for integration_id, group in by_integration.items():
            reasons = Counter(r.reason for r in group if r.reason in TRANSIENT)
            if not reasons:
                continue
            reason, failing = reasons.most_common(1)[0]
            if failing < self.outage_min or failing < self.outage_share * len(group):
                continue
            report.outages[integration_id] = reason
            for index, result in enumerate(results):
                if result.integration_id == integration_id and result.reason == reason:
                    results[index] = replace_result(
                        result, state_after=result.state_before, outage=True
                    )
            emit_event(
                "integration.provider.outage",
                {"prefect.resource.id": f"prefect-integrations.integration.{integration_id}"},
                reason=reason,
                failing=failing,
                checked=len(group),
            )

    def _write(
        self, owner: str, claimed: list[Instance], results: list[HealthResult]
    ) -> list[HealthResult]:
        """Write the statuses, release the claims and audit, in one transaction.

        A status is written only where the state is still the one the check started
        from: a state changed meanwhile (an operator setting ``inactive``) stands, and
        the result reports it.
        """
        checked_at = datetime.now(UTC).isoformat()
        writes = [
            StatusWrite(
                instance_id=instance.instance_id,
                status=status_document(instance, result, checked_at),
                expected_state=instance.state,
                reason=result.reason,
            )
            for instance, result in zip(claimed, results, strict=True)
        ]
        with self._db.transaction("record health checks") as session:
            written = write_statuses(session, writes, lease_owner=owner)
            states = leases.release_maintenance_batch(
                session, owner=owner, instance_ids=[i.instance_id for i in claimed]
            )
            results = [
                r
                if r.instance_id in written or r.instance_id not in states
                else replace_result(r, state_after=states[r.instance_id])
                for r in results
            ]
            audit.record_many(
                session,
                (
                    audit.AuditRow(
                        action=audit.AuditAction.HEALTH_CHECK,
                        actor=self._actor,
                        instance_id=r.instance_id,
                        integration_id=r.integration_id,
                        outcome="success" if r.reason in ("ok", "not_applicable") else "failure",
                        details={
                            "result": r.reason,
                            "state": r.state_after,
                            "previous_state": r.state_before,
                            "outage": r.outage,
                            "status_code": r.status_code,
                            "run_id": owner,
                        },
                    )
                    for r in results
                ),
            )
        return results
