"""The SQL of key re-encryption and verification (see `prefect_integrations.store.rekey`).

Keys arrive only as bind-parameter arrays (``:kids``, ``:keys``), as in `vault`. The
rotate statement claims, decrypts, checks, re-encrypts and audits one batch in one round
trip; its audit rows come from `audit.insert_rows`. Each batch statement comes in two
forms: the plain one decrypts with ``pgp_sym_decrypt``, which fails the whole statement
on a wrong key or corrupt data, and the ``_SAFE`` one with ``integration_try_decrypt``,
which yields NULL instead but opens a subtransaction per row (its EXCEPTION block), a
cost every row would pay for the rare row that fails. The caller runs the plain form and,
when one row's data failed it (`is_data_error`), the batch again in the safe form, then
row by row. The reasons a row fails are the constants below; `data_error_reason` names
the reason of a statement that failed on one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from prefect_integrations.models import integration_id_of
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.vault import CANONICAL_PLAINTEXT

__all__ = [
    "BINDING_MISMATCH",
    "COUNTS",
    "KEY_ID_MISMATCH",
    "LOCKED",
    "LOCK_OLD",
    "MALFORMED",
    "NO_KEY_ID",
    "OLD_SHAPE_ROWS",
    "PENDING_AFTER",
    "PENDING_COUNT",
    "PENDING_ROWS",
    "PGCRYPTO_SQLSTATE",
    "RETRY_SQLSTATES",
    "ROTATE_FIRST",
    "ROTATE_FIRST_SAFE",
    "ROTATE_NEXT",
    "ROTATE_NEXT_SAFE",
    "ROTATE_ONE",
    "STILL_OLD",
    "UNDECRYPTABLE",
    "UNKNOWN_KEY_ID",
    "UPGRADE_FAILED",
    "VERIFY_FIRST",
    "VERIFY_FIRST_SAFE",
    "VERIFY_IDS",
    "VERIFY_NEXT",
    "VERIFY_NEXT_SAFE",
    "VERIFY_ONE",
    "data_error_reason",
    "is_data_error",
    "keyed_transaction",
    "sqlstate",
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
#: (upgrade) the row could not be decrypted through the vault to be upgraded.
UPGRADE_FAILED = "upgrade_failed"

#: Transient failures after which a batch is simply retried.
RETRY_SQLSTATES = frozenset({"40P01", "40001", "55P03"})  # deadlock, serialization, lock
#: pgcrypto's errors ("Wrong key or corrupt data", "Not text data", ...): external
#: routine invocation exception.
PGCRYPTO_SQLSTATE = "39000"

# Each row passes through two fenced (``OFFSET 0``) subqueries, so that every expression
# below is computed once per row:
#   e  the envelope, detoasted once: reading its key id and ciphertext and writing it back
#      then do not fetch it three times. ``|| '{}'`` returns the detoasted envelope itself
#      (jsonb_concat with an empty object returns its other operand, an object, without
#      rebuilding it), which ``- ''`` would rebuild key by key;
#   b  the envelope's key id, whether the keyring holds it, and the plaintext decrypted
#      with that key, looked up in the bind-parameter arrays as `vault` does (NULL for an
#      unknown key id: the decrypt functions are STRICT). A wrong key or corrupt data fails
#      the plain form of the statement and yields NULL in the safe one; a ciphertext that
#      is not base64 makes decode() fail either: the caller then redoes that batch in the
#      safe form, then row by row to single the row out (see `rekey._isolate`).
_DETOASTED = "|| '{}'"
_DECRYPT = "pgp_sym_decrypt"
_TRY_DECRYPT = "integration_try_decrypt"
_DECRYPTED = """
       e.envelope->>'kid' AS kid,
       array_position(CAST(:kids AS text[]), e.envelope->>'kid') IS NOT NULL AS key_known,
       {decrypt}(
         decode(e.envelope->>'ct', 'base64'),
         (CAST(:keys AS text[]))[array_position(CAST(:kids AS text[]), e.envelope->>'kid')]
       ) AS pt
