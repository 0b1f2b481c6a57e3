"""`verify`: check the audit log without trusting any function of the database.

Every row's hash is recomputed in Python (`audit_chain.row_hash`) from the row's values,
read in one statement through a server-side cursor in chain order, so memory stays
constant whatever the size of the log. Per chain it checks that ``seq`` runs 1, 2, 3...
with no gap, that each row links to the stored hash of the one before (``prev_hash``),
and that ids grow with ``seq`` (the trigger numbers a chain's rows in order). The last
row of each chain is its head: `VerifyReport.chains` lists them. It also checks that the
triggers the log relies on exist, are enabled and unconditional, that no other trigger
or rule sits on the table, and that the functions have the expected source.

What it cannot see alone: the newest rows of a chain removed (a cut tail), rows added
at the end of a chain by someone who computes their hashes as the trigger would, or a
chain rewritten entirely; only a copy of the heads kept outside the database (a
checkpoint) shows those.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.models import audit_log
from prefect_integrations.store.audit_chain import (
    CHAINS,
    EXPECTED_FUNCTIONS,
    EXPECTED_TRIGGERS,
    function_bodies,
    row_hash,
)

__all__ = ["ChainHead", "Problem", "ProblemKind", "VerifyReport", "verify"]

ProblemKind = Literal["altered", "missing", "reordered", "inserted", "trigger", "function"]

#: Problems kept in a report; past this only their number grows (constant memory).
MAX_PROBLEMS = 10_000
#: Rows fetched from the server-side cursor at a time.
PAGE = 2_000


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the log.

    ``altered``: the row's hash does not match its values, or it does not link to the
    stored hash of the row before it. ``missing``: ``seq`` values absent from a chain
    (``seq`` to ``last_seq``; ``id`` is the row before the gap, ``next_id`` the one after).
    ``reordered``: the row's id is lower than the id of the row before it in its chain.
    ``inserted``: a row with no place in a chain (no chain or seq, a chain that does not
    exist, a seq taken twice). ``trigger``/``function``: what the append and the guard
    rely on is missing or changed.
    """

    kind: ProblemKind
    detail: str
    id: int | None = None
    chain: int | None = None
    seq: int | None = None
    last_seq: int | None = None
    next_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (unset fields left out)."""
        return {
            name: value
            for name in ("kind", "id", "chain", "seq", "last_seq", "next_id", "detail")
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A chain as verified: its last row's seq and hash (hex), and how many rows it has."""

    chain: int
    seq: int
    head: str | None
    rows: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"chain": self.chain, "seq": self.seq, "head": self.head, "rows": self.rows}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify` found: rows read, each chain's head, and the problems."""

    rows: int
    chains: tuple[ChainHead, ...]
    problems: tuple[Problem, ...]
    #: Problems found beyond `MAX_PROBLEMS` (counted, not kept).
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        """True when every row, link, trigger and function matches."""
        return not self.problems and not self.more_problems

    def ids(self, kind: ProblemKind) -> tuple[int, ...]:
        """The ids of the rows with a problem of ``kind``."""
        return tuple(p.id for p in self.problems if p.kind == kind and p.id is not None)

    def of(self, kind: ProblemKind) -> tuple[Problem, ...]:
        """The problems of ``kind``."""
        return tuple(p for p in self.problems if p.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "rows": self.rows,
            "chains": [c.as_dict() for c in self.chains],
            "problems": [p.as_dict() for p in self.problems],
            "more_problems": self.more_problems,
        }


@dataclass
class _Found:
    """Problems as they are found, capped at `MAX_PROBLEMS`."""

    problems: list[Problem] = field(default_factory=list)
    more: int = 0

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more += 1


@dataclass
class _Chain:
    """Where a chain is while its rows are read."""

    chain: int
    seq: int = 0
    id: int | None = None
    hash: bytes | None = None
    rows: int = 0


_ROWS = sa.text(
    f"""
    SELECT id, version, chain, seq, (occurred_at AT TIME ZONE 'UTC')::text AS occurred_at,
           actor, db_role, action, instance_id, integration_id, outcome,
           details::text AS details, prev_hash, hash
      FROM {audit_log.name}
     ORDER BY chain, seq
    """
)


def _rows(session: Session) -> Iterator[Any]:
    # the text of timestamps, whatever the session's settings
    session.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
    result = session.execute(_ROWS, execution_options={"yield_per": PAGE})
    yield from result


def _check_row(row: Any, state: _Chain, found: _Found) -> None:
    """Check one row against the state of its chain, then move the chain on."""
    where = {"id": row.id, "chain": row.chain, "seq": row.seq}
    if row.seq <= state.seq:
        found.add(Problem("inserted", f"seq {row.seq} of chain {row.chain} taken twice", **where))
        return
    gap = row.seq > state.seq + 1
    if gap:
        found.add(
            Problem(
                "missing",
                f"chain {row.chain} has no seq {state.seq + 1}"
                + (f" to {row.seq - 1}" if row.seq - 1 > state.seq + 1 else ""),
                id=state.id,
                chain=row.chain,
                seq=state.seq + 1,
                last_seq=row.seq - 1,
                next_id=row.id,
            )
        )
    if not 0 <= row.chain < CHAINS:
        found.add(Problem("inserted", f"chain {row.chain} does not exist", **where))
    expected = row_hash(
        row.prev_hash,
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
    if expected != row.hash:
        found.add(Problem("altered", "hash does not match the row", **where))
    elif not gap and row.prev_hash != state.hash:
        found.add(Problem("altered", "does not link to the row before it", **where))
    if state.id is not None and row.id <= state.id:
        found.add(Problem("reordered", f"id below {state.id}, the row before it", **where))
    state.seq, state.id, state.hash = row.seq, row.id, row.hash
    state.rows += 1


def _head(state: _Chain) -> ChainHead:
    return ChainHead(state.chain, state.seq, state.hash.hex() if state.hash else None, state.rows)


def _check_chains(session: Session, found: _Found) -> tuple[int, list[ChainHead]]:
    rows = 0
    chains: list[ChainHead] = []
    state: _Chain | None = None
    for row in _rows(session):
        rows += 1
        if row.chain is None or row.seq is None:
            found.add(Problem("inserted", "row has no chain or seq", id=row.id))
            continue
        if state is None or row.chain != state.chain:
            if state is not None:
                chains.append(_head(state))
            state = _Chain(row.chain)
        _check_row(row, state, found)
    if state is not None:
        chains.append(_head(state))
    return rows, chains


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


def _check_functions(session: Session, schema: str, found: _Found) -> dict[str, int]:
    """Compare each function's source and security with the expected; their oids by name."""
    bodies = function_bodies(schema)
    oids: dict[str, int] = {}
    for function in EXPECTED_FUNCTIONS:
        name = function.signature.partition("(")[0]
        qualified = '"' + schema.replace('"', '""') + '".' + function.signature
        row = session.execute(_FUNCTION, {"s": qualified}).first()
        if row is None:
            found.add(Problem("function", f"{name} is missing"))
            continue
        oids[name] = int(row.oid)
        if row.prosrc != bodies[function.signature]:
            found.add(Problem("function", f"{name} differs from its expected source"))
        if row.prosecdef:
            found.add(Problem("function", f"{name} runs as its owner"))
        if row.proconfig:
            found.add(Problem("function", f"{name} changes settings when it runs"))
    return oids


def _check_triggers(session: Session, schema: str, oids: dict[str, int], found: _Found) -> None:
    present = {r.tgname: r for r in session.execute(_TRIGGERS, {"t": audit_log.name})}
    for trigger in EXPECTED_TRIGGERS:
        row = present.pop(trigger.name, None)
        if row is None:
            found.add(Problem("trigger", f"{trigger.name} is missing"))
            continue
        if row.tgenabled not in ("O", "A"):
            found.add(Problem("trigger", f"{trigger.name} is disabled"))
        if row.conditional:
            found.add(Problem("trigger", f"{trigger.name} has a WHEN condition"))
        if int(row.tgtype) != trigger.tgtype:
            found.add(Problem("trigger", f"{trigger.name} fires on other events"))
        if oids.get(trigger.function) != int(row.tgfoid):
            found.add(Problem("trigger", f"{trigger.name} runs another function"))
    for name in sorted(present):
        found.add(Problem("trigger", f"{name} is not one of the log's triggers"))
    for rule in session.execute(_RULES, {"s": schema, "t": audit_log.name}).scalars():
        found.add(Problem("trigger", f"rule {rule} rewrites statements on the log"))


def verify(session: Session) -> VerifyReport:
    """Check the triggers, functions and every row of the audit log (see the module)."""
    found = _Found()
    with translate_errors("verify the audit log"):
        schema = session.execute(_TABLE_SCHEMA, {"t": audit_log.name}).scalar()
        if schema is not None:
            oids = _check_functions(session, str(schema), found)
            _check_triggers(session, str(schema), oids, found)
        rows, chains = _check_chains(session, found)
    return VerifyReport(
        rows=rows, chains=tuple(chains), problems=tuple(found.problems), more_problems=found.more
    )
