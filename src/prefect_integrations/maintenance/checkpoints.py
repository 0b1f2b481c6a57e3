"""Audit checkpoints published as Prefect artifacts, and read back for `audit verify`.

Every maintenance run ends by signing a checkpoint of the audit log's chains
(`audit_seals.take_checkpoint`) and publishing it as a markdown artifact with the key
`ARTIFACT_KEY`: a short summary and the checkpoint's JSON in a fenced block. The
artifact lives in the Prefect server's database, outside the integrations database, so
its owner cannot quietly rewrite both. ``audit verify --checkpoint artifact:KEY`` (the
newest artifact of that key) or ``artifact:<id>`` reads one back.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from prefect_integrations.audit_seals import Checkpoint, take_checkpoint
from prefect_integrations.db import Database
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.keyring import Keyring
from prefect_integrations.prefect_api import require_api_url

__all__ = [
    "ARTIFACT_KEY",
    "ARTIFACT_PREFIX",
    "apublish_checkpoint",
    "checkpoint_markdown",
    "publish_checkpoint",
    "read_artifact_document",
]

#: The key of the checkpoint artifacts.
ARTIFACT_KEY = "integration-audit-checkpoint"
#: How `audit verify --checkpoint` names an artifact rather than a file.
ARTIFACT_PREFIX = "artifact:"

_FENCED = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def checkpoint_markdown(checkpoint: Checkpoint) -> str:
    """The artifact's markdown: a summary line and the signed JSON."""
    return (
        f"Audit log checkpoint: {checkpoint.rows} rows in {len(checkpoint.chains)} chains, "
        f"{checkpoint.created_at}, signed with key `{checkpoint.key_id}`. Verify with "
        f"`prefect-integrations audit verify --checkpoint {ARTIFACT_PREFIX}<this artifact's "
        f"id>`.\n\n```json\n{checkpoint.to_json().rstrip()}\n```\n"
    )


def _take(db: Database, keyring: Keyring) -> Checkpoint:
    with db.transaction("take an audit checkpoint") as session:
        return take_checkpoint(session, keyring)


def publish_checkpoint(db: Database, keyring: Keyring) -> Checkpoint:
    """Sign a checkpoint and publish it as an artifact of the current run."""
    checkpoint = _take(db, keyring)
    create_markdown_artifact(
        markdown=checkpoint_markdown(checkpoint),
        key=ARTIFACT_KEY,
        description=f"Audit checkpoint: {checkpoint.rows} rows",
    )
    return checkpoint


async def apublish_checkpoint(db: Database, keyring: Keyring) -> Checkpoint:
    """`publish_checkpoint` for async flows."""
    checkpoint = _take(db, keyring)
    await acreate_markdown_artifact(
        markdown=checkpoint_markdown(checkpoint),
        key=ARTIFACT_KEY,
        description=f"Audit checkpoint: {checkpoint.rows} rows",
    )
    return checkpoint


def read_artifact_document(reference: str) -> tuple[str, Any]:
    """The checkpoint JSON of ``artifact:KEY`` (newest of the key) or ``artifact:ID``.

    Returns a subject naming the artifact (for errors) and the parsed JSON.
    """
    name = reference.removeprefix(ARTIFACT_PREFIX).strip()
    subject = f"checkpoint artifact {name!r}"
    # not Prefect's ephemeral mode: its own empty database would hold no artifact
    require_api_url(
        "checkpoint artifacts are read from the Prefect server the maintenance runs report "
        "to (for `prefect-integrations serve`'s local server, its 'Prefect UI' address "
        "followed by /api)"
    )
    try:
        artifact_filter = ArtifactFilter(id=ArtifactFilterId(any_=[uuid.UUID(name)]))
    except ValueError:
        artifact_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[name]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=artifact_filter, sort=ArtifactSort.CREATED_DESC, limit=1
        )
    if not found:
        raise ValidationError(subject, [], "no such artifact on the Prefect server")
    data = found[0].data
    match = _FENCED.search(data) if isinstance(data, str) else None
    if match is None:
        raise ValidationError(subject, [], "holds no checkpoint (no ```json block)")
    try:
        return subject, json.loads(match.group(1))
    except ValueError:
        raise ValidationError(subject, [], "its JSON block is not valid JSON") from None
