"""Provider credential rotation, for definitions that declare ``credentialRotation``.

For each active apikey instance of such a definition: mint a new key with the ``create``
method (its output's ``api_key``, and ``key_id`` when given), store it (encrypted,
audited) as the credentials' ``apikey.key`` (the id as ``apikey.key_id``, which the next
rotation revokes), verify it with the definition's ``healthCheck``, and only then revoke
the previous key with the ``revoke`` method. A new key that does not
verify is discarded and the previous credentials are put back. Instances whose
integration declares no rotation are reported as ``not_applicable``, not as failures.
One failing instance never stops the others; every outcome is audited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect_integrations.client_factory import ClientFactory
from prefect_integrations.db import Database
from prefect_integrations.definitions import CredentialRotation, Registry
from prefect_integrations.exceptions import IntegrationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.audit import AuditAction

__all__ = ["ProviderCredentialRotation", "ProviderRotation"]


@dataclass(frozen=True, slots=True)
class ProviderRotation:
    """The rotation outcome of one instance."""

    result: str  # rotated | not_applicable | failed | revoke_failed
    detail: str = ""


class ProviderCredentialRotation:
    """Rotates provider credentials (see the module docstring) with the given dependencies."""

    def __init__(
        self, db: Database, registry: Registry, keyring: Keyring, *, clients: ClientFactory
    ) -> None:
        self._db = db
        self._registry = registry
        self._keyring = keyring
        self._clients = clients
        self._actor = clients.actor

    def run(self, *, instance_ids: Sequence[str] | None = None) -> dict[str, ProviderRotation]:
        """Rotate the provider credentials of every active instance that can rotate."""
        with self._db.transaction("list instances to rotate") as session:
            found = instances.list_instances(session, state="active")
        results: dict[str, ProviderRotation] = {}
        for inst in found:
            if instance_ids is not None and inst.instance_id not in instance_ids:
                continue
            spec = self._registry.get(inst.integration_id).credential_rotation
            if spec is None:
                results[inst.instance_id] = ProviderRotation(
                    "not_applicable", "the integration declares no rotation"
                )
                continue
            try:
                results[inst.instance_id] = self._rotate_one(inst.instance_id, spec)
            except IntegrationError as exc:
                results[inst.instance_id] = ProviderRotation("failed", str(exc)[:300])
            outcome = results[inst.instance_id]
            with self._db.transaction("audit a credential rotation") as session:
                audit.record(
                    session,
                    action=AuditAction.CREDENTIALS_ROTATE,
                    actor=self._actor,
                    outcome="success" if outcome.result == "rotated" else "failure",
                    instance_id=inst.instance_id,
                    integration_id=inst.integration_id,
                    details={"result": outcome.result, "detail": outcome.detail[:300]},
                )
        self._clients.recorder.flush()
        return results

    def _call(self, instance_id: str, method_id: str, inputs: Mapping[str, Any]) -> Any:
        """One call through a fresh client (credentials read now), closed afterwards."""
        with self._clients.sync(instance_id, credentials_ttl=0) as client:
            return client.call(method_id, inputs)

    def _set(self, instance_id: str, values: Mapping[str, Any], operation: str) -> None:
        with self._db.transaction(f"{operation} of '{instance_id}'") as session:
            instances.set_credentials(
                session, self._registry, self._keyring, instance_id, values, actor=self._actor
            )

    def _rotate_one(self, instance_id: str, spec: CredentialRotation) -> ProviderRotation:
        with self._db.transaction(f"read credentials of '{instance_id}'") as session:
            inst = instances.require_instance(session, instance_id)
            old = vault.fetch_credentials(
                session, self._keyring, instance_id, actor=self._actor, purpose="credentials.rotate"
            ).reveal()
        minted = self._call(instance_id, spec.create, {})
        new_key = minted.get("api_key") if isinstance(minted, dict) else None
        if not isinstance(new_key, str) or not new_key:
            return ProviderRotation("failed", f"method '{spec.create}' returned no api_key")
        # The method's output names the new key ``api_key`` (and its id ``key_id``); it is
        # stored in the credentials' ``apikey`` section as ``key`` (the id beside it).
        section = dict(old.get("apikey") or {})
        section["key"] = new_key
        if isinstance(minted.get("key_id"), str):
            section["key_id"] = minted["key_id"]
        self._set(instance_id, {"apikey": section}, "store the new key")
        check = self._registry.get(inst.integration_id).health_check
        assert check is not None
        try:
            self._call(instance_id, check.method_id, check.input)
        except IntegrationError as exc:
            self._set(instance_id, old, "restore the key")
            return ProviderRotation(
                "failed", f"the new key did not verify ({exc.code}); the previous key was kept"
            )
        revoke = spec.revoke
        old_section = old.get("apikey")
        old_key_id = old_section.get("key_id") if isinstance(old_section, dict) else None
        if isinstance(revoke, str) and isinstance(old_key_id, str):
            try:
                self._call(instance_id, revoke, {"key_id": old_key_id})
            except IntegrationError as exc:
                return ProviderRotation(
                    "revoke_failed", f"new key active; revoking '{old_key_id}' failed: {exc.code}"
                )
            return ProviderRotation("rotated", f"revoked '{old_key_id}'")
        return ProviderRotation("rotated", "no previous key id to revoke")