"""

# `vault.fetch_credentials` accepts a plaintext that is a JSON object whose
# ``instance_id`` is the row's and whose ``credentials`` is an object. `vault` writes it in
# a canonical form (`vault.CANONICAL_PLAINTEXT`), checked without parsing; any other
# plaintext is parsed (jsonb) and checked.
_CANONICAL = CANONICAL_PLAINTEXT.format(pt="b.pt", iid="b.instance_id")
_PARSED = f"""
  WHEN jsonb_typeof(CAST(b.pt AS jsonb)) <> 'object'
       OR jsonb_typeof(CAST(b.pt AS jsonb) -> 'credentials') IS DISTINCT FROM 'object'
    THEN '{MALFORMED}'
  WHEN (CAST(b.pt AS jsonb) ->> 'instance_id') IS DISTINCT FROM b.instance_id
    THEN '{BINDING_MISMATCH}'
"""

# Why a decrypted row cannot be used, or NULL. Rotation re-encrypts the plaintext byte
# for byte, so a canonical plaintext needs no JSON validation there; verification also
# parses it as reads do (``jsonb``: the plain ``json`` type accepts what reads refuse, a
# lone surrogate escape or ``\u0000``; a plaintext jsonb refuses fails the cast and the
# statement, and is singled out row by row as `MALFORMED`).
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
       WHEN {_CANONICAL} AND jsonb_typeof(CAST(b.pt AS jsonb)) = 'object' THEN {_KEY_ID_CHECK}
       {_PARSED}
       ELSE {_KEY_ID_CHECK}
  END
"""

# The audit rows of a batch: one for the batch (rows rotated, from which key ids, to which,
# rows failed; ``failure`` when none could be rotated), one per failed row.
_ROTATE_AUDIT = audit.insert_rows(
    audit.select_row(
        actor="CAST(:actor AS text)",
        outcome="CASE WHEN count(*) = 0 THEN 'failure' ELSE 'success' END",
        details="""jsonb_build_object(
                   'count', count(*),
                   'from', coalesce(jsonb_agg(DISTINCT upd.kid ORDER BY upd.kid), '[]'),
                   'to', CAST(:primary AS text),
                   'failed', (SELECT count(*) FROM fail WHERE reason IS NOT NULL))""",
        rest="FROM upd HAVING EXISTS (SELECT 1 FROM batch)",
    ),
    audit.select_row(
        actor="CAST(:actor AS text)",
        instance_id="f.instance_id",
        integration_id="f.integration_id",
        outcome="'failure'",
        details="jsonb_build_object('reason', f.reason, 'key_id', f.kid, "
        "'to', CAST(:primary AS text))",
        rest="FROM fail f WHERE f.reason IS NOT NULL",
    ),
)

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
  {_ROTATE_AUDIT}
)
SELECT (SELECT count(*) FROM upd) AS rotated,
       (SELECT (array_agg(id ORDER BY id DESC))[1] FROM batch) AS last_id,
       coalesce(array_agg(f.id ORDER BY f.id), '{{}}') AS failed_ids,
       coalesce(array_agg(f.instance_id ORDER BY f.id), '{{}}') AS failed_instances,
       coalesce(array_agg(f.reason ORDER BY f.id), '{{}}') AS failed_reasons
  FROM fail f
 WHERE f.reason IS NOT NULL
"""


def _rotate(where: str, decrypt: str) -> sa.TextClause:
    sql = _ROTATE_TEMPLATE.replace("{where}", where).replace("{decrypt}", decrypt)
    return audit.bind_action(sa.text(sql), AuditAction.KEYS_ROTATE)


_AFTER = "AND i.id > CAST(:after AS uuid)"
_ONLY = "AND i.id = CAST(:only AS uuid)"

# First pass from the start of the id order; later batches continue after the last id
# seen (keyset); the isolation of a poison row works on one id.
#: Rotate the first batch in id order (fails on a wrong key or corrupt data).
ROTATE_FIRST = _rotate("", _DECRYPT)
#: Rotate the batch after ``:after`` (keyset; fails on a wrong key or corrupt data).
ROTATE_NEXT = _rotate(_AFTER, _DECRYPT)
#: `ROTATE_FIRST` with such rows failed instead (one subtransaction per row).
ROTATE_FIRST_SAFE = _rotate("", _TRY_DECRYPT)
#: `ROTATE_NEXT` with such rows failed instead (one subtransaction per row).
ROTATE_NEXT_SAFE = _rotate(_AFTER, _TRY_DECRYPT)
#: Rotate the one row ``:only`` (isolating a row that fails the whole batch).
ROTATE_ONE = _rotate(_ONLY, _TRY_DECRYPT)

_PENDING_WHERE = """
   WHERE key_id IS DISTINCT FROM CAST(:primary AS text)
     AND credentials IS NOT NULL
     AND id <> ALL (CAST(:skip AS uuid[]))
