"""Encryption-key rotation: re-encrypt stored credentials to the primary key, online.

`rotate_keys` walks the instances whose ``key_id`` is not the primary key id in batches
(keyset order on ``id``). Each batch is one short transaction holding one SQL statement
that

1. claims the batch with ``FOR UPDATE SKIP LOCKED`` (a concurrent call, refresh or second
   rotation run is never waited for and no row is processed twice),
2. decrypts each row with the key its envelope names (keys arrive only as bind-parameter
   arrays, as in `vault`; ``integration_try_decrypt`` yields NULL instead of aborting),
3. checks that the plaintext is a credentials document bound to the row's own
   ``instance_id``,
4. re-encrypts the unchanged plaintext under the primary key and writes the envelope's
   ``ct`` and ``kid`` and the ``key_id`` column (the rest of the envelope, and
   ``credentials_version``, stay as they are: the OAuth compare-and-swap is unaffected),
5. appends one ``keys.rotate`` audit row for the batch (rows rotated, from which key ids,
   to which, rows failed; outcome ``failure`` when none of the batch could be rotated) and
   one per failed row.

Rows that fail (``unknown_key_id``, ``undecryptable``, ``malformed``,
``binding_mismatch``) are left untouched, reported, and not picked again in the same run.
A batch is committed on its own, so a crash or a lost connection loses at most the batch
in flight, which the next run redoes.

Then rows still in envelope version 1 (plaintext possibly in the flat shape of earlier
versions) are upgraded to the specification's credentials shape (`upgrade_shapes`): each
is decrypted through the vault (audited), converted and stored again as version 2 with a
compare-and-swap on ``credentials_version``, so a concurrent OAuth refresh is never
overwritten. After that every row is verified (`verify_keys`) and the rows per key id are
counted again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from prefect_integrations.db import Database, translate_errors
from prefect_integrations.exceptions import CredentialsError, DatabaseError
from prefect_integrations.keyring import Keyring
from prefect_integrations.models import integration_id_of
from prefect_integrations.store import audit, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.vault import ENVELOPE_VERSION, PGP_OPTIONS

__all__ = [
    "BINDING_MISMATCH",
    "KEY_ID_MISMATCH",
    "LOCKED",
    "MALFORMED",
    "NO_KEY_ID",
    "UNDECRYPTABLE",
    "UNKNOWN_KEY_ID",
    "KeyCounts",
    "RotationReport",
    "count_keys",
    "key_counts",
    "rotate_keys",
    "upgrade_shapes",
    "verify_keys",
]

#: The envelope names a key id that is not in the keyring.
UNKNOWN_KEY_ID = "unknown_key_id"
#: Wrong key, corrupt ciphertext or a ciphertext that is not base64.
UNDECRYPTABLE = "undecryptable"
#: Decrypts, but is not a JSON object with a ``credentials`` object.
MALFORMED = "malformed"
#: Decrypts, but is bound to another instance (a copied ciphertext).
BINDING_MISMATCH = "binding_mismatch"
#: (verify) the ``key_id`` column differs from the envelope's ``kid``.
KEY_ID_MISMATCH = "key_id_mismatch"
#: (rotate) still locked by another transaction when the run gave up waiting.
LOCKED = "locked"
#: Label of rows with credentials but no key id.
NO_KEY_ID = "<none>"

#: Transient failures after which a batch is simply retried.
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "55P03"})  # deadlock, serialization, lock
_RETRIES = 5
_VERIFY_BATCH = 10_000

# Each row passes through two fenced (``OFFSET 0``) subqueries, so that every expression
# below is computed once per row:
#   e  the envelope, detoasted once (``- ''`` returns an in-memory copy): reading its key
#      id and ciphertext and writing it back then do not fetch it three times;
#   b  the envelope's key id, whether the keyring holds it, and the plaintext decrypted
#      with that key, looked up in the bind-parameter arrays as `vault` does (NULL for a
#      wrong key, corrupt data or an unknown key id). A ciphertext that is not base64 makes
#      decode() fail the whole statement: the caller then redoes that batch row by row to
#      single the row out (see `_isolate`).
_DETOASTED = "- ''"
_DECRYPTED = """
       e.envelope->>'kid' AS kid,
       array_position(CAST(:kids AS text[]), e.envelope->>'kid') IS NOT NULL AS key_known,
       integration_try_decrypt(
         decode(e.envelope->>'ct', 'base64'),
         (CAST(:keys AS text[]))[array_position(CAST(:kids AS text[]), e.envelope->>'kid')]
       ) AS pt
