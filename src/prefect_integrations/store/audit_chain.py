"""The audit log's chains: the SQL that stamps and guards rows, and the hash in Python.

Appends do not chain. An appended row is a plain INSERT: the columns' defaults
(`STAMP_DEFAULTS`) number it from a sequence and stamp it (time, database role), and
its chain columns stay empty; roles may write only `APPENDED_COLUMNS` (`grants`). So
audited transactions append in parallel at the cost of an INSERT into any table. The
sealer (`audit_seal`) then chains
the rows in id order, like a transparency log's sequencer: under the chain's
transaction-level advisory lock it reads the chain's last row (its head), computes each
new row's hash in Python and sets ``version``, ``chain``, ``seq``, ``prev_hash`` and
``hash`` in one UPDATE per batch::

    hash = sha256(prev_hash || utf8(jsonb_build_array(2, id, chain, seq, occurred_at,
                  actor, db_role, action, instance_id, integration_id, outcome,
                  details)::text))

The guard function refuses every UPDATE, DELETE and TRUNCATE except two: sealing (an
UPDATE that fills the empty chain columns of a row and changes nothing else) and the
DELETE of rows a later cut of their chain covers (`audit archive`).

The log is `CHAINS` chains. The sealer extends `SEAL_CHAIN`; an archive seals its cut
into the chain it cuts. Rows chained by the append trigger of revisions 0007 and 0008
(`chained_functions_sql`, which took a free chain per transaction) are the other chains'
history, hashed with the same formula. Rows written before the chains (version 1) are
chain 0's history, hashed without the version, chain and seq. `row_hash` computes both
versions in Python from the row's values, so `audit_verify` never relies on a function
of the database.

The function bodies and defaults are kept here, and created by the migrations:
`audit_guard` compares the database's definitions with them.

The module is over 450 lines because it keeps the SQL of the log's functions, as they
are and as earlier revisions created them, beside the Python hash they must agree with.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APPENDED_COLUMNS",
    "CHAINS",
    "CHAIN_SETTING",
    "CUT_ACTION",
    "CUT_INDEX",
    "EXPECTED_FUNCTIONS",
    "EXPECTED_TRIGGERS",
    "LOCK_CLASS",
    "SEAL_CHAIN",
    "SEAL_FUNCTION",
    "SEAL_SEARCH_PATH",
    "STAMP_DEFAULTS",
    "ExpectedFunction",
    "ExpectedTrigger",
    "chained_functions_sql",
    "function_bodies",
    "functions_sql",
    "hash_of",
    "json_string",
    "row_hash",
    "timestamp_text",
]

#: How many chains the log may hold (``chain`` runs from 0 to CHAINS - 1).
CHAINS = 32
#: The chain the sealer extends.
SEAL_CHAIN = 0
#: The transaction-local setting through which the append trigger of revisions 0007 and
#: 0008 (`chained_functions_sql`) let a transaction name its chain.
CHAIN_SETTING = "prefect_integrations.audit_chain"
#: The action of a cut: the row `audit archive` appends to a chain before deleting the
#: chain's rows up to ``details.through_seq`` (`AuditAction.AUDIT_ARCHIVE`).
CUT_ACTION = "audit.archive"
#: The partial index of the cuts, by chain and seq.
CUT_INDEX = "integration_audit_log_cuts_idx"
#: The first key of the chains' advisory locks (the second is the chain): "PIAU".
LOCK_CLASS = 0x5049_4155

# The hash, as a SQL expression of a row ``r`` and the previous hash ``prev``.
_HASH_EXPRESSION = """sha256(coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
      2, r.id, r.chain, r.seq,
      to_char(r.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      r.actor, r.db_role, r.action, r.instance_id, r.integration_id, r.outcome, r.details
    )::text, 'UTF8'))"""

# For whoever wants the formula in SQL (the sealer computes it in Python).
_HASH_BODY = f"""
  SELECT {_HASH_EXPRESSION}
