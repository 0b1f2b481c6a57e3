"""What the audit log's integrity relies on: its triggers, functions, defaults and grants.

`check_guard` compares the database's catalog with `audit_chain`: each function's
source, that it runs as its caller and changes no setting; each trigger present,
enabled, unconditional, firing on its events and running its function; no other trigger
or rule on the table; the table a plain one without row-level security (policies could
show `verify` other rows than everyone else sees); the defaults that number and stamp
rows; and that no role but the table's owner may write more than a row's content
(INSERT; sealing goes through the sealer function, which runs as the owner). It reads
only the catalog, never calls a function of the log.
"""

from __future__ import annotations

import re
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.models import SEAL_COLUMNS, audit_log
from prefect_integrations.store.audit_chain import (
    APPENDED_COLUMNS,
    EXPECTED_FUNCTIONS,
    EXPECTED_TRIGGERS,
    STAMP_DEFAULTS,
    function_bodies,
)

__all__ = ["GuardKind", "check_guard"]

GuardKind = Literal["table", "trigger", "function"]


_TABLE_SCHEMA = sa.text(
    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = to_regclass(CAST(:t AS text))"
)
_FUNCTION = sa.text(
    "SELECT oid, prosrc, prosecdef, proconfig FROM pg_proc "
    "WHERE oid = to_regprocedure(CAST(:s AS text))"
)
_TRIGGERS = sa.text(
    """
    SELECT t.tgname, t.tgtype, t.tgenabled, t.tgqual IS NOT NULL AS conditional, t.tgfoid
      FROM pg_trigger t
     WHERE t.tgrelid = to_regclass(CAST(:t AS text)) AND NOT t.tgisinternal
     ORDER BY t.tgname
    """
)
_RULES = sa.text(
    "SELECT rulename FROM pg_rules WHERE schemaname = :s AND tablename = :t ORDER BY rulename"
)


def _check_functions(
    session: Session, schema: str, found: list[tuple[GuardKind, str]]
) -> dict[str, int]:
    """Compare each function's source and security with the expected; their oids by name."""
    bodies = function_bodies(schema)
    oids: dict[str, int] = {}
    for function in EXPECTED_FUNCTIONS:
        name = function.signature.partition("(")[0]
        qualified = '"' + schema.replace('"', '""') + '".' + function.signature
        row = session.execute(_FUNCTION, {"s": qualified}).first()
        if row is None:
            found.append(("function", f"{name} is missing"))
            continue
        oids[name] = int(row.oid)
        if row.prosrc != bodies[function.signature]:
            found.append(("function", f"{name} differs from its expected source"))
        if bool(row.prosecdef) != function.definer:
            how = "its owner" if row.prosecdef else "its caller"
            found.append(("function", f"{name} runs as {how}"))
        if tuple(row.proconfig or ()) != function.config:
            found.append(("function", f"{name} changes settings when it runs"))
    return oids


def _check_triggers(
    session: Session, schema: str, oids: dict[str, int], found: list[tuple[GuardKind, str]]
) -> None:
    present = {r.tgname: r for r in session.execute(_TRIGGERS, {"t": audit_log.name})}
    for trigger in EXPECTED_TRIGGERS:
        row = present.pop(trigger.name, None)
        if row is None:
            found.append(("trigger", f"{trigger.name} is missing"))
            continue
        if row.tgenabled not in ("O", "A"):
            found.append(("trigger", f"{trigger.name} is disabled"))
        if row.conditional:
            found.append(("trigger", f"{trigger.name} has a WHEN condition"))
        if int(row.tgtype) != trigger.tgtype:
            found.append(("trigger", f"{trigger.name} fires on other events"))
        if oids.get(trigger.function) != int(row.tgfoid):
            found.append(("trigger", f"{trigger.name} runs another function"))
    for name in sorted(present):
        found.append(("trigger", f"{name} is not one of the log's triggers"))
    for rule in session.execute(_RULES, {"s": schema, "t": audit_log.name}).scalars():
        found.append(("trigger", f"rule {rule} rewrites statements on the log"))


_TABLE = sa.text(
    "SELECT relkind, relrowsecurity, "
    "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies "
    "FROM pg_class c WHERE c.oid = to_regclass(CAST(:t AS text))"
)


def _check_table(session: Session, found: list[tuple[GuardKind, str]]) -> None:
    table = session.execute(_TABLE, {"t": audit_log.name}).first()
    if table is None:
        return
    if table.relkind != "r":
        found.append(("table", f"{audit_log.name} is not a plain table (kind {table.relkind})"))
    if table.relrowsecurity:
        found.append(("table", f"{audit_log.name} has row-level security on"))
    if table.policies:
        found.append(("table", f"{audit_log.name} has {table.policies} row-level policies"))