"""

# `vault.fetch_credentials` accepts a plaintext that is a JSON object whose
# ``instance_id`` is the row's and whose ``credentials`` is an object. `vault` writes
# ``json.dumps({"instance_id": iid, "credentials": {...}}, separators=(",", ":"))``
# (instance ids are ASCII), which starts with exactly the prefix below; if neither key
# appears again anywhere after it, that is what a JSON parser reads too. This canonical
# form is checked without parsing (``LIKE``, with ``\_`` for a literal ``_``: ``substr``
# would cost more than the decryption); any other plaintext is parsed (jsonb) and checked.
_PREFIX = """('{"instance_id":' || to_json(b.instance_id)::text || ',"credentials":')"""
_CANONICAL = f"""
  starts_with(b.pt, {_PREFIX} || '{{')
  AND b.pt NOT LIKE '%"instance\\_id":%"instance\\_id":%'
  AND b.pt NOT LIKE '%"credentials":%"credentials":%'
"""
_PARSED = f"""
  WHEN jsonb_typeof(CAST(b.pt AS jsonb)) <> 'object'
       OR jsonb_typeof(CAST(b.pt AS jsonb) -> 'credentials') IS DISTINCT FROM 'object'
    THEN '{MALFORMED}'
  WHEN (CAST(b.pt AS jsonb) ->> 'instance_id') IS DISTINCT FROM b.instance_id
    THEN '{BINDING_MISMATCH}'
"""

# Why a decrypted row cannot be used, or NULL. Rotation re-encrypts the plaintext byte
# for byte, so a canonical plaintext needs no JSON validation there; verification also
# validates it as JSON (``json``, cheaper than building a jsonb; a plaintext that is not
# JSON fails the cast and the statement, and is singled out row by row).
_ROTATE_REASON = f"""
  CASE WHEN NOT b.key_known THEN '{UNKNOWN_KEY_ID}'
       WHEN b.pt IS NULL THEN '{UNDECRYPTABLE}'
       WHEN {_CANONICAL} THEN NULL
       {_PARSED}
  END
"""
_KEY_ID_CHECK = f"CASE WHEN b.key_id IS DISTINCT FROM b.kid THEN '{KEY_ID_MISMATCH}' END"
_VERIFY_REASON = f"""
  CASE WHEN NOT b.key_known THEN '{UNKNOWN_KEY_ID}'
       WHEN b.pt IS NULL THEN '{UNDECRYPTABLE}'
       WHEN {_CANONICAL} AND json_typeof(CAST(b.pt AS json)) = 'object' THEN {_KEY_ID_CHECK}
       {_PARSED}
       ELSE {_KEY_ID_CHECK}
  END