"""

#: The defaults that number and stamp an appended row (roles may not write these columns,
#: `grants`). ``id`` is drawn once the transaction has its id, so a sealer that sees a
#: later row knows this transaction is running (`audit_seal`); CASE evaluates its
#: condition first.
STAMP_DEFAULTS = {
    "id": (
        "CASE WHEN pg_current_xact_id() IS NOT NULL "
        "THEN nextval('{schema}.integration_audit_log_id_seq'::regclass) END"
    ),
    "occurred_at": "clock_timestamp()",
    "db_role": "CURRENT_USER",
}
#: The columns an appended row gives; the others are stamped or sealed.
APPENDED_COLUMNS = ("actor", "action", "instance_id", "integration_id", "outcome", "details")

# The append trigger of revisions 0007 and 0008, which chained each row as it was
# inserted: a transaction took the first free chain (trying transaction-level advisory
# locks from an offset taken from the backend's pid) until commit, read its last row and
# hashed the new one.
_CHAINED_APPEND_BODY = """
DECLARE
  held text := current_setting('{setting}', true);
  start int;
  c int;
  s bigint;
  h bytea;
BEGIN
  IF coalesce(held, '') <> '' THEN
    c := held::int;
    PERFORM pg_advisory_xact_lock({lock}, c);
  ELSE
    start := pg_backend_pid() % {chains};
    FOR i IN 0..{chains} - 1 LOOP
      c := (start + i) % {chains};
      EXIT WHEN pg_try_advisory_xact_lock({lock}, c);
      c := NULL;
    END LOOP;
    IF c IS NULL THEN
      c := start;
      PERFORM pg_advisory_xact_lock({lock}, c);
    END IF;
    PERFORM set_config('{setting}', c::text, true);
  END IF;
  SELECT l.seq, l.hash INTO s, h FROM {schema}.integration_audit_log l
   WHERE l.chain = c ORDER BY l.seq DESC LIMIT 1;
  NEW.db_role := current_user;
  NEW.id := nextval('{schema}.integration_audit_log_id_seq');
  NEW.occurred_at := clock_timestamp();
  NEW.version := 2;
  NEW.chain := c;
  NEW.seq := coalesce(s, 0) + 1;
  NEW.prev_hash := h;
  NEW.hash := {hash};
  RETURN NEW;
END
"""

# A row may be deleted only when a later row of its chain, a cut recorded by `audit
# archive`, covers its seq: the deletion is then part of the chain (the partial index on
# the cuts keeps the check one index probe per row).
_DELETE_UNDER_CUT = """
  IF TG_OP = 'DELETE' AND EXISTS (
    SELECT 1 FROM {schema}.integration_audit_log c
     WHERE c.action = '{cut_action}' AND c.chain = OLD.chain AND c.seq > OLD.seq
       AND jsonb_typeof(c.details -> 'through_seq') = 'number'
       AND (c.details ->> 'through_seq')::numeric >= OLD.seq
  ) THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'integration_audit_log is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
"""

# The guard of revisions 0007 and 0008: only the DELETE of rows under a cut.
_CHAINED_REFUSE_BODY = "\nBEGIN" + _DELETE_UNDER_CUT

# The guard. Sealing is an UPDATE that fills a row's empty chain columns and leaves every
# other column as it was (``details`` to the character, as the hash reads it). Then the
# DELETE of rows under a cut; everything else is refused.
_REFUSE_BODY = (
    """