_DEFAULTS = sa.text(
    """
    SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) AS expression
      FROM pg_attribute a
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = to_regclass(CAST(:t AS text)) AND a.attnum > 0 AND NOT a.attisdropped
    """
)
_SEQUENCE = re.compile(r"""'(?:(?:"[^"]*"|[a-z_][a-z0-9_$]*)\.)?integration_audit_log_id_seq'""")


def _normal(expression: str) -> str:
    """An expression as written or as PostgreSQL prints it, compared without layout."""
    text = _SEQUENCE.sub("'integration_audit_log_id_seq'", expression)
    text = re.sub(r"[\s()\"]", "", text).lower()
    return text.replace("elsenull::bigint", "")


# The sequence the id default draws from: the one owned by the id column (found through
# the catalog, not its name), drawing one id at a time and upward, in every session.
_ID_SEQUENCE = sa.text(
    """
    SELECT s.seqincrement > 0 AND s.seqcache = 1 AND NOT s.seqcycle AS ordered,
           EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_attrdef'::regclass AND d.refobjid = s.seqrelid
                      AND d.objid = (SELECT oid FROM pg_attrdef
                                      WHERE adrelid = to_regclass(CAST(:t AS text))
                                        AND adnum = 1)) AS drawn
      FROM pg_sequence s
     WHERE s.seqrelid = to_regclass(pg_get_serial_sequence(CAST(:t AS text), 'id'))
    """
)


def _check_defaults(session: Session, found: list[tuple[GuardKind, str]]) -> None:
    defaults: dict[str, str | None] = dict(
        session.execute(_DEFAULTS, {"t": audit_log.name}).tuples().all()
    )
    for column, expected in STAMP_DEFAULTS.items():
        actual = defaults.get(column)
        if actual is None or _normal(actual) != _normal(expected.replace("{schema}.", "")):
            found.append(("table", f"the default of {column} is not the expected one"))
    for column in SEAL_COLUMNS:
        if defaults.get(column) is not None:
            found.append(("table", f"{column} has a default"))
    sequence = session.execute(_ID_SEQUENCE, {"t": audit_log.name}).first()
    if sequence is None or not sequence.drawn:
        found.append(("table", "the default of id does not draw from the id column's sequence"))
    elif not sequence.ordered:
        found.append(("table", "the id sequence caches, cycles or counts down"))


# Privileges granted on the table and on its columns to anyone but its owner.
_GRANTS = sa.text(
    """
    SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE CAST(CAST(g.grantee AS regrole) AS text)
           END AS role, g.privilege_type AS privilege, NULL AS column
      FROM pg_class c, aclexplode(c.relacl) g
     WHERE c.oid = to_regclass(CAST(:t AS text)) AND g.grantee <> c.relowner
    UNION ALL
    SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE CAST(CAST(g.grantee AS regrole) AS text)
           END, g.privilege_type, a.attname
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid, aclexplode(a.attacl) g
     WHERE c.oid = to_regclass(CAST(:t AS text)) AND g.grantee <> c.relowner
    """
)
#: What a role other than the owner may be granted: (privilege, columns; None: the table).
_ALLOWED = {"SELECT": None, "INSERT": APPENDED_COLUMNS}


def _check_grants(session: Session, found: list[tuple[GuardKind, str]]) -> None:
    wider: dict[tuple[str, str], list[str]] = {}
    for role, privilege, column in session.execute(_GRANTS, {"t": audit_log.name}).tuples():
        if privilege not in _ALLOWED:
            wider.setdefault((role, privilege), []).append(column or "the table")
            continue
        allowed = _ALLOWED[privilege]
        if allowed is not None and (column is None or column not in allowed):
            wider.setdefault((role, privilege), []).append(column or "every column")
    for (role, privilege), what in sorted(wider.items()):
        found.append(("table", f"{role} may {privilege} {', '.join(sorted(what))}"))


def check_guard(session: Session) -> list[tuple[GuardKind, str]]:
    """Each way the table, triggers and functions differ from the expected, as (kind, detail)."""
    found: list[tuple[GuardKind, str]] = []
    _check_table(session, found)
    schema = session.execute(_TABLE_SCHEMA, {"t": audit_log.name}).scalar()
    if schema is not None:
        _check_defaults(session, found)
        _check_grants(session, found)
        oids = _check_functions(session, str(schema), found)
        _check_triggers(session, str(schema), oids, found)
    return found