"""

# ``batch`` claims and locks the rows (the locked, i.e. latest, version of each row),
# carrying its envelope; ``upd`` decrypts, checks and re-encrypts in one pass and writes
# the rows that pass; ``fail`` gives the reason for the others (decrypted again: failures
# are rare); ``aud`` appends the audit rows; the result is one row: rotated count, last
# id claimed (keyset), failures.
_ROTATE_TEMPLATE = f"""
WITH batch AS MATERIALIZED (
  SELECT i.id, i.instance_id, d.integration_id, i.credentials AS envelope
    FROM integration_instances i
    JOIN integration_definitions d ON d.id = i.integration_definition_id
   WHERE i.key_id IS DISTINCT FROM CAST(:primary AS text)
     AND i.credentials IS NOT NULL
     AND i.id <> ALL (CAST(:skip AS uuid[]))
     {{where}}
   ORDER BY i.id
   LIMIT CAST(:batch AS integer)
   FOR UPDATE OF i SKIP LOCKED
), upd AS (
  UPDATE integration_instances i
     SET credentials = c.envelope || jsonb_build_object(
           'kid', CAST(:primary AS text),
           'ct', encode(pgp_sym_encrypt(c.pt, CAST(:new_key AS text), CAST(:opts AS text)),
                        'base64')),
         key_id = CAST(:primary AS text)
    FROM (SELECT b.id, b.kid, b.envelope, b.pt, {_ROTATE_REASON} AS reason
            FROM (SELECT e.id, e.instance_id, e.envelope, {_DECRYPTED}
                    FROM (SELECT id, instance_id, envelope {_DETOASTED} AS envelope
                            FROM batch OFFSET 0) e
                  OFFSET 0) b) c
   WHERE i.id = c.id AND c.reason IS NULL
  RETURNING i.id, c.kid
), fail AS MATERIALIZED (
  SELECT b.id, b.instance_id, b.integration_id, b.kid, {_ROTATE_REASON} AS reason
    FROM (SELECT e.id, e.instance_id, e.integration_id, {_DECRYPTED}
            FROM (SELECT id, instance_id, integration_id, envelope {_DETOASTED} AS envelope
                    FROM batch
                   WHERE id NOT IN (SELECT id FROM upd) OFFSET 0) e
          OFFSET 0) b
), aud AS (
  INSERT INTO integration_audit_log (actor, action, instance_id, integration_id, outcome,
                                     details)
  SELECT CAST(:actor AS text), 'keys.rotate', NULL, NULL,
         CASE WHEN count(*) = 0 THEN 'failure' ELSE 'success' END,
         jsonb_build_object('count', count(*),
                            'from', coalesce(jsonb_agg(DISTINCT upd.kid ORDER BY upd.kid),
                                             '[]'),
                            'to', CAST(:primary AS text),
                            'failed', (SELECT count(*) FROM fail WHERE reason IS NOT NULL))
    FROM upd
  HAVING EXISTS (SELECT 1 FROM batch)
  UNION ALL
  SELECT CAST(:actor AS text), 'keys.rotate', f.instance_id, f.integration_id, 'failure',
         jsonb_build_object('reason', f.reason, 'key_id', f.kid, 'to', CAST(:primary AS text))
    FROM fail f
   WHERE f.reason IS NOT NULL
)
SELECT (SELECT count(*) FROM upd) AS rotated,
       (SELECT (array_agg(id ORDER BY id DESC))[1] FROM batch) AS last_id,
       coalesce(array_agg(f.id ORDER BY f.id), '{{}}') AS failed_ids,
       coalesce(array_agg(f.instance_id ORDER BY f.id), '{{}}') AS failed_instances,
       coalesce(array_agg(f.reason ORDER BY f.id), '{{}}') AS failed_reasons
  FROM fail f
 WHERE f.reason IS NOT NULL
"""

# First pass from the start of the id order; later batches continue after the last id
# seen (keyset); the isolation of a poison row works on one id.
_ROTATE_FIRST = sa.text(_ROTATE_TEMPLATE.replace("{where}", ""))
_ROTATE_NEXT = sa.text(_ROTATE_TEMPLATE.replace("{where}", "AND i.id > CAST(:after AS uuid)"))
_ROTATE_ONE = sa.text(_ROTATE_TEMPLATE.replace("{where}", "AND i.id = CAST(:only AS uuid)"))

_PENDING_WHERE = """
   WHERE key_id IS DISTINCT FROM CAST(:primary AS text)
     AND credentials IS NOT NULL
     AND id <> ALL (CAST(:skip AS uuid[]))
