"""Audit checkpoints published as Prefect artifacts, and read back for `audit verify`.

Every maintenance run ends by sealing the rows appended since the last seal
(`audit_seal`; a transaction left open too long only postpones them to the next run),
signing a checkpoint of the audit log's chains and publishing it as a markdown artifact:
a short summary and the checkpoint's JSON in a fenced block. The artifact lives in the
Prefect server's database, outside the integrations database, so its owner cannot
quietly rewrite both. Each database has a key of its own (`artifact_key`: `ARTIFACT_KEY`
and a digest of the database's label), so the checkpoints of several installations
sharing a Prefect server never crowd each other out.

The checkpoints of a database form a chain (`audit_seals`): a run reads the stored ones
(`stored_checkpoints`: the newest `ARTIFACTS_READ` artifacts of its key, those whose
signature holds), takes the one with the highest sequence as the previous and signs a
new one only if the log still extends it; otherwise the run fails with
`AuditChainBroken` and nothing is signed. When artifacts of the key exist but none
holds a valid checkpoint (junk published over them, another keyring), the run fails
too rather than start a new chain. ``audit verify --checkpoint artifact:KEY`` makes the
same choice (``artifact:integration-audit-checkpoint`` stands for this database's key);
``artifact:<id>`` reads one artifact.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from prefect_integrations.audit_seals import (
    Checkpoint,
    database_label,
    loads_strict,
    newest,
    parse_checkpoint,
    take_checkpoint,
)
from prefect_integrations.db import Database
from prefect_integrations.exceptions import AuditChainBroken, ValidationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.prefect_api import require_api_url
from prefect_integrations.store.audit_seal import SealWaitTimeout, seal_pending

__all__ = [
    "ARTIFACTS_READ",
    "ARTIFACT_KEY",
    "ARTIFACT_PREFIX",
    "apublish_checkpoint",
    "artifact_key",
    "checkpoint_markdown",
    "publish_checkpoint",
    "read_artifact_checkpoint",
    "stored_checkpoints",
]

#: The key of the checkpoint artifacts.
ARTIFACT_KEY = "integration-audit-checkpoint"
#: How `audit verify --checkpoint` names an artifact rather than a file.
ARTIFACT_PREFIX = "artifact:"
#: How many of the newest artifacts of the key are read to find the previous checkpoint.
ARTIFACTS_READ = 200

_FENCED = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
_logger = logging.getLogger(__name__)


def checkpoint_markdown(checkpoint: Checkpoint) -> str:
    """The artifact's markdown: a summary line and the signed JSON."""
    return (
        f"Audit log checkpoint {checkpoint.sequence} of `{checkpoint.database}`: "
        f"{checkpoint.rows} rows in {len(checkpoint.chains)} chains, {checkpoint.created_at}, "
        f"signed with key `{checkpoint.key_id}`. Verify with `prefect-integrations audit "
        f"verify --checkpoint {ARTIFACT_PREFIX}{ARTIFACT_KEY}`.\n\n"
        f"```json\n{checkpoint.to_json().rstrip()}\n```\n"
    )


def _document(data: Any, subject: str) -> Any:
    match = _FENCED.search(data) if isinstance(data, str) else None
    if match is None:
        raise ValidationError(subject, [], "holds no checkpoint (no ```json block)")
    return loads_strict(match.group(1), subject)


def _read(artifact_filter: ArtifactFilter, limit: int) -> list[Any]:
    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(
                artifact_filter=artifact_filter, sort=ArtifactSort.CREATED_DESC, limit=limit
            )
        )


def artifact_key(database: str) -> str:
    """The artifact key of ``database``'s checkpoints (lowercase letters, digits, dashes)."""
    return f"{ARTIFACT_KEY}-{hashlib.sha256(database.encode()).hexdigest()[:12]}"


def stored_checkpoints(keyring: Keyring, database: str, key: str | None = None) -> list[Checkpoint]:
    """The checkpoints of ``database`` among the newest artifacts of its key (or ``key``).

    Artifacts whose signature does not hold are left out (and logged); when there are
    artifacts but none holds a valid checkpoint, `AuditChainBroken`.
    """
    key = key or artifact_key(database)
    found = []
    artifacts = _read(ArtifactFilter(key=ArtifactFilterKey(any_=[key])), ARTIFACTS_READ)
    for artifact in artifacts:
        subject = f"checkpoint artifact {artifact.id}"
        try:
            checkpoint = parse_checkpoint(
                _document(artifact.data, subject), keyring, subject=subject
            )
        except ValidationError as exc:
            _logger.warning("Ignoring %s", exc)
            continue
        if checkpoint.database == database:
            found.append(checkpoint)
    if artifacts and not found:
        raise AuditChainBroken(
            f"None of the newest {len(artifacts)} artifacts of the key {key!r} holds a valid "
            f"checkpoint of {database}: a new checkpoint would not extend the earlier ones. "
            "Check those artifacts (published by someone else, or signed with a key no longer "
            "in the keyring?); delete them to start a new chain of checkpoints"
        )
    return found


def read_artifact_checkpoint(reference: str, keyring: Keyring, database: str) -> Checkpoint:
    """The checkpoint of ``artifact:ID``, or of ``artifact:KEY``: this database's highest."""
    name = reference.removeprefix(ARTIFACT_PREFIX).strip()
    subject = f"checkpoint artifact {name!r}"
    # not Prefect's ephemeral mode: its own empty database would hold no artifact
    require_api_url(
        "checkpoint artifacts are read from the Prefect server the maintenance runs report "
        "to (for `prefect-integrations serve`'s local server, its 'Prefect UI' address "
        "followed by /api)"
    )
    try:
        artifact_id = uuid.UUID(name)
    except ValueError:
        key = artifact_key(database) if name == ARTIFACT_KEY else name
        chosen = newest(stored_checkpoints(keyring, database, key))
        if chosen is None:
            raise ValidationError(
                subject, [], f"no artifact of that key holds a valid checkpoint of {database}"
            ) from None
        return chosen
    found = _read(ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])), 1)
    if not found:
        raise ValidationError(subject, [], "no such artifact on the Prefect server")
    return parse_checkpoint(_document(found[0].data, subject), keyring, subject=subject)


def _take(db: Database, keyring: Keyring) -> Checkpoint:
    try:
        seal_pending(db)
    except SealWaitTimeout as exc:  # the checkpoint covers what is sealed; next run seals
        _logger.warning("%s", exc)
    database = database_label(db.url)
    previous = newest(stored_checkpoints(keyring, database))
    with db.transaction("take an audit checkpoint") as session:
        return take_checkpoint(session, keyring, database=database, previous=previous)


def publish_checkpoint(db: Database, keyring: Keyring) -> Checkpoint:
    """Sign a checkpoint extending the previous one; publish it as an artifact of the run."""
    checkpoint = _take(db, keyring)
    create_markdown_artifact(
        markdown=checkpoint_markdown(checkpoint),
        key=artifact_key(checkpoint.database),
        description=f"Audit checkpoint {checkpoint.sequence}: {checkpoint.rows} rows",
    )
    return checkpoint


async def apublish_checkpoint(db: Database, keyring: Keyring) -> Checkpoint:
    """`publish_checkpoint` for async flows."""
    checkpoint = _take(db, keyring)
    await acreate_markdown_artifact(
        markdown=checkpoint_markdown(checkpoint),
        key=artifact_key(checkpoint.database),
        description=f"Audit checkpoint {checkpoint.sequence}: {checkpoint.rows} rows",
    )
    return checkpoint
