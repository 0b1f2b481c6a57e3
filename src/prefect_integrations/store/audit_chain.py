"""The audit log's chains: the SQL that appends a row, and the same hash in Python.

The log is `CHAINS` independent hash chains. The append trigger gives each audited
transaction one chain for its lifetime: the first free one (``FOR UPDATE SKIP LOCKED``,
starting at an offset taken from the backend's pid so writers spread) or, when every
chain is busy, its own by pid, waiting for it. The chain row of
``integration_audit_chains`` stays locked until commit, so a chain's rows commit in
``seq`` order with no gap, while transactions on other chains append at the same time.
Each row is numbered from a sequence (gaps are allowed: a rolled back row leaves one),
stamped, and linked to its chain's previous row::

    hash = sha256(prev_hash || utf8(jsonb_build_array(2, id, chain, seq, occurred_at,
                  actor, db_role, action, instance_id, integration_id, outcome,
                  details)::text))

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
    "EXPECTED_FUNCTIONS",
    "EXPECTED_TRIGGERS",
    "ExpectedFunction",
    "ExpectedTrigger",
    "function_bodies",
    "functions_sql",
    "json_string",
    "row_hash",
    "timestamp_text",
]

#: How many chains the migration creates (at least the writers expected at once).
CHAINS = 32
#: The transaction-local setting naming the chain a transaction appends to.
CHAIN_SETTING = "prefect_integrations.audit_chain"

_HASH_BODY = """
  SELECT sha256(coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
      2, r.id, r.chain, r.seq,
      to_char(r.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      r.actor, r.db_role, r.action, r.instance_id, r.integration_id, r.outcome, r.details
    )::text, 'UTF8'))
"""

# Runs as the writer, so db_role is the writer's role; the rest runs as the owner.
_APPEND_BODY = """
BEGIN
  NEW.db_role := current_user;
  NEW := {schema}.integration_audit_link(NEW);
  RETURN NEW;
END
"""

# SECURITY DEFINER: roles need no privilege on the chains or the id sequence, so they
# cannot move a chain head or take ids; only this function does.
_LINK_BODY = """
DECLARE
  held text := current_setting('{setting}', true);
  c smallint;
  s bigint;
  h bytea;
BEGIN
  IF coalesce(held, '') <> '' THEN
    SELECT chain, seq, head INTO c, s, h FROM integration_audit_chains
     WHERE chain = held::smallint FOR UPDATE;
  END IF;
  IF c IS NULL THEN
    SELECT chain, seq, head INTO c, s, h FROM integration_audit_chains
     ORDER BY chain < pg_backend_pid() % {chains}, chain
       FOR UPDATE SKIP LOCKED LIMIT 1;
  END IF;
  IF c IS NULL THEN
    SELECT chain, seq, head INTO c, s, h FROM integration_audit_chains
     WHERE chain = pg_backend_pid() % {chains} FOR UPDATE;
  END IF;
  IF c IS NULL THEN
    RAISE EXCEPTION 'integration_audit_chains has no chain to append to';
  END IF;
  PERFORM set_config('{setting}', c::text, true);
  r.id := nextval('integration_audit_log_id_seq');
  r.occurred_at := clock_timestamp();
  r.version := 2;
  r.chain := c;
  r.seq := s + 1;
  r.prev_hash := h;
  r.hash := integration_audit_hash(h, r);
  UPDATE integration_audit_chains SET seq = r.seq, head = r.hash WHERE chain = c;
  RETURN r;
END
"""

_REFUSE_BODY = """
BEGIN
  RAISE EXCEPTION 'integration_audit_log is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
"""


@dataclass(frozen=True, slots=True)
class ExpectedFunction:
    """A function the log relies on: its signature, body and whether it runs as owner."""

    signature: str
    body: str
    definer: bool = False


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
    ExpectedFunction("integration_audit_link(integration_audit_log)", _LINK_BODY, definer=True),
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
    values = {"schema": _quote_ident(schema), "chains": CHAINS, "setting": CHAIN_SETTING}
    return {f.signature: f.body.format(**values) for f in EXPECTED_FUNCTIONS}


def functions_sql(schema: str) -> str:
    """``CREATE OR REPLACE`` of the functions and the append trigger's (for a migration)."""
    bodies = function_bodies(schema)
    path = f"pg_catalog, {_quote_ident(schema)}, pg_temp"
    statements = []
    for function in EXPECTED_FUNCTIONS:
        name, _, args = function.signature.partition("(")
        returns = {
            "integration_audit_hash": "bytea LANGUAGE sql STABLE",
            "integration_audit_link": (
                f"integration_audit_log LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path}"
            ),
        }.get(name, "trigger LANGUAGE plpgsql")
        params = {
            "integration_audit_hash": "prev bytea, r integration_audit_log",
            "integration_audit_link": "r integration_audit_log",
        }.get(name, args.rstrip(")"))
        body = bodies[function.signature]
        statements.append(
            f"CREATE OR REPLACE FUNCTION {name}({params}) RETURNS {returns} AS $fn${body}$fn$;"
        )
    return "\n".join(statements)


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