BEGIN
  IF TG_OP = 'UPDATE'
     AND OLD.version IS NULL AND OLD.chain IS NULL AND OLD.seq IS NULL
     AND OLD.prev_hash IS NULL AND OLD.hash IS NULL
     AND NEW.version IS NOT NULL AND NEW.chain IS NOT NULL AND NEW.seq IS NOT NULL
     AND NEW.hash IS NOT NULL
     AND (NEW.id, NEW.occurred_at, NEW.actor, NEW.db_role, NEW.action, NEW.instance_id,
          NEW.integration_id, NEW.outcome, NEW.details::text)
         IS NOT DISTINCT FROM
         (OLD.id, OLD.occurred_at, OLD.actor, OLD.db_role, OLD.action, OLD.instance_id,
          OLD.integration_id, OLD.outcome, OLD.details::text)
  THEN
    RETURN NEW;
  END IF;"""
    + _DELETE_UNDER_CUT
)


# The sealer (`audit_seal`): runs as the table's owner, so that the roles, which may not
# UPDATE the log, can seal it, and only as the sealer does. It extends SEAL_CHAIN: under
# the chain's lock it reads the chain's last row and the newest id (``upto`` is capped at
# it), waits until every transaction of this database holding a transaction id now
# (prepared ones too; one it cannot place is waited for) has ended (each drew its row
# ids after taking its transaction id, so every row up to ``upto`` is then committed or
# never will be), then hashes the rows not sealed yet in id order after that last row, up
# to ``upto`` and at most ``most`` of them, and fills their chain columns one by one (a
# row changed meanwhile fails the call).
_SEAL_BODY = """
DECLARE
  c constant int := {seal_chain};
  head_id bigint;
  s bigint;
  h bytea;
  xids xid[];
  deadline timestamptz := clock_timestamp() + make_interval(secs => wait);
  r {schema}.integration_audit_log%ROWTYPE;
BEGIN
  IF upto IS NULL OR most IS NULL OR wait IS NULL OR most < 0 OR wait < 0 THEN
    RAISE EXCEPTION 'integration_audit_seal: upto, most and wait must be given, at least 0'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pg_advisory_xact_lock({lock}, c);
  SELECT l.id, l.seq, l.hash INTO head_id, s, h FROM {schema}.integration_audit_log l
   WHERE l.chain = c AND l.seq IS NOT NULL ORDER BY l.seq DESC LIMIT 1;
  -- no further than the newest row now: a transaction that takes its id after the read
  -- of the locks below draws its rows' ids above it
  SELECT least(upto, coalesce(max(l.id), 0)) INTO upto FROM {schema}.integration_audit_log l;
  PERFORM pg_catalog.pg_stat_clear_snapshot();  -- backends connected since count too
  SELECT coalesce(array_agg(l.transactionid), '{{}}') INTO xids
    FROM pg_catalog.pg_locks l
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
    LEFT JOIN pg_catalog.pg_prepared_xacts x ON x.transaction = l.transactionid
   WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
     AND l.pid IS DISTINCT FROM pg_backend_pid()
     AND coalesce(a.datname, x.database, current_database()) = current_database();
  WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                 WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                   AND l.granted AND l.transactionid = ANY (xids)) LOOP
    IF clock_timestamp() > deadline THEN
      RAISE EXCEPTION 'integration_audit_seal: transactions that may still append stayed open'
        USING ERRCODE = 'lock_not_available', DETAIL = xids::text;
    END IF;
    PERFORM pg_sleep(0.005);
  END LOOP;
  sealed_rows := 0;
  FOR r IN SELECT * FROM {schema}.integration_audit_log l
            WHERE l.seq IS NULL AND l.chain IS NULL AND l.version IS NULL
              AND l.hash IS NULL AND l.prev_hash IS NULL
              AND l.id > coalesce(head_id, 0) AND l.id <= upto
            ORDER BY l.id LIMIT most LOOP
    s := coalesce(s, 0) + 1;
    r.version := 2;
    r.chain := c;
    r.seq := s;
    r.prev_hash := h;
    h := {seal_hash};
    UPDATE {schema}.integration_audit_log
       SET version = 2, chain = c, seq = s, prev_hash = r.prev_hash, hash = h
     WHERE id = r.id AND seq IS NULL;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'integration_audit_seal: row % changed while it was sealed', r.id
        USING ERRCODE = 'serialization_failure';
    END IF;
    sealed_rows := sealed_rows + 1;
  END LOOP;
  head_seq := coalesce(s, 0);
  head_hash := h;
  RETURN NEXT;
