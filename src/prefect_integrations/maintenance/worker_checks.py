"""Checks that a maintenance worker can do its job before it judges any instance.

A health check, token refresh or rotation run by a worker with the wrong settings would
otherwise blame the instances: an integration the worker does not know, a key it does
not hold or a role without rights would all look like broken instances. `check_worker`
looks first, in one read-only transaction:

- the database role may read definitions and instances, update instances and append to
  the audit log (``PREFECT_INTEGRATIONS_DATABASE_URL``);
- every integration that has instances is loaded, with the content stored in the
  database (``PREFECT_INTEGRATIONS_DEFINITIONS_PATH``, or ``definitions sync``);
- the keyring holds every key id in use, and each decrypts one of 3 rows stored under
  its id (``PREFECT_INTEGRATIONS_KEYS``): a key that decrypts one is the right one, so a
  row that later fails to decrypt is damaged, the instance's own problem.

The first failing check raises `WorkerMisconfigured` naming the setting, after recording
one ``maintenance.fault`` audit row (when the role may append one); nothing else is
written. A worker that passes registers, on first use, the key ids of its keyring whose
rows decrypt and that the key registry does not name yet (`store.key_registry`).
`worker_fault` tells the same faults apart when they appear during a run (an instance
created meanwhile under a key this worker lacks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    IntegrationError,
    PermissionDenied,
    UnknownIntegration,
    UnknownKeyId,
    WorkerMisconfigured,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.settings import get_settings
from prefect_integrations.store import audit, definitions, grants, key_checks, key_registry

__all__ = ["check_worker", "faults_fail_the_run", "record_fault", "worker_fault"]

DATABASE_URL = "PREFECT_INTEGRATIONS_DATABASE_URL"
DEFINITIONS_PATH = "PREFECT_INTEGRATIONS_DEFINITIONS_PATH"
KEYS = "PREFECT_INTEGRATIONS_KEYS"


def _definitions_path() -> str:
    value = get_settings().definitions_path
    return f"'{value}'" if value else "unset"


def check_worker(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    *,
    flow: str,
    actor: str,
    integrations: Sequence[str] | None = None,
    instance_ids: Sequence[str] | None = None,
) -> None:
    """Raise `WorkerMisconfigured` (audited) unless this worker can run ``flow`` safely.

    ``integrations`` / ``instance_ids`` limit the checks to what the run will touch (a
    worker may hold only its share of definitions and keys).
    """
    fault: WorkerMisconfigured | None
    try:
        with db.transaction(f"check the settings of the {flow} worker") as session:
            missing = grants.missing_privileges(session)
            if missing:
                fault = _role_fault(f"The database role of this worker lacks {', '.join(missing)}")
            else:
                scope = {"integrations": integrations, "instance_ids": instance_ids}
                drift = definitions.definition_drift(session, registry, **scope)
                probe = key_checks.probe_keys(session, keyring, **scope)
                keys = key_registry.check_keyring(session, keyring, probe=probe)
                fault = _definitions_fault(drift) or _keys_fault(probe, keyring, keys)
                if fault is None:
                    key_registry.trust_on_first_use(session, keyring, keys, actor=actor)
    except PermissionDenied as exc:
        fault = _role_fault(str(exc))
    if fault is not None:
        record_fault(db, fault, flow=flow, actor=actor)
        raise fault


def _role_fault(problem: str) -> WorkerMisconfigured:
    return WorkerMisconfigured(
        f"{problem}: set {DATABASE_URL} to a role granted the runtime privileges "
        "(`prefect-integrations db grant`)",
        setting=DATABASE_URL,
    )


def _definitions_fault(drift: definitions.DefinitionDrift) -> WorkerMisconfigured | None:
    if drift.missing:
        listed = ", ".join(f"'{i}' ({n} instance(s))" for i, n in sorted(drift.missing.items()))
        return WorkerMisconfigured(
            f"This worker has no definition of {listed}: set {DEFINITIONS_PATH} (now "
            f"{_definitions_path()}) to the folders that hold them, as on the host that "
            "created the instances",
            setting=DEFINITIONS_PATH,
        )
    if drift.differs:
        listed = ", ".join(
            f"'{i}' (version {stored} in both, other content)"
            if stored == loaded
            else f"'{i}' (database {stored}, this worker {loaded})"
            for i, (stored, loaded) in sorted(drift.differs.items())
        )
        return WorkerMisconfigured(
            f"The definitions of this worker differ from the database's: {listed}; give "
            f"the worker the same definition files ({DEFINITIONS_PATH}, now "
            f"{_definitions_path()}) or run `prefect-integrations definitions sync` with "
            "the files that should win",
            setting=DEFINITIONS_PATH,
        )
    return None


def _keys_fault(
    probe: key_checks.KeyProbe, keyring: Keyring, keys: key_registry.KeyringCheck
) -> WorkerMisconfigured | None:
    held = ", ".join(f"'{k}'" for k in keyring.ids)
    if probe.unknown:
        listed = ", ".join(f"'{k}'" for k in probe.unknown)
        return WorkerMisconfigured(
            f"Stored credentials are encrypted under key id(s) {listed}, which this worker's "
            f"keyring (ids {held}) lacks: set {KEYS} to the keyring the operator uses "
            "(after `keys rotate`, the new primary key first)",
            setting=KEYS,
        )
    if probe.wrong:
        listed = ", ".join(f"'{k}'" for k in probe.wrong)
        return WorkerMisconfigured(
            f"This worker's key(s) {listed} do not decrypt the credentials stored under "
            f"that id: the key differs from the one they were written with; set {KEYS} "
            "to the operator's keyring",
            setting=KEYS,
        )
    if keys.conflicts or keys.primary_unknown:
        return WorkerMisconfigured(
            key_registry.fault_message(keys, held=held, setting=KEYS), setting=KEYS
        )
    return None


def worker_fault(error: BaseException) -> WorkerMisconfigured | None:
    """The worker fault ``error`` stands for, or None when it may be the instance's own."""
    if isinstance(error, WorkerMisconfigured):
        return error
    if isinstance(error, UnknownIntegration):
        return WorkerMisconfigured(
            f"{error}: set {DEFINITIONS_PATH} (now {_definitions_path()}) to the folders "
            "that hold it",
            setting=DEFINITIONS_PATH,
        )
    if isinstance(error, UnknownKeyId) and error.key_id not in ("", "<none>"):
        return WorkerMisconfigured(
            f"{error}: set {KEYS} to the keyring the operator uses", setting=KEYS
        )
    if isinstance(error, PermissionDenied):
        return _role_fault(str(error))
    return None


def record_fault(db: Database, fault: WorkerMisconfigured, *, flow: str, actor: str) -> None:
    """Append the ``maintenance.fault`` audit row; a role that may not append is let be."""
    with (
        contextlib.suppress(IntegrationError),
        db.transaction(f"audit the fault of the {flow} worker") as session,
    ):
        audit.record(
            session,
            action=audit.AuditAction.MAINTENANCE_FAULT,
            actor=actor,
            outcome="failure",
            details={"flow": flow, "setting": fault.setting, "error": fault.message[:500]},
        )


@contextlib.contextmanager
def faults_fail_the_run(db: Database, *, flow: str, actor: str) -> Iterator[None]:
    """Turn a worker fault raised inside into an audited `WorkerMisconfigured`."""
    try:
        yield
    except IntegrationError as exc:
        fault = worker_fault(exc)
        if fault is None or fault is exc:  # not a fault, or one recorded where it arose
            raise
        record_fault(db, fault, flow=flow, actor=actor)
        raise fault from None
