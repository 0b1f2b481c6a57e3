"""The credentials vault: pgcrypto encryption with a keyring, one key id per row.

Credentials are encrypted with ``pgp_sym_encrypt(plaintext, key, 'cipher-algo=aes256,
s2k-mode=1')`` (an authenticated OpenPGP message; never raw ``encrypt()``). Keys travel
only as bind parameters and the engine hides parameters in errors. The plaintext binds
the row's ``instance_id``, checked after decryption, so a ciphertext copied to another
row is refused. Each successful decrypt appends an audit row in the same statement;
each failure is audited so that it survives the caller's rollback. The secret values of
decrypted credentials are remembered by `prefect_integrations.logfilter`, which masks them
in the HTTP libraries' log records once installed (`logfilter.install`: the runtime and
the CLI install it; importing this module changes no logging).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations import logfilter
from prefect_integrations.credentials import (
    Credentials,
    credentials_metadata,
    oauth2_section,
    to_epoch,
    to_spec_shape,
)
from prefect_integrations.db import translate_errors
from prefect_integrations.exceptions import (
    CredentialsError,
    DecryptionError,
    InstanceNotFound,
    NoCredentials,
    UnknownKeyId,
    format_json_path,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.validation import check_storable, storable_problem

__all__ = [
    "CANONICAL_PLAINTEXT",
    "ENVELOPE_VERSION",
    "MALFORMED_REASON",
    "PGP_OPTIONS",
    "fetch_credentials",
    "fetch_many",
    "store_credentials",
]

#: The ``v`` of the stored envelope. 2: the plaintext holds the specification's credentials
#: shape. 1: written before it, possibly a flat document; still read (converted on
#: decryption), rewritten as 2 on the next write or by `rekey.rotate_keys`.
ENVELOPE_VERSION = 2
PGP_OPTIONS = "cipher-algo=aes256, s2k-mode=1"
#: The audit reason of a row whose decrypted document is not readable JSON.
MALFORMED_REASON = "malformed"

_STORE = sa.text(
    """
    UPDATE integration_instances SET
      credentials = jsonb_build_object(
        'v', CAST(:v AS integer),
        'kid', CAST(:kid AS text),
        'ct', encode(pgp_sym_encrypt(CAST(:pt AS text), CAST(:key AS text),
                                     CAST(:opts AS text)), 'base64'),
        'meta', CAST(:meta AS jsonb)),
      key_id = CAST(:kid AS text),
      token_expires_at = CAST(:expires AS timestamptz),
      credentials_version = credentials_version + 1,
      refresh_lease_until = NULL,
      updated_at = now()
    WHERE instance_id = :iid
      AND (CAST(:expected AS bigint) IS NULL OR credentials_version = CAST(:expected AS bigint))
    RETURNING credentials_version
    """
)

#: The canonical plaintext of a row, as `store_credentials` writes it: ``{"instance_id":
#: <the row's id>,"credentials":{...}}`` (``json.dumps`` with ``separators=(",", ":")``,
#: ASCII only). A SQL condition on ``{pt}`` (the plaintext) and ``{iid}`` (the row's
#: instance id) that holds when the plaintext starts with that prefix and neither key
#: appears again after it, which is then what a JSON parser reads too; checked without
#: parsing (``LIKE`` with ``\\_`` for a literal ``_``).
CANONICAL_PLAINTEXT = """(
  starts_with({pt}, '{{"instance_id":' || to_json({iid})::text || ',"credentials":{{')
  AND {pt} NOT LIKE '%"instance\\_id":%"instance\\_id":%'
  AND {pt} NOT LIKE '%"credentials":%"credentials":%'
)"""

# A ciphertext that is not base64 would make decode() fail the whole statement, and with
# it every other row read with it: such a ciphertext is not decoded (it reads as corrupt).
# PostgreSQL's base64 skips spaces, tabs and line breaks (encode() breaks lines).
_BASE64 = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_CIPHERTEXT = f"""
  CASE WHEN translate(k.credentials->>'ct', E' \\t\\n\\r', '') ~ '{_BASE64}'
       THEN decode(k.credentials->>'ct', 'base64') END