"""
_INTEGRATION_ID = integration_id_of("integration_instances")
#: How many rows are still to rotate (not under ``:primary``, not in ``:skip``).
PENDING_COUNT = sa.text(f"SELECT count(*) FROM integration_instances {_PENDING_WHERE}")
#: The first ``:batch`` rows still to rotate, in id order.
PENDING_ROWS = sa.text(
    f"SELECT id, instance_id, {_INTEGRATION_ID}, credentials->>'kid' AS kid "
    f"FROM integration_instances {_PENDING_WHERE} ORDER BY id LIMIT CAST(:batch AS integer)"
)
#: The next ``:batch`` rows still to rotate after ``:after``.
PENDING_AFTER = sa.text(
    f"SELECT id, instance_id, {_INTEGRATION_ID}, credentials->>'kid' AS kid "
    f"FROM integration_instances {_PENDING_WHERE} AND id > CAST(:after AS uuid) "
    "ORDER BY id LIMIT CAST(:batch AS integer)"
)

#: Rows with credentials per key id (`NO_KEY_ID` for none).
COUNTS = sa.text(
    f"""
    SELECT coalesce(key_id, '{NO_KEY_ID}') AS kid, count(*) AS n
      FROM integration_instances
     WHERE credentials IS NOT NULL
     GROUP BY 1
     ORDER BY 1
    """
)

# Trying the keyring on stored credentials (a worker's settings check): per key id in use,
# whether the keyring holds it and whether its key decrypts any of up to 3 rows under it.
# A ciphertext that is not base64 is tried as NULL (no decrypt) instead of failing the
# statement; rows without a key id are the instances' own problem, not the keyring's.
_PROBE_DECRYPT = r"""
integration_try_decrypt(
  CASE WHEN e.ct ~ '^[A-Za-z0-9+/=\s]*$' THEN decode(e.ct, 'base64') END,
  (CAST(:keys AS text[]))[array_position(CAST(:kids AS text[]), e.key_id)]
)
"""
_PROBE_RESULT = f"""
SELECT e.key_id AS kid,
       array_position(CAST(:kids AS text[]), e.key_id) IS NOT NULL AS key_known,
       bool_or({_PROBE_DECRYPT} IS NOT NULL) AS decrypts
"""
#: Every key id in use: the distinct ids walked on the key id index (one index probe per
#: id, not a scan of the table), then up to 3 rows of each.
PROBE_KEYS = sa.text(
    f"""
WITH RECURSIVE ids AS (
  (SELECT key_id FROM integration_instances
    WHERE key_id IS NOT NULL ORDER BY key_id LIMIT 1)
  UNION ALL
  SELECT (SELECT i.key_id FROM integration_instances i
           WHERE i.key_id > ids.key_id ORDER BY i.key_id LIMIT 1)
    FROM ids WHERE ids.key_id IS NOT NULL
)
{_PROBE_RESULT}
  FROM (SELECT key_id FROM ids WHERE key_id IS NOT NULL) ids
  CROSS JOIN LATERAL (SELECT i.key_id, i.credentials ->> 'ct' AS ct
                        FROM integration_instances i
                       WHERE i.key_id = ids.key_id AND i.credentials IS NOT NULL
                       LIMIT 3) e
 GROUP BY e.key_id
"""
)
#: The key ids of some instances (``:ids``) or integrations (``:integrations``) only.
PROBE_KEYS_OF = sa.text(
    f"""
{_PROBE_RESULT}
  FROM (SELECT i.key_id, i.credentials ->> 'ct' AS ct,
               row_number() OVER (PARTITION BY i.key_id) AS n
          FROM integration_instances i
          JOIN integration_definitions d ON d.id = i.integration_definition_id
         WHERE i.credentials IS NOT NULL AND i.key_id IS NOT NULL
           AND (CAST(:ids AS text[]) IS NULL OR i.instance_id = ANY(CAST(:ids AS text[])))
           AND (CAST(:integrations AS text[]) IS NULL
                OR d.integration_id = ANY(CAST(:integrations AS text[])))) e
 WHERE e.n <= 3
 GROUP BY e.key_id
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