"""
_INTEGRATION_ID = integration_id_of("integration_instances")
_PENDING_COUNT = sa.text(f"SELECT count(*) FROM integration_instances {_PENDING_WHERE}")
_PENDING_ROWS = sa.text(
    f"SELECT id, instance_id, {_INTEGRATION_ID}, credentials->>'kid' AS kid "
    f"FROM integration_instances {_PENDING_WHERE} ORDER BY id LIMIT CAST(:batch AS integer)"
)
_PENDING_AFTER = sa.text(
    f"SELECT id, instance_id, {_INTEGRATION_ID}, credentials->>'kid' AS kid "
    f"FROM integration_instances {_PENDING_WHERE} AND id > CAST(:after AS uuid) "
    "ORDER BY id LIMIT CAST(:batch AS integer)"
)

_COUNTS = sa.text(
    f"""
    SELECT coalesce(key_id, '{NO_KEY_ID}') AS kid, count(*) AS n
      FROM integration_instances
     WHERE credentials IS NOT NULL
     GROUP BY 1
     ORDER BY 1
    """
)

_VERIFY_ROWS = f"""
SELECT b.id, b.instance_id, {_VERIFY_REASON} AS reason
  FROM (SELECT e.id, e.instance_id, e.key_id, {_DECRYPTED}
          FROM (SELECT i.id, i.instance_id, i.key_id, i.credentials {_DETOASTED} AS envelope
                  FROM integration_instances i
                 WHERE i.credentials IS NOT NULL {{where}}
                 ORDER BY i.id
                 LIMIT CAST(:batch AS integer)) e
        OFFSET 0) b
"""
# One row per batch: rows fine, the last id (keyset), and the problems. (``OFFSET 0``
# keeps ``reason`` computed once per row, not once per aggregate that reads it.)
_VERIFY_TEMPLATE = f"""
SELECT count(*) FILTER (WHERE v.reason IS NULL) AS ok,
       (array_agg(v.id ORDER BY v.id DESC))[1] AS last_id,
       coalesce(array_agg(v.instance_id ORDER BY v.id) FILTER (WHERE v.reason IS NOT NULL),
                '{{}}') AS problem_instances,
       coalesce(array_agg(v.reason ORDER BY v.id) FILTER (WHERE v.reason IS NOT NULL),
                '{{}}') AS problem_reasons
  FROM ({_VERIFY_ROWS} OFFSET 0) v
"""
_VERIFY_FIRST = sa.text(_VERIFY_TEMPLATE.replace("{where}", ""))
_VERIFY_NEXT = sa.text(_VERIFY_TEMPLATE.replace("{where}", "AND i.id > CAST(:after AS uuid)"))
_VERIFY_ONE = sa.text(_VERIFY_ROWS.replace("{where}", "AND i.id = CAST(:only AS uuid)"))


# --------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCounts:
    """Instances with stored credentials per key id, and how many have an unknown key id.

    ``unknown`` counts the rows whose key id is not in the keyring (they cannot be read
    or rotated until their key is added back).
    """

    by_key: dict[str, int]
    unknown: int
    keyring_ids: tuple[str, ...]

    @property
    def total(self) -> int:
        """Every instance with stored credentials."""
        return sum(self.by_key.values())

    def in_keyring(self, key_id: str) -> bool:
        """True when ``key_id`` is in the keyring the counts were made with."""
        return key_id in self.keyring_ids

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (key ids and counts only)."""
        return {
            "by_key": [
                {"key_id": kid, "instances": n, "in_keyring": self.in_keyring(kid)}
                for kid, n in self.by_key.items()
            ],
            "total": self.total,
            "unknown": self.unknown,
        }


def count_keys(session: Session | Connection, keyring: Keyring) -> KeyCounts:
    """Count the instances with stored credentials per key id (the ``key_id`` column)."""
    with translate_errors("count credentials per key id"):
        by_key = {str(row.kid): int(row.n) for row in session.execute(_COUNTS)}
    ids = tuple(keyring.ids)
    unknown = sum(n for kid, n in by_key.items() if kid not in ids)
    return KeyCounts(by_key=by_key, unknown=unknown, keyring_ids=ids)


def key_counts(session: Session | Connection, keyring: Keyring) -> dict[str, int]:
    """Instances with stored credentials per key id (see `count_keys` for the unknown)."""
    return dict(count_keys(session, keyring).by_key)


# --------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------