"""
# A JSON escape PostgreSQL's jsonb refuses (NUL, a surrogate: paired or lone) or that
# needs a closer look; such a plaintext is checked and audited by `_credentials_or_error`.
_ESCAPE = r"\\u(0000|[dD][89abcdefABCDEF])"

# One round trip: pick the row's key from the keyring and decrypt (NULL instead of an
# error on a wrong key or corrupt data, so the caller's transaction stays usable), then
# append the audit row of a successful decrypt for a canonical plaintext bound to its row.
# Nothing here parses the plaintext, so no row's data can fail the statement (and with it
# the other rows of a batch); `_read_rows` parses and checks each plaintext, and audits the
# success of the rare plaintext that is not canonical. A canonical plaintext that is not
# JSON (only a holder of the key could write one) is audited as decrypted here and then as
# a failed read.
_FETCH_AUDIT = audit.insert_rows(
    audit.select_row(
        actor="CAST(:actor AS text)",
        instance_id="d.instance_id",
        integration_id="d.integration_id",
        outcome="'success'",
        details="jsonb_build_object('purpose', CAST(:purpose AS text), 'key_id', d.kid)",
        rest="FROM d WHERE d.audited",
    )
)
_FETCH = audit.bind_action(
    sa.text(
        f"""
    WITH k AS MATERIALIZED (
      SELECT i.instance_id, d.integration_id, d.auth_type, i.credentials,
             (CAST(:keys AS text[]))[array_position(CAST(:kids AS text[]),
                                                    i.credentials->>'kid')] AS key
        FROM integration_instances i
        JOIN integration_definitions d ON d.id = i.integration_definition_id
       WHERE i.instance_id = ANY(CAST(:iids AS text[]))
    ), p AS MATERIALIZED (
      SELECT k.instance_id, k.integration_id, k.auth_type,
             k.credentials IS NOT NULL AS has_credentials,
             coalesce(k.credentials->>'v', '1') AS envelope_version,
             k.credentials->>'kid' AS kid,
             k.key IS NOT NULL AS key_known,
             integration_try_decrypt({_CIPHERTEXT}, k.key) AS pt
        FROM k
    ), d AS MATERIALIZED (
      SELECT p.*,
             coalesce(
               {CANONICAL_PLAINTEXT.format(pt="p.pt", iid="p.instance_id")}
               AND p.pt !~ '{_ESCAPE}',
               false) AS audited
        FROM p
    ), a AS (
      {{_FETCH_AUDIT}}
    )
    SELECT instance_id, integration_id, auth_type, has_credentials, envelope_version, kid,
           key_known, pt, audited
      FROM d
    """.replace("{_FETCH_AUDIT}", _FETCH_AUDIT)
    ),
    AuditAction.CREDENTIALS_DECRYPT,
)


def _expires_at(values: Mapping[str, Any]) -> datetime | None:
    """The access token's expiry (``oauth2.expires_at``) for the ``token_expires_at`` column."""
    expires = oauth2_section(values).get("expires_at")
    if expires is None or isinstance(expires, bool):
        return None
    try:
        return datetime.fromtimestamp(to_epoch(expires), tz=UTC)
    except ValueError:
        return None


def store_credentials(
    session: Session,
    keyring: Keyring,
    instance_id: str,
    values: Mapping[str, Any],
    *,
    expected_version: int | None = None,
) -> int | None:
    """Encrypt ``values`` under the primary key into the instance's row.

    Validation and auditing are the caller's (see `instances.set_credentials`). Returns
    the new ``credentials_version``. With ``expected_version`` the write is a
    compare-and-swap: it happens only if the stored version is still that one, and None
    is returned otherwise. Any refresh lease is released. ``values`` are written in the
    specification's shape (`to_spec_shape`: a flat document is converted, times become
    ISO 8601 UTC) under envelope version `ENVELOPE_VERSION`.
    """
    values = to_spec_shape(values)
    # Refused before anything is written: what PostgreSQL cannot read back as jsonb (a
    # lone surrogate, NUL) would make the row unreadable and lose the stored credentials.
    check_storable(values, subject=f"Credentials of instance '{instance_id}'")
    plaintext = json.dumps(
        {"instance_id": instance_id, "credentials": dict(values)}, separators=(",", ":")
    )
    params = {
        "v": ENVELOPE_VERSION,
        "kid": keyring.primary_id,
        "pt": plaintext,
        "key": keyring.primary.get_secret_value(),
        "opts": PGP_OPTIONS,
        "meta": json.dumps(credentials_metadata(values)),
        "expires": _expires_at(values),
        "iid": instance_id,
        "expected": expected_version,
    }
    with translate_errors(f"store credentials of instance '{instance_id}'"):
        version = session.execute(_STORE, params).scalar()
    if version is None:
        if expected_version is not None:
            return None
        raise InstanceNotFound(instance_id)
    return int(version)