END
"""
#: The sealer's search path: only the catalog (tables and types are named with their schema).
SEAL_SEARCH_PATH = "search_path=pg_catalog, pg_temp"


@dataclass(frozen=True, slots=True)
class ExpectedFunction:
    """A function the log relies on: its signature, body, and settings.

    ``definer``: it runs as its owner (the sealer), with ``config`` as its only settings;
    the others run as their caller, with no settings of their own.
    """

    signature: str
    body: str
    definer: bool = False
    config: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExpectedTrigger:
    """A trigger on the log: name, ``pg_trigger.tgtype`` bits and the function it runs."""

    name: str
    tgtype: int
    function: str


#: The functions, by name (their bodies are templates of `function_bodies`).
#: The sealer's signature (`audit_seal`; the roles may EXECUTE it).
SEAL_FUNCTION = "integration_audit_seal(bigint, integer, double precision)"
EXPECTED_FUNCTIONS = (
    ExpectedFunction("integration_audit_hash(bytea, integration_audit_log)", _HASH_BODY),
    ExpectedFunction("integration_audit_refuse()", _REFUSE_BODY),
    ExpectedFunction(SEAL_FUNCTION, _SEAL_BODY, definer=True, config=(SEAL_SEARCH_PATH,)),
)
# The same functions as revisions 0007 and 0008 created them.
_CHAINED_FUNCTIONS = (
    ExpectedFunction("integration_audit_hash(bytea, integration_audit_log)", _HASH_BODY),
    ExpectedFunction("integration_audit_append()", _CHAINED_APPEND_BODY),
    ExpectedFunction("integration_audit_refuse()", _CHAINED_REFUSE_BODY),
)
# tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate.
EXPECTED_TRIGGERS = (
    ExpectedTrigger("integration_audit_refuse_change", 1 | 2 | 8 | 16, "integration_audit_refuse"),
    ExpectedTrigger("integration_audit_refuse_truncate", 2 | 32, "integration_audit_refuse"),
)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bodies(schema: str, functions: tuple[ExpectedFunction, ...]) -> dict[str, str]:
    inline = _HASH_EXPRESSION.replace("prev, ''", "h, ''").replace("r.", "NEW.")
    values = {
        "schema": _quote_ident(schema),
        "chains": CHAINS,
        "setting": CHAIN_SETTING,
        "lock": LOCK_CLASS,
        "hash": inline,
        "cut_action": CUT_ACTION,
        "seal_chain": SEAL_CHAIN,
        "seal_hash": _HASH_EXPRESSION.replace("prev, ''", "r.prev_hash, ''").replace(
            "sha256(", "pg_catalog.sha256(", 1
        ),
    }
    return {f.signature: f.body.format(**values) for f in functions}


def function_bodies(schema: str, *, chained: bool = False) -> dict[str, str]:
    """Each function's source (``pg_proc.prosrc``) for tables in ``schema``.

    ``chained``: as revisions 0007 and 0008 created them (the chaining append trigger).
    """
    return _bodies(schema, _CHAINED_FUNCTIONS if chained else EXPECTED_FUNCTIONS)


def functions_sql(schema: str) -> str:
    """``CREATE OR REPLACE`` of the log's functions (for a migration)."""
    return _create(function_bodies(schema))


def chained_functions_sql(schema: str) -> str:
    """``CREATE OR REPLACE`` of the functions as revisions 0007 and 0008 created them."""
    return _create(function_bodies(schema, chained=True))


