"""Rows as earlier versions wrote them: envelope v1 holding a flat credential document.

Used to test that such rows keep working, are rewritten in the specification's shape on
their next write, and are upgraded by ``keys rotate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.keyring import Keyring
from prefect_integrations.store.vault import PGP_OPTIONS

# What `vault.store_credentials` wrote with ENVELOPE_VERSION 1: the same encryption, the
# flat plaintext, and its metadata (field names, token type, scope, epoch expiry).
_WRITE_V1 = sa.text(
    """
    UPDATE integration_instances SET
      credentials = jsonb_build_object(
        'v', 1,
        'kid', CAST(:kid AS text),
        'ct', encode(pgp_sym_encrypt(CAST(:pt AS text), CAST(:key AS text),
                                     CAST(:opts AS text)), 'base64'),
        'meta', CAST(:meta AS jsonb)),
      key_id = CAST(:kid AS text),
      token_expires_at = to_timestamp(CAST(:expires AS double precision)),
      credentials_version = credentials_version + 1
    WHERE instance_id = :iid
    RETURNING credentials_version
    """
)


def write_old_shape(
    session: Session, keyring: Keyring, instance_id: str, values: Mapping[str, Any]
) -> int:
    """Store ``values`` (a flat document) as an envelope v1 row; the new credentials version."""
    plaintext = json.dumps(
        {"instance_id": instance_id, "credentials": dict(values)}, separators=(",", ":")
    )
    meta: dict[str, Any] = {"fields": sorted(values)}
    for name in ("token_type", "scope", "expires_at"):
        if name in values:
            meta[name] = values[name]
    expires = values.get("expires_at")
    version = session.execute(
        _WRITE_V1,
        {
            "kid": keyring.primary_id,
            "pt": plaintext,
            "key": keyring.primary.get_secret_value(),
            "opts": PGP_OPTIONS,
            "meta": json.dumps(meta),
            "expires": expires if isinstance(expires, int | float) else None,
            "iid": instance_id,
        },
    ).scalar_one()
    return int(version)


def envelope_versions(session: Session) -> dict[str, int]:
    """``instance_id`` to the ``v`` of its stored envelope, for rows with credentials."""
    rows = session.execute(
        sa.text(
            "SELECT instance_id, CAST(coalesce(credentials->>'v', '1') AS integer) AS v "
            "FROM integration_instances WHERE credentials IS NOT NULL ORDER BY instance_id"
        )
    )
    return {row.instance_id: int(row.v) for row in rows}