def _verify(template: str, where: str, decrypt: str) -> sa.TextClause:
    return sa.text(template.replace("{where}", where).replace("{decrypt}", decrypt))


#: Verify the first batch in id order; `VERIFY_NEXT` the batch after ``:after``. Both
#: fail on a wrong key or corrupt data; the ``_SAFE`` forms report such rows instead.
VERIFY_FIRST = _verify(_VERIFY_TEMPLATE, "", _DECRYPT)
VERIFY_NEXT = _verify(_VERIFY_TEMPLATE, _AFTER, _DECRYPT)
VERIFY_FIRST_SAFE = _verify(_VERIFY_TEMPLATE, "", _TRY_DECRYPT)
VERIFY_NEXT_SAFE = _verify(_VERIFY_TEMPLATE, _AFTER, _TRY_DECRYPT)
#: Verify the one row ``:only`` (isolating a row that fails the whole batch).
VERIFY_ONE = _verify(_VERIFY_ROWS, _ONLY, _TRY_DECRYPT)


# --------------------------------------------------------------------------------------
# Credentials shape upgrade
# --------------------------------------------------------------------------------------

#: The next rows below envelope version ``:v`` (after ``:after``; ``:skip`` left out).
OLD_SHAPE_ROWS = sa.text(
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

#: Lock one old-shape row unless someone holds it (a refresh in progress, another run):
#: an OAuth refresh that claimed its lease first writes its new token, and only then
#: is the row upgraded.
LOCK_OLD = sa.text(
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
#: Whether the row ``:id`` is still below envelope version ``:v``.
STILL_OLD = sa.text(
    "SELECT 1 FROM integration_instances WHERE id = CAST(:id AS uuid) "
    "AND credentials IS NOT NULL AND coalesce(credentials->>'v', '1') <> CAST(:v AS text)"
)


# --------------------------------------------------------------------------------------
# Verification row by row, and statements that failed on one row
# --------------------------------------------------------------------------------------

#: The next rows with credentials (after ``:after``), to verify one by one.
VERIFY_IDS = sa.text(
    "SELECT id, instance_id FROM integration_instances WHERE credentials IS NOT NULL "
    "AND (CAST(:after AS uuid) IS NULL OR id > CAST(:after AS uuid)) "
    "ORDER BY id LIMIT CAST(:batch AS integer)"
)


def sqlstate(exc: sa_exc.DBAPIError) -> str:
    """The SQLSTATE of a failed statement ('' when the driver gave none)."""
    return str(getattr(exc.orig, "sqlstate", "") or "")


def is_data_error(exc: sa_exc.DBAPIError) -> bool:
    """True when one row's data failed the statement.

    SQLSTATE class 22 (a ciphertext that is not base64, a plaintext that is not JSON or
    not UTF-8), or pgcrypto's error of ``pgp_sym_decrypt`` on a wrong key or corrupt
    data (`PGCRYPTO_SQLSTATE`).
    """
    state = sqlstate(exc)
    return state.startswith("22") or state == PGCRYPTO_SQLSTATE


def data_error_reason(exc: sa_exc.DBAPIError) -> str:
    """The failure reason of a row whose data failed the statement (see `is_data_error`)."""
    # 22023: decode() refused the base64; 39000: wrong key or corrupt data; otherwise
    # (22P02) the plaintext is not JSON
    return UNDECRYPTABLE if sqlstate(exc) in {"22023", PGCRYPTO_SQLSTATE} else MALFORMED


# A failing statement's bind values are logged unless this is 0, and any role may set it;
# these statements carry the keyring and fail on purpose on a wrong key or corrupt data.
_QUIET_ERRORS = sa.text("SET LOCAL log_parameter_max_length_on_error = 0")


@contextmanager
def keyed_transaction(conn: Connection) -> Iterator[None]:
    """A transaction on ``conn`` whose failing statements log no bind values (keys)."""
    with conn.begin():
        conn.execute(_QUIET_ERRORS)
        yield