def _create(bodies: dict[str, str]) -> str:
    declarations = {
        "integration_audit_hash(bytea, integration_audit_log)": (
            "integration_audit_hash(prev bytea, r integration_audit_log) "
            "RETURNS bytea LANGUAGE sql STABLE"
        ),
        "integration_audit_append()": "integration_audit_append() RETURNS trigger LANGUAGE plpgsql",
        "integration_audit_refuse()": "integration_audit_refuse() RETURNS trigger LANGUAGE plpgsql",
        SEAL_FUNCTION: (
            "integration_audit_seal(upto bigint, most integer, wait double precision, "
            "OUT sealed_rows bigint, OUT head_seq bigint, OUT head_hash bytea) "
            "RETURNS SETOF record "
            f"LANGUAGE plpgsql SECURITY DEFINER SET {SEAL_SEARCH_PATH.replace('=', ' = ')}"
        ),
    }
    created = [
        f"CREATE OR REPLACE FUNCTION {declarations[signature]} AS $fn${body}$fn$;"
        for signature, body in bodies.items()
    ]
    if SEAL_FUNCTION in bodies:  # functions are anyone's to call unless revoked
        created.append(f"REVOKE ALL ON FUNCTION {SEAL_FUNCTION} FROM PUBLIC;")
    return "\n".join(created)


# --------------------------------------------------------------------------------------
# The hash, in Python
# --------------------------------------------------------------------------------------

# PostgreSQL's escape_json: the two-character escapes, \u00xx for the other controls.
_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x22: '\\"',
    0x5C: "\\\\",
}


def json_string(value: str | None) -> str:
    """``value`` as jsonb's text output writes it (``null`` for NULL)."""
    if value is None:
        return "null"
    return '"' + value.translate(_ESCAPES) + '"'


_TIMESTAMP = re.compile(r"(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?")


def timestamp_text(value: str) -> str:
    """``(occurred_at AT TIME ZONE 'UTC')::text`` (ISO DateStyle) as the hash formats it.

    A value the formula could not have produced (``infinity``, a BC date) comes back
    unchanged, so the row's hash does not match.
    """
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return value
    year, month, day, hour, minute, second, fraction = match.groups()
    micro = (fraction or "").ljust(6, "0")
    return f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro}Z"


def row_hash(
    prev: bytes | None,
    *,
    version: int,
    row_id: int,
    chain: int,
    seq: int,
    occurred_at: str,
    actor: str | None,
    db_role: str | None,
    action: str | None,
    instance_id: str | None,
    integration_id: str | None,
    outcome: str | None,
    details: str | None,
) -> bytes:
    """The hash of a row of ``version`` (1 or 2), from its values.

    ``occurred_at`` is its text in UTC (`timestamp_text` formats it); ``details`` is the
    jsonb's text output. An unknown version hashes to nothing that can match.
    """
    fields = [
        json_string(timestamp_text(occurred_at)),
        json_string(actor),
        json_string(db_role),
        json_string(action),
        json_string(instance_id),
        json_string(integration_id),
        json_string(outcome),
        "null" if details is None else details,
    ]
    if version == 1:
        head = [str(row_id)]
    elif version == 2:
        head = ["2", str(row_id), str(chain), str(seq)]
    else:
        return b""
    text = "[" + ", ".join([*head, *fields]) + "]"
    return hashlib.sha256((prev or b"") + text.encode("utf-8")).digest()


def hash_of(prev: bytes | None, row: Any) -> bytes:
    """`row_hash` of a row read from the log.

    Its attributes are named as the log's columns, ``occurred_at`` is its UTC text and
    ``details`` jsonb's text output.
    """
    return row_hash(
        prev,
        version=row.version,
        row_id=row.id,
        chain=row.chain,
        seq=row.seq,
        occurred_at=row.occurred_at,
        actor=row.actor,
        db_role=row.db_role,
        action=row.action,
        instance_id=row.instance_id,
        integration_id=row.integration_id,
        outcome=row.outcome,
        details=row.details,
    )
