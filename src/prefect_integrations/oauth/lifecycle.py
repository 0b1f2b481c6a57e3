"""The OAuth2 token lifecycle: refreshing safely under concurrency.

When to refresh is decided by `prefect_integrations.oauth.refresh_policy`.
`TokenLifecycle.refresh` refreshes one instance so that any number of threads and
processes make exactly one token request:

1. read the instance and its credentials (short transaction);
2. claim a lease with a compare-and-swap on ``credentials_version`` (short transaction);
   a worker that loses waits until the version changes (the winner's token) or the lease
   runs out, then re-reads;
3. call the token endpoint outside any transaction, retrying connection failures, 5xx
   and 429, after the ``Retry-After`` the endpoint asks for when it gives one (a longer
   one than ``max_retry_after`` is not waited for; a refresh-token request that was sent
   but got no answer is not retried: it may have been processed, and reusing a rotated
   refresh token makes providers such as oidc-provider revoke the grant;
   client-credentials requests are always retried);
4. write the new credentials only if the version is unchanged (compare-and-swap), which
   also releases the lease. A rotated refresh token is always saved; a response without
   one keeps the old one. When the database is unavailable at this point the write is
   retried until the lease runs out: the provider may already have invalidated the old
   refresh token, so giving up early would lose the only valid one. If the database stays
   away longer, `DatabaseUnavailable` says so (the stored refresh token may then be dead,
   and the next refresh sets ``error`` with reason ``invalid_grant``).

``invalid_grant``: re-read first (another worker may have rotated the token); if the
stored token did not change, the instance goes to ``error`` with reason
``invalid_grant``. A token endpoint that keeps failing leaves the instance active until
``failure_threshold`` consecutive failed refreshes, then ``error`` with reason
``token_endpoint_unavailable``. Every outcome is audited; status changes emit a Prefect
event. Statuses are written through `store.status.write_status`, only while the state is
still the one read in step 1: an instance set ``inactive`` while its token request is in
flight stays ``inactive`` (a new token is stored all the same).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from prefect_integrations.credentials import Credentials
from prefect_integrations.db import Database
from prefect_integrations.definitions import Definition, Registry
from prefect_integrations.exceptions import (
    DatabaseUnavailable,
    InvalidGrant,
    OAuthError,
    TokenEndpointUnavailable,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.endpoint import TokenEndpoint, merge_token
from prefect_integrations.oauth.refresh_policy import grant_type_can_refresh, should_refresh
from prefect_integrations.store import audit, leases, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.instances import Instance, require_instance
from prefect_integrations.store.status import write_status

__all__ = ["RefreshOutcome", "TokenLifecycle"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What `TokenLifecycle.refresh` did."""

    instance_id: str
    #: ``cannot_refresh``: a refresh was asked for (forced, or the token expires) but
    #: there is nothing to refresh with (no refresh token); the account must be connected
    #: again.
    result: Literal["refreshed", "not_needed", "refreshed_elsewhere", "cannot_refresh"]
    reason: str
    credentials_version: int


