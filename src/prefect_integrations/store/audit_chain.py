"""The audit log's chains: the SQL that appends a row, and the same hash in Python.

The log is `CHAINS` independent hash chains. The append trigger gives each audited
transaction one chain for its lifetime: the first free one, trying transaction-level
advisory locks without waiting (``pg_try_advisory_xact_lock``) from an offset taken from
the backend's pid so writers spread, or, when every chain is busy, its own by pid,
waiting for it. The lock is held until commit, so a chain's rows commit in ``seq`` order
with no gap, while transactions on other chains append at the same time; the chain's
last row (found through the unique ``(chain, seq)`` index) is its head. Each row is
numbered from a sequence (gaps are allowed: a rolled back row leaves one), stamped, and
linked to its chain's previous row::

    hash = sha256(prev_hash || utf8(jsonb_build_array(2, id, chain, seq, occurred_at,
                  actor, db_role, action, instance_id, integration_id, outcome,
                  details)::text))

The trigger reads a chain's last row with the statement's snapshot: under READ COMMITTED
(the package's isolation) it sees every earlier commit on the chain; a REPEATABLE READ
or SERIALIZABLE transaction whose snapshot is older than another commit on the chain
fails on the unique ``(chain, seq)`` index instead of forking the chain (retry it).

Rows written before the chains (version 1) are chain 0's history, hashed without the
version, chain and seq. `row_hash` computes both versions in Python from the row's
values, so `audit_verify` never relies on a function of the database.

The function bodies are kept here, and created by the migration that introduced the
chains: `audit_verify` compares the database's definitions with them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "CHAINS",
    "CHAIN_SETTING",
    "CUT_ACTION",
    "CUT_INDEX",
    "EXPECTED_FUNCTIONS",
    "EXPECTED_TRIGGERS",
    "LOCK_CLASS",
    "ExpectedFunction",
    "ExpectedTrigger",
    "function_bodies",
    "functions_sql",
    "json_string",
    "row_hash",
    "timestamp_text",
]

#: How many chains the append trigger uses (at least the writers expected at once).
CHAINS = 32
#: The transaction-local setting naming the chain a transaction appends to.
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

# For whoever wants the formula in SQL; the trigger computes it inline (no function call).
_HASH_BODY = f"""
  SELECT {_HASH_EXPRESSION}
"""

# Runs as the writer: db_role is the writer's role; tables are named with their schema,
# so a writer's search_path cannot point the trigger at other tables.
_APPEND_BODY = """
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
# archive`, covers its seq: the deletion is then part of the chain. Everything else is
# refused (the partial index on the cuts keeps the check one index probe per row).
_REFUSE_BODY = """
BEGIN
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


@dataclass(frozen=True, slots=True)
class ExpectedFunction:
    """A function the log relies on: its signature and body (it runs as its caller)."""

    signature: str
    body: str


@dataclass(frozen=True, slots=True)
class ExpectedTrigger:
    """A trigger on the log: name, ``pg_trigger.tgtype`` bits and the function it runs."""

    name: str
    tgtype: int
    function: str


#: The functions, by name (their bodies are templates of `function_bodies`).
EXPECTED_FUNCTIONS = (
    ExpectedFunction("integration_audit_hash(bytea, integration_audit_log)", _HASH_BODY),
    ExpectedFunction("integration_audit_append()", _APPEND_BODY),
    ExpectedFunction("integration_audit_refuse()", _REFUSE_BODY),
)
# tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate.
EXPECTED_TRIGGERS = (
    ExpectedTrigger("integration_audit_append", 1 | 2 | 4, "integration_audit_append"),
    ExpectedTrigger("integration_audit_refuse_change", 1 | 2 | 8 | 16, "integration_audit_refuse"),
    ExpectedTrigger("integration_audit_refuse_truncate", 2 | 32, "integration_audit_refuse"),
)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def function_bodies(schema: str) -> dict[str, str]:
    """Each function's source (``pg_proc.prosrc``) for tables in ``schema``."""
    inline = _HASH_EXPRESSION.replace("prev, ''", "h, ''").replace("r.", "NEW.")
    values = {
        "schema": _quote_ident(schema),
        "chains": CHAINS,
        "setting": CHAIN_SETTING,
        "lock": LOCK_CLASS,
        "hash": inline,
        "cut_action": CUT_ACTION,
    }
    return {f.signature: f.body.format(**values) for f in EXPECTED_FUNCTIONS}


def functions_sql(schema: str) -> str:
    """``CREATE OR REPLACE`` of the log's functions (for a migration)."""
    bodies = function_bodies(schema)
    declarations = {
        "integration_audit_hash(bytea, integration_audit_log)": (
            "integration_audit_hash(prev bytea, r integration_audit_log) "
            "RETURNS bytea LANGUAGE sql STABLE"
        ),
        "integration_audit_append()": "integration_audit_append() RETURNS trigger LANGUAGE plpgsql",
        "integration_audit_refuse()": "integration_audit_refuse() RETURNS trigger LANGUAGE plpgsql",
    }
    return "\n".join(
        f"CREATE OR REPLACE FUNCTION {declarations[signature]} AS $fn${body}$fn$;"
        for signature, body in bodies.items()
    )


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