def _decrypt_rows(
    session: Session, keyring: Keyring, instance_ids: list[str], *, actor: str, purpose: str
) -> list[Any]:
    params = {
        "iids": instance_ids,
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
        "actor": actor,
        "purpose": purpose,
    }
    what = f"instance '{instance_ids[0]}'" if len(instance_ids) == 1 else "instances"
    with translate_errors(f"read credentials of {what}"):
        return list(session.execute(_FETCH, params))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_plaintext(plaintext: str) -> tuple[Any, str | None]:
    """The decrypted document, or None and why it cannot be read.

    Parsed as PostgreSQL's jsonb would read it: no NaN or Infinity, no lone surrogate or
    NUL in any string, at most `MAX_DEPTH` levels deep.
    """
    try:
        document = json.loads(plaintext, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None, "is not valid JSON"
    problem = storable_problem(document)
    if problem is not None:
        path, reason = problem
        return None, f"is not storable JSON at {format_json_path(path)}: {reason}"
    return document, None


def _credentials_or_error(row: Any) -> Credentials | tuple[CredentialsError, str]:
    """Turn one decrypted row into credentials, or the error and its audit reason."""
    instance_id = row.instance_id
    if not row.has_credentials:
        return NoCredentials(instance_id), "no_credentials"
    if not row.key_known:
        return UnknownKeyId(instance_id, row.kid or "<none>"), "unknown_key_id"
    if row.pt is None:
        return (
            DecryptionError(
                f"Credentials of instance '{instance_id}' cannot be decrypted with key "
                f"'{row.kid}': wrong key or corrupt data"
            ),
            "wrong_key_or_corrupt",
        )
    document, problem = _parse_plaintext(row.pt)
    if problem is not None:
        return (
            DecryptionError(
                f"Credentials of instance '{instance_id}' cannot be read: their decrypted "
                f"document {problem}; store them again (set-credentials)"
            ),
            MALFORMED_REASON,
        )
    if (
        not isinstance(document, dict)
        or document.get("instance_id") != instance_id
        or not isinstance(document.get("credentials"), dict)
    ):
        return (
            DecryptionError(
                f"Credentials stored in instance '{instance_id}' are bound to another "
                "instance; refusing to use them"
            ),
            "instance_binding_mismatch",
        )
    # Rows written before the specification's shape (envelope v1) are read in either shape.
    values = to_spec_shape(
        document["credentials"],
        auth_type=row.auth_type,
        legacy=row.envelope_version != str(ENVELOPE_VERSION),
    )
    logfilter.remember(values)
    return Credentials(instance_id=instance_id, key_id=row.kid, values=values)


def _read_rows(
    session: Session, rows: list[Any], *, actor: str, purpose: str
) -> dict[str, Credentials | CredentialsError]:
    """Each row's credentials or error; failures audited, and successes the SQL did not."""
    out: dict[str, Credentials | CredentialsError] = {}
    successes: list[audit.AuditRow] = []
    for row in rows:
        result = _credentials_or_error(row)
        if isinstance(result, tuple):
            error, reason = result
            _fail(session, row.instance_id, actor, purpose, reason, row)
            out[row.instance_id] = error
            continue
        if not row.audited:  # a plaintext the statement did not recognise as canonical
            successes.append(
                audit.AuditRow(
                    AuditAction.CREDENTIALS_DECRYPT,
                    actor,
                    "success",
                    row.instance_id,
                    row.integration_id,
                    {"purpose": purpose, "key_id": row.kid},
                )
            )
        out[row.instance_id] = result
    if successes:
        audit.record_many(session, successes)
    return out


def fetch_credentials(
    session: Session,
    keyring: Keyring,
    instance_id: str,
    *,
    actor: str,
    purpose: str,
) -> Credentials:
    """Decrypt the credentials of one instance; audited, success or failure.

    Raises `InstanceNotFound`, `NoCredentials`, `UnknownKeyId` (the row's key id is not
    in the keyring) or `DecryptionError` (wrong key, corrupt data, a decrypted document
    that is not readable JSON, or a ciphertext that belongs to another instance).
    Messages name the instance and key id, never a key.
    """
    rows = _decrypt_rows(session, keyring, [instance_id], actor=actor, purpose=purpose)
    if not rows:
        raise InstanceNotFound(instance_id)
    result = _read_rows(session, rows, actor=actor, purpose=purpose)[instance_id]
    if isinstance(result, CredentialsError):
        raise result
    return result


def fetch_many(
    session: Session,
    keyring: Keyring,
    instance_ids: list[str],
    *,
    actor: str,
    purpose: str,
) -> dict[str, Credentials | CredentialsError]:
    """Decrypt the credentials of several instances in one statement; each audited.

    Instances that do not exist are missing from the result; the others map to their
    credentials or to the error that `fetch_credentials` would raise. A row that cannot
    be decrypted or read fails alone: the statement never parses a plaintext, so no
    row's data can fail it for the others.
    """
    if not instance_ids:
        return {}
    rows = _decrypt_rows(session, keyring, instance_ids, actor=actor, purpose=purpose)
    return _read_rows(session, rows, actor=actor, purpose=purpose)


def _fail(
    session: Session,
    instance_id: str,
    actor: str,
    purpose: str,
    reason: str,
    row: Any,
) -> None:
    audit.record_outside(
        session,
        action=AuditAction.CREDENTIALS_DECRYPT,
        actor=actor,
        outcome="failure",
        instance_id=instance_id,
        integration_id=row.integration_id,
        details={
            "purpose": purpose,
            "reason": reason,
            "key_id": row.kid,
        },
    )