class TokenLifecycle:
    """Refreshes tokens of instances in one store (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        keyring: Keyring,
        *,
        actor: str,
        lease_seconds: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.5,
        max_retry_after: float = 10.0,
        failure_threshold: int = 3,
        clock: Callable[[], float] = time.time,
        endpoint_factory: Callable[[Definition, Instance, Credentials], TokenEndpoint]
        | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._keyring = keyring
        self._actor = actor
        self.lease_seconds = lease_seconds
        self.attempts = attempts
        self.backoff = backoff
        # A longer Retry-After is not waited for (the refresh lease is 30 s by default).
        self.max_retry_after = max_retry_after
        self.failure_threshold = failure_threshold
        self._clock = clock
        self._endpoint_factory = endpoint_factory or (
            lambda d, i, c: TokenEndpoint.for_instance(d, i.config, c)
        )

    # -- reading -----------------------------------------------------------------------

    def _read(self, instance_id: str, purpose: str) -> tuple[Instance, Credentials]:
        with self._db.transaction(f"read instance '{instance_id}'") as session:
            instance = require_instance(session, instance_id)
            creds = vault.fetch_credentials(
                session, self._keyring, instance_id, actor=self._actor, purpose=purpose
            )
        return instance, creds

    def _lease_holder_done(self, instance_id: str, version: int) -> bool:
        """Wait while another worker holds the lease; True when it wrote a new version."""
        deadline = time.monotonic() + self.lease_seconds + 5
        delay = 0.02
        while time.monotonic() < deadline:
            with self._db.transaction(f"read instance '{instance_id}'") as session:
                lease = leases.read_refresh_lease(session, instance_id)
            if lease.credentials_version != version:
                return True
            if not lease.held:
                return False  # lease released or expired without a new version
            time.sleep(delay + random.uniform(0, delay))  # noqa: S311
            delay = min(delay * 2, 0.5)
        return False

    # -- refreshing --------------------------------------------------------------------

    def refresh(
        self,
        instance_id: str,
        *,
        force: bool = False,
        if_version: int | None = None,
    ) -> RefreshOutcome:
        """Refresh the instance's token if it needs it (or ``force``), exactly once.

        ``if_version``: refresh only if the credentials are still at that version (used
        after a 401: if they changed, someone already refreshed).
        """
        for _ in range(5):
            instance, creds = self._read(instance_id, "oauth.refresh")
            version = instance.credentials_version
            definition = self._registry.get(instance.integration_id)
            grant = definition.grant_type
            if if_version is not None and version != if_version:
                return RefreshOutcome(
                    instance_id, "refreshed_elsewhere", "version_changed", version
                )
            decision = should_refresh(creds.reveal(), now=self._clock(), grant_type=grant)
            if not decision.refresh and not grant_type_can_refresh(creds, grant):
                if force:
                    return RefreshOutcome(
                        instance_id, "cannot_refresh", "no_refresh_token", version
                    )
                if decision.reason == "expiring_without_refresh_token":
                    return RefreshOutcome(instance_id, "cannot_refresh", decision.reason, version)
            if not (decision.refresh or force):
                return RefreshOutcome(instance_id, "not_needed", decision.reason, version)
            if not self._claim(instance_id, version):
                if self._lease_holder_done(instance_id, version):
                    fresh, _ = self._read_version(instance_id)
                    return RefreshOutcome(instance_id, "refreshed_elsewhere", "lease_holder", fresh)
                continue  # the lease ran out: try to claim it ourselves
            return self._refresh_claimed(
                definition,
                instance,
                creds,
                grant,
                decision.reason if decision.refresh else "forced",
            )
        raise OAuthError(
            f"Could not refresh instance '{instance_id}': lease contention",
            reason="lease_contention",
        )

    def refresh_many(
        self, instance_ids: Iterable[str], *, workers: int = 8
    ) -> list[RefreshOutcome | OAuthError]:
        """Refresh several instances concurrently; one failure never stops the others.

        Returns one outcome (or the `OAuthError` it raised) per instance, in order.
        """

        def one(instance_id: str) -> RefreshOutcome | OAuthError:
            try:
                return self.refresh(instance_id)
            except OAuthError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="token-refresh") as pool:
            return list(pool.map(one, instance_ids))

    def _read_version(self, instance_id: str) -> tuple[int, str]:
        with self._db.transaction(f"read instance '{instance_id}'") as session:
            inst = require_instance(session, instance_id)
        return inst.credentials_version, inst.state

    def _claim(self, instance_id: str, version: int) -> bool:
        with self._db.transaction(f"claim the refresh lease of '{instance_id}'") as session:
            return leases.claim_refresh_lease(
                session, instance_id, version=version, seconds=self.lease_seconds
            )

    def _release(self, instance_id: str, version: int) -> None:
        with self._db.transaction(f"release the refresh lease of '{instance_id}'") as session:
            leases.release_refresh_lease(session, instance_id, version=version)

    def _call_endpoint(
        self,
        endpoint: TokenEndpoint,
        creds: Credentials,
        grant: str,
        scope: str | None,
        lease_ends: float,
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                if grant == "client_credentials":
                    return endpoint.client_credentials(scope)
                refresh_token = creds.secret("oauth2", "refresh_token")
                if refresh_token is None:
                    raise InvalidGrant(
                        f"Instance '{creds.instance_id}' has no refresh token",
                        reason="no_refresh_token",
                    )
                return endpoint.refresh(refresh_token.get_secret_value())
            except TokenEndpointUnavailable as exc:
                # A refresh request sent without an answer may have been processed: the
                # provider may have rotated the refresh token, and sending the old one
                # again would make it revoke the whole grant. Only retry it when it was
                # surely not processed (not sent, or answered 5xx/429).
                ambiguous = exc.reason == "token_endpoint_no_answer"
                if attempt >= self.attempts or (ambiguous and grant != "client_credentials"):
                    raise
                delay = exc.retry_after
                if delay is None:
                    delay = random.uniform(0, self.backoff * 2 ** (attempt - 1))  # noqa: S311
                elif delay > self.max_retry_after:
                    raise  # asked to come back later than is worth waiting for here
                if time.monotonic() + delay + endpoint.timeout >= lease_ends:
                    # Another worker may claim the instance once the lease ends; a request
                    # still in flight then could reuse a refresh token it has rotated.
                    raise
                time.sleep(delay)

    def _refresh_claimed(
        self,
        definition: Definition,
        instance: Instance,
        creds: Credentials,
        grant: str,
        reason: str,
    ) -> RefreshOutcome:
        instance_id, version = instance.instance_id, instance.credentials_version
        lease_ends = time.monotonic() + self.lease_seconds
        try:
            endpoint = self._endpoint_factory(definition, instance, creds)
            token = self._call_endpoint(endpoint, creds, grant, _scope(definition), lease_ends)
        except InvalidGrant as exc:
            self._release(instance_id, version)
            now_version, _ = self._read_version(instance_id)
            if now_version != version:  # rotated by someone else meanwhile
                return RefreshOutcome(
                    instance_id, "refreshed_elsewhere", "lease_expired", now_version
                )
            self._fail(instance, error=_status_error(exc), reason=exc.reason, to_error=True)
            raise
        except OAuthError as exc:
            self._release(instance_id, version)
            self._fail(
                instance,
                error=_status_error(exc),
                reason=exc.reason,
                to_error=not isinstance(exc, TokenEndpointUnavailable),
            )
            raise
        merged = merge_token(creds.reveal(), token, now=self._clock())
        delay = 0.05
        while True:
            try:
                return self._store(definition, instance, grant, reason, merged, token)
            except DatabaseUnavailable as exc:
                rotated = "refresh_token" in token
                if time.monotonic() + delay >= lease_ends:
                    lost = (
                        "; the provider rotated the refresh token, so the stored one may no "
                        "longer work (reconnect the instance if the next refresh fails with "
                        "invalid_grant)"
                        if rotated
                        else ""
                    )
                    raise DatabaseUnavailable(
                        f"The refreshed token of instance '{instance_id}' was not stored: "
                        f"{exc}{lost}"
                    ) from None
                _logger.warning(
                    "Could not store the refreshed token of instance '%s' (database "
                    "unavailable); retrying until its refresh lease ends",
                    instance_id,
                )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _store(
        self,
        definition: Definition,
        instance: Instance,
        grant: str,
        reason: str,
        merged: dict[str, Any],
        token: Mapping[str, Any],
    ) -> RefreshOutcome:
        """Write refreshed credentials (compare-and-swap on the version) and audit it."""
        instance_id, version = instance.instance_id, instance.credentials_version
        with self._db.transaction(f"store refreshed token of '{instance_id}'") as session:
            new_version = vault.store_credentials(
                session, self._keyring, instance_id, merged, expected_version=version
            )
            if new_version is None:
                # Our lease ran out and someone else wrote first; theirs stands.
                audit.record(
                    session,
                    action=AuditAction.OAUTH_REFRESH,
                    actor=self._actor,
                    outcome="failure",
                    instance_id=instance_id,
                    integration_id=definition.id,
                    details={"reason": "version_conflict", "grant": grant},
                )
                current, _ = self._read_version_in(session, instance_id)
                return RefreshOutcome(
                    instance_id, "refreshed_elsewhere", "version_conflict", current
                )
            # The new token is stored whatever happened meanwhile (the provider may have
            # rotated the refresh token); the status only if the state is still the one
            # read before the request (an operator may have set the instance inactive).
            write_status(
                session,
                instance_id,
                {
                    "state": "active",
                    "lastChecked": instance.status.get("lastChecked"),
                    "error": None,
                    "details": {},
                },
                expected_state=instance.state,
                reason="refreshed",
            )
            audit.record(
                session,
                action=AuditAction.OAUTH_REFRESH,
                actor=self._actor,
                instance_id=instance_id,
                integration_id=definition.id,
                details={
                    "reason": reason,
                    "grant": grant,
                    "credentials_version": new_version,
                    "refresh_token_rotated": "refresh_token" in token,
                },
            )
        return RefreshOutcome(instance_id, "refreshed", reason, new_version)

    @staticmethod
    def _read_version_in(session: Any, instance_id: str) -> tuple[int, str]:
        inst = require_instance(session, instance_id)
        return inst.credentials_version, inst.state

    def _fail(self, instance: Instance, *, error: str, reason: str, to_error: bool) -> None:
        """Audit a failed refresh; set ``error`` at once or after the failure threshold."""
        details = dict(instance.status.get("details") or {})
        failures = int(details.get("refresh_failures", 0)) + 1
        details.update({"refresh_failures": failures, "reason": reason})
        goes_to_error = to_error or failures >= self.failure_threshold
        status: dict[str, Any] = {
            "state": "error" if goes_to_error else instance.state,
            "lastChecked": instance.status.get("lastChecked"),
            "error": error[:4000] if goes_to_error else instance.status.get("error"),
            "details": details,
        }
        with self._db.transaction(f"record a failed refresh of '{instance.instance_id}'") as s:
            written = write_status(
                s,
                instance.instance_id,
                status,
                expected_state=instance.state,
                reason=reason,
            )
            audit.record(
                s,
                action=AuditAction.OAUTH_REFRESH,
                actor=self._actor,
                outcome="failure",
                instance_id=instance.instance_id,
                integration_id=instance.integration_id,
                details={
                    "reason": reason,
                    "refresh_failures": failures,
                    "state": status["state"],
                    # False: the state changed meanwhile (e.g. set inactive); that one stands.
                    "status_written": written,
                },
            )


def _status_error(exc: OAuthError) -> str:
    """What ``status.error`` keeps of a failed refresh: the codes, not the endpoint's text.

    The status is plaintext JSONB shown by ``instances show``; the endpoint's description
    can echo what the request carried, so only the stable codes are stored (the full,
    masked message is in the raised exception and the audit row's reason).
    """
    return f"Token refresh failed: {exc.code} ({exc.reason})"


def _scope(definition: Definition) -> str | None:
    oauth2 = definition.oauth2
    if oauth2 is None:
        return None
    return oauth2.scope_separator.join(oauth2.scopes) or None