@dataclass
class RotationReport:
    """What `rotate_keys` did.

    ``failed`` lists ``(instance_id, reason)`` of rows left untouched; ``problems`` the
    rows `verify_keys` found unreadable after the run (usually the same rows). Counts are
    per key id, before and after. ``seconds`` is the whole run, ``verify_seconds`` the
    verification pass within it. Never holds a key or a plaintext.
    """

    rotated: int = 0
    upgraded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    verified: int = 0
    seconds: float = 0.0
    verify_seconds: float = 0.0
    primary: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed and every row verified."""
        return not self.failed and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "primary": self.primary,
            "rotated": self.rotated,
            "upgraded": self.upgraded,
            "batches": self.batches,
            "failed": [{"instance_id": i, "reason": r} for i, r in self.failed],
            "before": dict(self.before),
            "after": dict(self.after),
            "verified": self.verified,
            "problems": [{"instance_id": i, "reason": r} for i, r in self.problems],
            "seconds": round(self.seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "ok": self.ok,
        }


@dataclass
class _Batch:
    rotated: int = 0
    failed: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)
    last_id: uuid.UUID | None = None
    committed: int = 0


def _sqlstate(exc: sa_exc.DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", "") or "")


def _run_statement(
    conn: Connection, statement: sa.TextClause, params: dict[str, Any], operation: str
) -> list[sa.Row[Any]]:
    """Run one batch statement in its own transaction, retrying deadlocks; commit."""
    for attempt in range(1, _RETRIES + 1):
        try:
            with conn.begin():
                return list(conn.execute(statement, params))
        except sa_exc.DBAPIError as exc:
            if _sqlstate(exc) not in _RETRY_SQLSTATES:
                raise
            if attempt == _RETRIES:
                raise DatabaseError(
                    f"Cannot {operation}: the batch kept conflicting with other transactions "
                    f"({_sqlstate(exc)}); run it again"
                ) from None
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_data_error(exc: sa_exc.DBAPIError) -> bool:
    return _sqlstate(exc).startswith("22")


def _data_error_reason(exc: sa_exc.DBAPIError) -> str:
    # 22023: decode() refused the base64; otherwise (22P02) the plaintext is not JSON
    return UNDECRYPTABLE if _sqlstate(exc) == "22023" else MALFORMED


def _batch_result(row: sa.Row[Any]) -> _Batch:
    return _Batch(
        rotated=int(row.rotated),
        failed=list(zip(row.failed_ids, row.failed_instances, row.failed_reasons, strict=True)),
        last_id=row.last_id,
        committed=0 if row.last_id is None else 1,
    )


def _rotate_batch(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None, actor: str
) -> _Batch:
    statement = _ROTATE_FIRST if after is None else _ROTATE_NEXT
    try:
        rows = _run_statement(conn, statement, {**params, "after": after}, "rotate a batch")
    except sa_exc.DBAPIError as exc:
        if not _is_data_error(exc):
            raise
        # A row whose ciphertext is not base64 or whose plaintext is not JSON made the
        # whole statement fail: redo this batch one row at a time to single it out.
        return _isolate(conn, params, after, actor)
    return _batch_result(rows[0])


def _isolate(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None, actor: str
) -> _Batch:
    """Process the batch after ``after`` row by row; a row that still errors is failed."""
    select = _PENDING_ROWS if after is None else _PENDING_AFTER
    with conn.begin():
        candidates = list(conn.execute(select, {**params, "after": after}))
    batch = _Batch()
    for candidate in candidates:
        batch.last_id = candidate.id
        try:
            rows = _run_statement(
                conn, _ROTATE_ONE, {**params, "only": candidate.id}, "rotate one row"
            )
        except sa_exc.DBAPIError as exc:
            if not _is_data_error(exc):
                raise
            reason = _data_error_reason(exc)
            with conn.begin():
                audit.record(
                    conn,
                    action=AuditAction.KEYS_ROTATE,
                    actor=actor,
                    outcome="failure",
                    instance_id=candidate.instance_id,
                    integration_id=candidate.integration_id,
                    details={"reason": reason, "key_id": candidate.kid, "to": params["primary"]},
                )
            batch.failed.append((candidate.id, candidate.instance_id, reason))
            continue
        one = _batch_result(rows[0])  # nothing claimed: locked by others, comes back later
        batch.committed += one.committed
        batch.rotated += one.rotated
        batch.failed.extend(one.failed)
    return batch


def _give_up_on_locked(
    conn: Connection, params: dict[str, Any], actor: str
) -> list[tuple[uuid.UUID, str, str]]:
    """Report (and audit) the rows still pending after waiting too long for their locks."""
    failed: list[tuple[uuid.UUID, str, str]] = []
    after: uuid.UUID | None = None
    while True:
        select = _PENDING_ROWS if after is None else _PENDING_AFTER
        with conn.begin():
            rows = list(conn.execute(select, {**params, "after": after}))
            for row in rows:
                audit.record(
                    conn,
                    action=AuditAction.KEYS_ROTATE,
                    actor=actor,
                    outcome="failure",
                    instance_id=row.instance_id,
                    integration_id=row.integration_id,
                    details={"reason": LOCKED, "key_id": row.kid, "to": params["primary"]},
                )
                failed.append((row.id, row.instance_id, LOCKED))
        if not rows:
            return failed
        after = rows[-1].id


def rotate_keys(
    db: Database,
    keyring: Keyring,
    *,
    actor: str,
    batch_size: int = 5000,
    on_batch: Callable[[int], None] | None = None,
    lock_wait: float = 60.0,
) -> RotationReport:
    """Re-encrypt every stored credential not under the primary key to the primary key.

    Online and resumable: one short transaction per batch of ``batch_size`` rows, rows
    locked by others are skipped and come back later, and a rerun continues where a
    killed run stopped. ``on_batch`` is called after each committed batch with the number
    of rows it rotated. Rows still locked by others after ``lock_wait`` seconds without
    progress are reported as ``locked``. Failed rows are left untouched and reported;
    they are audited, as is each batch. Rows still in envelope version 1 are then
    rewritten in the specification's credentials shape (`upgrade_shapes`; counted in
    ``upgraded``). A batch aborted by a deadlock (its row locks
    against a transaction that holds the audit chain lock, such as the usage recorder's)
    is retried. Raises `DatabaseUnavailable` when the connection is lost (nothing
    committed is lost; run it again). Uses one connection for the whole run.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.monotonic()
    primary = keyring.primary_id
    report = RotationReport(primary=primary)
    skip: list[uuid.UUID] = []
    params: dict[str, Any] = {
        "primary": primary,
        "new_key": keyring.primary.get_secret_value(),
        "opts": PGP_OPTIONS,
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
        "actor": actor,
        "batch": batch_size,
        "skip": skip,
    }

    def take(failed: Sequence[tuple[uuid.UUID, str, str]]) -> None:
        for row_id, instance_id, reason in failed:
            skip.append(row_id)
            report.failed.append((instance_id, reason))

    with (
        translate_errors("rotate encryption keys", url=db.url),
        db.engine.connect() as conn,
    ):
        with conn.begin():
            report.before = key_counts(conn, keyring)
        after: uuid.UUID | None = None
        waiting_since: float | None = None
        last_pending: int | None = None
        delay = 0.05
        while True:
            batch = _rotate_batch(conn, params, after, actor)
            if batch.last_id is not None:
                report.batches += batch.committed
                report.rotated += batch.rotated
                take(batch.failed)
                after = batch.last_id
                waiting_since, last_pending, delay = None, None, 0.05
                if on_batch is not None:
                    on_batch(batch.rotated)
                continue
            with conn.begin():
                pending = int(conn.execute(_PENDING_COUNT, params).scalar_one())
            if pending == 0:
                break
            if after is not None:  # end of the id order: go round again for skipped rows
                after = None
                continue
            # Rows remain but all are locked by other transactions (another rotation run,
            # a refresh, a dying connection): wait while someone makes progress.
            now = time.monotonic()
            if waiting_since is None or (last_pending is not None and pending < last_pending):
                waiting_since = now
            last_pending = pending
            if now - waiting_since >= lock_wait:
                take(_give_up_on_locked(conn, params, actor))
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    upgraded, upgrade_failed = upgrade_shapes(
        db, keyring, actor=actor, skip=list(skip), lock_wait=lock_wait
    )
    report.upgraded = upgraded
    report.failed.extend(upgrade_failed)
    with (
        translate_errors("count credentials per key id", url=db.url),
        db.engine.connect() as conn,
        conn.begin(),
    ):
        report.after = key_counts(conn, keyring)
    verify_started = time.monotonic()
    report.verified, report.problems = verify_keys(db, keyring)
    report.verify_seconds = time.monotonic() - verify_started
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------------------
# Credentials shape upgrade
# --------------------------------------------------------------------------------------

#: (upgrade) the row could not be decrypted through the vault to be upgraded.
UPGRADE_FAILED = "upgrade_failed"

_OLD_SHAPE_ROWS = sa.text(
    """
    SELECT id, instance_id FROM integration_instances
     WHERE credentials IS NOT NULL
       AND coalesce(credentials->>'v', '1') <> CAST(:v AS text)
       AND id <> ALL (CAST(:skip AS uuid[]))
       AND (CAST(:after AS uuid) IS NULL OR id > CAST(:after AS uuid))
     ORDER BY id
     LIMIT CAST(:batch AS integer)
    """
)

# Lock one old-shape row unless someone holds it (a refresh in progress, another run):
# an OAuth refresh that claimed its lease first writes its new token, and only then
# is the row upgraded.
_LOCK_OLD = sa.text(
    f"""
    SELECT credentials_version, {_INTEGRATION_ID},
           coalesce(refresh_lease_until >= now(), false) AS leased
      FROM integration_instances
     WHERE id = CAST(:id AS uuid)
       AND credentials IS NOT NULL
       AND coalesce(credentials->>'v', '1') <> CAST(:v AS text)
       FOR UPDATE SKIP LOCKED
    """
)
_STILL_OLD = sa.text(
    "SELECT 1 FROM integration_instances WHERE id = CAST(:id AS uuid) "
    "AND credentials IS NOT NULL AND coalesce(credentials->>'v', '1') <> CAST(:v AS text)"
)


def upgrade_shapes(
    db: Database,
    keyring: Keyring,
    *,
    actor: str,
    skip: Sequence[uuid.UUID] = (),
    batch_size: int = 500,
    lock_wait: float = 60.0,
) -> tuple[int, list[tuple[str, str]]]:
    """Rewrite every row below envelope version `ENVELOPE_VERSION` in the spec shape.

    Each row, in its own short transaction: lock it (rows locked by others or under a
    refresh lease are retried later), decrypt it through the vault (audited, purpose
    ``keys.upgrade``; converted to the specification's shape on the way), store it again
    with a compare-and-swap on ``credentials_version`` and audit ``credentials.upgrade``.
    Rows in ``skip`` (those key rotation failed) are left alone. Returns the number of
    rows upgraded and ``(instance_id, reason)`` of the rows that could not be: decryption
    failures (``upgrade_failed``) and rows still held by others after ``lock_wait``
    seconds without progress (``locked``). Nothing is lost: a row that fails keeps its
    stored credentials, which stay readable.
    """
    upgraded = 0
    failed: list[tuple[str, str]] = []
    done: list[uuid.UUID] = list(skip)
    waiting_since: float | None = None
    delay = 0.05
    while True:
        pending: list[tuple[uuid.UUID, str]] = []
        after: uuid.UUID | None = None
        progress = False
        while True:
            with db.transaction("list credentials to upgrade") as session:
                rows = list(
                    session.execute(
                        _OLD_SHAPE_ROWS,
                        {
                            "v": str(ENVELOPE_VERSION),
                            "skip": done,
                            "after": after,
                            "batch": batch_size,
                        },
                    )
                )
            if not rows:
                break
            after = rows[-1].id
            for row in rows:
                outcome = _upgrade_one(db, keyring, row.id, row.instance_id, actor)
                if outcome == "upgraded":
                    upgraded += 1
                    progress = True
                    done.append(row.id)
                elif outcome == "gone":
                    progress = True
                    done.append(row.id)
                elif outcome == "busy":
                    pending.append((row.id, row.instance_id))
                else:
                    failed.append((row.instance_id, UPGRADE_FAILED))
                    done.append(row.id)
        if not pending:
            return upgraded, failed
        now = time.monotonic()
        if waiting_since is None or progress:
            waiting_since = now
        if now - waiting_since >= lock_wait:
            failed.extend((instance_id, LOCKED) for _, instance_id in pending)
            return upgraded, failed
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _upgrade_one(
    db: Database, keyring: Keyring, row_id: uuid.UUID, instance_id: str, actor: str
) -> str:
    """Upgrade one row: ``upgraded``, ``gone`` (done by someone else), ``busy`` or ``failed``."""
    v = str(ENVELOPE_VERSION)
    with db.transaction(f"upgrade the credentials of '{instance_id}'") as session:
        locked = session.execute(_LOCK_OLD, {"id": row_id, "v": v}).first()
        if locked is None:
            still_old = session.execute(_STILL_OLD, {"id": row_id, "v": v}).first()
            return "busy" if still_old is not None else "gone"
        if locked.leased:
            return "busy"
        try:
            creds = vault.fetch_credentials(
                session, keyring, instance_id, actor=actor, purpose="keys.upgrade"
            )
        except CredentialsError:
            return "failed"  # audited by the vault; the row is left as it is
        version = vault.store_credentials(
            session,
            keyring,
            instance_id,
            creds.reveal(),
            expected_version=int(locked.credentials_version),
        )
        if version is None:
            return "gone"  # cannot happen under the row lock; someone else wrote v2
        audit.record(
            session,
            action=AuditAction.CREDENTIALS_UPGRADE,
            actor=actor,
            instance_id=instance_id,
            integration_id=locked.integration_id,
            details={"to_version": ENVELOPE_VERSION, "credentials_version": version},
        )
    return "upgraded"


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def verify_keys(db: Database, keyring: Keyring) -> tuple[int, list[tuple[str, str]]]:
    """Check that every stored credential decrypts under its key id and is bound to its row.

    Returns the number of rows that are fine and ``(instance_id, reason)`` for the others
    (reasons as for rotation, plus ``key_id_mismatch``: the ``key_id`` column differs from
    the envelope's key id). Decrypts in the database, in batches in id order, one short
    read-only transaction each; nothing secret leaves the database.
    """
    params: dict[str, Any] = {
        "kids": keyring.ids,
        "keys": [key.get_secret_value() for _, key in keyring],
        "batch": _VERIFY_BATCH,
    }
    ok = 0
    problems: list[tuple[str, str]] = []
    after: uuid.UUID | None = None
    with translate_errors("verify stored credentials", url=db.url), db.engine.connect() as conn:
        while True:
            fine, last_id, found = _verify_batch(conn, params, after)
            if last_id is None:
                break
            ok += fine
            problems.extend(found)
            after = last_id
    return ok, problems


_VERIFY_IDS = sa.text(
    "SELECT id, instance_id FROM integration_instances WHERE credentials IS NOT NULL "
    "AND (CAST(:after AS uuid) IS NULL OR id > CAST(:after AS uuid)) "
    "ORDER BY id LIMIT CAST(:batch AS integer)"
)


def _verify_batch(
    conn: Connection, params: dict[str, Any], after: uuid.UUID | None
) -> tuple[int, uuid.UUID | None, list[tuple[str, str]]]:
    """Verify the batch after ``after``: (rows fine, last id or None when done, problems)."""
    statement = _VERIFY_FIRST if after is None else _VERIFY_NEXT
    try:
        with conn.begin():
            row = conn.execute(statement, {**params, "after": after}).one()
        found = list(zip(row.problem_instances, row.problem_reasons, strict=True))
        return int(row.ok), row.last_id, found
    except sa_exc.DBAPIError as exc:
        if not _is_data_error(exc):
            raise
    # A ciphertext that is not base64 or a plaintext that is not JSON failed the batch:
    # check it row by row.
    with conn.begin():
        candidates = list(conn.execute(_VERIFY_IDS, {**params, "after": after}))
    ok = 0
    found = []
    for candidate in candidates:
        try:
            with conn.begin():
                one = conn.execute(_VERIFY_ONE, {**params, "only": candidate.id}).one_or_none()
        except sa_exc.DBAPIError as exc:
            if not _is_data_error(exc):
                raise
            found.append((candidate.instance_id, _data_error_reason(exc)))
            continue
        if one is None:  # deleted meanwhile
            continue
        if one.reason is None:
            ok += 1
        else:
            found.append((one.instance_id, one.reason))
    return ok, (candidates[-1].id if candidates else None), found
