"""`verify`: check the audit log without trusting any function of the database.

Every row's hash is recomputed in Python (`audit_chain.row_hash`) from the row's values,
read in one statement through a server-side cursor in chain order, so memory stays
constant whatever the size of the log. Per chain it checks that ``seq`` runs 1, 2, 3...
with no gap, that each row links to the stored hash of the one before (``prev_hash``),
and that ids grow with ``seq`` (the sealer chains rows in id order). Rows not sealed yet
are counted (`VerifyReport.unsealed`), not checked; one with its chain columns filled
in part is reported altered. The last
row of each chain is its head: `VerifyReport.chains` lists them. It also checks that the
triggers the log relies on exist, are enabled and unconditional, that no other trigger
or rule sits on the table, and that the functions have the expected source
(`audit_guard`).

A chain may start after seq 1 when its first rows were archived: a cut (a row with
action ``audit.archive`` further on in the same chain, see `audit_archive`) must then
cover the seq before the first row, name the hash that row links to when it ends right
there, and carry a signature ``cut_check`` accepts (`audit_seals.cut_is_authentic`: a
MAC under the keyring, so whoever owns the database cannot write one); `VerifyReport.cuts`
lists them. Without ``cut_check`` no cut is accepted.

What it cannot see alone: the newest rows of a chain removed (a cut tail), rows added
at the end of a chain by someone who computes their hashes as the sealer would, or a
chain rewritten entirely. Given the heads of a checkpoint kept outside the database
(``covered``), it also checks that each chain still holds the row at the checkpoint's
head with the same hash, and every row before it that no cut removed. With
``from_heads`` it reads only the rows from each covered head on (and every row of the
chains the checkpoint did not have): what a new checkpoint needs to know that the log
still extends the previous one, at the cost of the rows appended since.

The module is over 450 lines because the streaming check of rows, cuts and checkpoint
coverage shares one state per chain; splitting it would pass that state around.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from prefect_integrations.db import translate_errors
from prefect_integrations.models import SEAL_COLUMNS, audit_log
from prefect_integrations.store.audit_chain import (
    CHAINS,
    CUT_ACTION,
    SEAL_CHAIN,
    hash_of,
    timestamp_text,
)
from prefect_integrations.store.audit_guard import check_guard
from prefect_integrations.store.audit_seal import UNSEALED

__all__ = ["ChainHead", "Cut", "CutCheck", "Problem", "ProblemKind", "VerifyReport", "verify"]

#: Whether a cut's details (of the given chain) carry a valid signature.
CutCheck = Callable[[int, Mapping[str, Any]], bool]

ProblemKind = Literal[
    "altered",
    "missing",
    "reordered",
    "inserted",
    "cut",
    "rewritten",
    "table",
    "trigger",
    "function",
]

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
    exist, a seq taken twice). ``cut``: a chain ends before the head a checkpoint
    recorded (``seq`` is that head's, ``last_seq`` the chain's last). ``rewritten``: the
    row at a checkpoint's head has another hash, or rows it covered are gone without a
    cut. ``table``: the log is not a plain table, or has row-level security.
    ``trigger``/``function``: what the append and the guard rely on is missing or changed.
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
    """A chain: its last row's seq and hash (hex), how many rows it has, its first seq.

    ``first_seq`` is above 1 when the chain's first rows were archived.
    """

    chain: int
    seq: int
    head: str | None
    rows: int
    first_seq: int = 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "chain": self.chain,
            "first_seq": self.first_seq,
            "seq": self.seq,
            "head": self.head,
            "rows": self.rows,
        }


@dataclass(frozen=True, slots=True)
class Cut:
    """Rows archived from the start of a chain: seq 1 (or an earlier cut's) to ``through_seq``.

    ``id`` is the cut's own row; ``details`` what `audit archive` recorded in it.
    """

    chain: int
    through_seq: int
    id: int
    occurred_at: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "chain": self.chain,
            "through_seq": self.through_seq,
            "id": self.id,
            "occurred_at": self.occurred_at,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify` found: rows read, each chain's head, and the problems."""

    rows: int
    chains: tuple[ChainHead, ...]
    problems: tuple[Problem, ...]
    #: Problems found beyond `MAX_PROBLEMS` (counted, not kept).
    more_problems: int = 0
    #: The cuts that explain where chains start.
    cuts: tuple[Cut, ...] = ()
    #: With a checkpoint: the rows it covered that are still here, and those archived since.
    covered_rows: int | None = None
    archived_since: int | None = None
    #: Rows appended but not sealed yet (not in a chain, so not checked), and the time of
    #: the oldest of them.
    unsealed: int = 0
    oldest_unsealed: str | None = None

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
            "cuts": [c.as_dict() for c in self.cuts],
            "unsealed": self.unsealed,
            "oldest_unsealed": self.oldest_unsealed,
            **(
                {"covered_rows": self.covered_rows, "archived_since": self.archived_since}
                if self.covered_rows is not None
                else {}
            ),
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
    """Where a chain is while its rows are read.

    ``start`` is the first row's (seq, id, prev_hash) when the chain starts after seq 1,
    until a cut explains it; ``at_head`` the hash of the row at the checkpoint's head and
    ``upto_head`` the rows read up to it.
    """

    chain: int
    seq: int = 0
    id: int | None = None
    hash: bytes | None = None
    rows: int = 0
    first_seq: int = 0
    start: tuple[int, int, bytes | None] | None = None
    at_head: bytes | None = None
    upto_head: int = 0
    #: the seq reading starts at (1, or a covered head's with ``from_heads``)
    origin: int = 1
    #: a cut matched the start but its signature did not hold
    forged_cut: int | None = None


_ROWS = sa.text(
    f"""
    SELECT id, version, chain, seq, (occurred_at AT TIME ZONE 'UTC')::text AS occurred_at,
           actor, db_role, action, instance_id, integration_id, outcome,
           details::text AS details, prev_hash, hash
      FROM {audit_log.name}
     WHERE seq IS NOT NULL
     ORDER BY chain, seq
    """
)


# The rows not sealed yet, and the first rows outside the chains (no seq) that are not
# empty either.
_UNSEALED = sa.text(
    f"""
    SELECT count(*) AS rows, (min(occurred_at) AT TIME ZONE 'UTC')::text AS oldest
      FROM {audit_log.name} WHERE {UNSEALED}
    """
)
# Rows not sealed below the sealer's chain's last row: the sealer, which goes on from
# that row's id, will never seal them.
_LEFT_OUT = sa.text(
    f"""
    SELECT l.id, h.id AS head_id FROM {audit_log.name} l,
           (SELECT id FROM {audit_log.name} WHERE chain = {SEAL_CHAIN} AND seq IS NOT NULL
             ORDER BY seq DESC LIMIT 1) h
     WHERE {UNSEALED} AND l.id < h.id
     ORDER BY l.id LIMIT {MAX_PROBLEMS}
    """
)
_IN_PART = sa.text(
    f"""
    SELECT id FROM {audit_log.name} WHERE seq IS NULL AND NOT ({UNSEALED})
     ORDER BY id LIMIT {MAX_PROBLEMS}
    """
)

# Rows from a seq on in each chain (a range scan of the (chain, seq) index per chain).
_ROWS_FROM = sa.text(
    f"""
    SELECT l.id, l.version, l.chain, l.seq,
           (l.occurred_at AT TIME ZONE 'UTC')::text AS occurred_at,
           l.actor, l.db_role, l.action, l.instance_id, l.integration_id, l.outcome,
           l.details::text AS details, l.prev_hash, l.hash
      FROM generate_series(0, {CHAINS - 1}) AS g(chain)
     CROSS JOIN LATERAL (
       SELECT * FROM {audit_log.name} r
        WHERE r.chain = g.chain AND r.seq >= (CAST(:froms AS bigint[]))[g.chain + 1]
        ORDER BY r.seq
     ) AS l
     ORDER BY l.chain, l.seq
    """
)


def _rows(session: Session, froms: list[int] | None) -> Iterator[Any]:
    # the text of timestamps, whatever the session's settings
    session.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
    if froms is None:
        result = session.execute(_ROWS, execution_options={"yield_per": PAGE})
    else:
        result = session.execute(
            _ROWS_FROM, {"froms": froms}, execution_options={"yield_per": PAGE}
        )
    yield from result


def _cut_of(row: Any, state: _Chain, cut_check: CutCheck | None) -> Cut | None:
    """The cut ``row`` records, if it is one, explains where its chain starts, and holds.

    It explains the start when it covers the seq before the chain's first row; when it
    ends right there, the hash it names must be the one that row links to (a cut whose
    deletion stopped short leaves rows it covers, which link among themselves).
    """
    if row.action != CUT_ACTION or state.start is None:
        return None
    try:
        details = json.loads(row.details)
    except (TypeError, ValueError, RecursionError):
        return None
    first_seq, _, prev_hash = state.start
    through = details.get("through_seq") if isinstance(details, dict) else None
    if (
        not isinstance(details, dict)
        or type(through) is not int
        or through < first_seq - 1
        or (
            through == first_seq - 1
            and details.get("through_hash") != (prev_hash.hex() if prev_hash else None)
        )
    ):
        return None
    if cut_check is None or not cut_check(row.chain, details):
        state.forged_cut = row.id
        return None
    return Cut(row.chain, through, row.id, timestamp_text(row.occurred_at), details)


def _check_row(
    row: Any, state: _Chain, found: _Found, cuts: list[Cut], cut_check: CutCheck | None
) -> None:
    """Check one row against the state of its chain, then move the chain on."""
    where = {"id": row.id, "chain": row.chain, "seq": row.seq}
    if row.seq <= state.seq:
        found.add(Problem("inserted", f"seq {row.seq} of chain {row.chain} taken twice", **where))
        return
    if state.seq == 0:
        state.first_seq = row.seq
        gap = row.seq > state.origin
        if gap:  # archived, if a cut further on says so
            state.start = (row.seq, row.id, row.prev_hash)
        elif state.origin > 1:  # its link is covered by the checkpoint's head
            state.hash = row.prev_hash
    elif gap := row.seq > state.seq + 1:
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
    expected = hash_of(row.prev_hash, row)
    if expected != row.hash:
        found.add(Problem("altered", "hash does not match the row", **where))
    elif not gap and row.prev_hash != state.hash:
        found.add(Problem("altered", "does not link to the row before it", **where))
    if state.id is not None and row.id <= state.id:
        found.add(Problem("reordered", f"id below {state.id}, the row before it", **where))
    elif expected == row.hash and (cut := _cut_of(row, state, cut_check)) is not None:
        cuts.append(cut)
        state.start = None
    state.seq, state.id, state.hash = row.seq, row.id, row.hash
    state.rows += 1


def _end_chain(state: _Chain, found: _Found) -> ChainHead:
    """The chain's head, once a chain whose start no cut explains is reported."""
    if state.start is not None:
        first_seq, first_id, _ = state.start
        why = (
            f"the cut in row {state.forged_cut} is not signed with a key of the keyring"
            if state.forged_cut is not None
            else "no cut of them"
        )
        found.add(
            Problem(
                "missing",
                f"chain {state.chain} has no seq {state.origin}"
                + (f" to {first_seq - 1}" if first_seq > state.origin + 1 else "")
                + f": {why}",
                id=state.forged_cut,
                chain=state.chain,
                seq=state.origin,
                last_seq=first_seq - 1,
                next_id=first_id,
            )
        )
    return ChainHead(
        state.chain,
        state.seq,
        state.hash.hex() if state.hash else None,
        state.rows,
        state.first_seq or 1,
    )


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


@dataclass
class _Coverage:
    """A checkpoint's heads, compared with the chains as they are read."""

    heads: dict[int, ChainHead]
    rows: int = 0
    archived: int = 0
    #: only the rows from each head on are read (no count of the rows before)
    from_heads: bool = False

    def see(self, row: Any, state: _Chain) -> None:
        head = self.heads.get(row.chain)
        if head is not None and row.seq <= head.seq:
            state.upto_head += 1
            if row.seq == head.seq:
                state.at_head = row.hash

    def end(self, state: _Chain | None, chain: int, found: _Found) -> None:
        """Compare a chain (None: absent from the log) with the checkpoint's head."""
        head = self.heads.get(chain)
        if head is None or head.rows == 0:
            return
        seq, first, upto = (
            (state.seq, state.first_seq, state.upto_head) if state else (0, head.seq + 1, 0)
        )
        # rows before the chain's first: archived, if a cut explains it (else `missing`)
        archived = max(0, min(first, head.seq + 1) - head.first_seq)
        archived_ok = state is not None and state.start is None
        where = {"chain": chain, "seq": head.seq}
        if state is None:
            found.add(
                Problem(
                    "cut",
                    f"chain {chain} has no row at or after the checkpoint's head, seq {head.seq}"
                    if self.from_heads
                    else f"chain {chain} has no rows; the checkpoint's head was seq {head.seq}",
                    last_seq=None if self.from_heads else 0,
                    **where,
                )
            )
        elif seq < head.seq:
            found.add(
                Problem(
                    "cut",
                    f"chain {chain} ends at seq {seq}, before the checkpoint's head {head.seq}",
                    last_seq=seq,
                    **where,
                )
            )
        elif state is not None and first <= head.seq and state.at_head is None:
            found.add(Problem("cut", f"chain {chain} has no row at seq {head.seq}", **where))
        elif state is not None and first <= head.seq and _hex(state.at_head) != head.head:
            found.add(
                Problem(
                    "rewritten",
                    f"the row at seq {head.seq} of chain {chain} is not the checkpoint's head",
                    **where,
                )
            )
        elif not self.from_heads and upto + (archived if archived_ok else 0) != head.rows:
            found.add(
                Problem(
                    "rewritten",
                    f"chain {chain} holds {upto} of the {head.rows} rows the checkpoint "
                    f"covered" + (f" ({archived} archived since)" if archived else ""),
                    **where,
                )
            )
        self.rows += upto
        self.archived += archived if archived_ok else 0


def _check_chains(
    session: Session, found: _Found, coverage: _Coverage | None, cut_check: CutCheck | None
) -> tuple[int, list[ChainHead], list[Cut]]:
    rows = 0
    chains: list[ChainHead] = []
    cuts: list[Cut] = []
    state: _Chain | None = None
    seen: set[int] = set()

    def end(state: _Chain) -> None:
        chains.append(_end_chain(state, found))
        seen.add(state.chain)
        if coverage is not None:
            coverage.end(state, state.chain, found)

    froms: list[int] | None = None
    if coverage is not None and coverage.from_heads:
        froms = [1] * CHAINS
        for head in coverage.heads.values():
            if 0 <= head.chain < CHAINS:
                froms[head.chain] = max(head.seq, 1)
    for row in _rows(session, froms):
        if row.chain is None or row.seq is None:
            if any(getattr(row, name) is not None for name in SEAL_COLUMNS):
                found.add(Problem("altered", "chain columns filled in part", id=row.id))
            continue  # not sealed yet (counted apart)
        rows += 1
        if state is None or row.chain != state.chain:
            if state is not None:
                end(state)
            state = _Chain(row.chain)
            if froms is not None and 0 <= row.chain < CHAINS:
                state.origin = froms[row.chain]
        if coverage is not None:
            coverage.see(row, state)
        _check_row(row, state, found, cuts, cut_check)
    if state is not None:
        end(state)
    if coverage is not None:
        for chain in sorted(set(coverage.heads) - seen):
            coverage.end(None, chain, found)
    return rows, chains, cuts


def verify(
    session: Session,
    covered: Sequence[ChainHead] | None = None,
    *,
    cut_check: CutCheck | None = None,
    from_heads: bool = False,
) -> VerifyReport:
    """Check the triggers, functions and every row of the audit log (see the module).

    ``covered``: the chains of a checkpoint; each must still reach its head unchanged.
    ``cut_check``: accepts a cut's signature (no cut is accepted without it).
    ``from_heads``: read only from the covered heads on (see the module).
    """
    found = _Found()
    coverage = (
        _Coverage({c.chain: c for c in covered}, from_heads=from_heads)
        if covered is not None
        else None
    )
    with translate_errors("verify the audit log"):
        for kind, detail in check_guard(session):
            found.add(Problem(kind, detail))
        rows, chains, cuts = _check_chains(session, found, coverage, cut_check)
        for row_id in session.execute(_IN_PART).scalars():
            found.add(Problem("altered", "chain columns filled in part", id=row_id))
        for row_id, head_id in session.execute(_LEFT_OUT).tuples():
            found.add(
                Problem(
                    "missing",
                    f"not sealed, though row {head_id} after it is: it can no longer be",
                    id=row_id,
                    chain=SEAL_CHAIN,
                )
            )
        waiting = session.execute(_UNSEALED).one()
    return VerifyReport(
        rows=rows,
        chains=tuple(chains),
        problems=tuple(found.problems),
        more_problems=found.more,
        cuts=tuple(cuts),
        covered_rows=coverage.rows if coverage else None,
        archived_since=coverage.archived if coverage else None,
        unsealed=int(waiting.rows),
        oldest_unsealed=None if waiting.oldest is None else timestamp_text(waiting.oldest),
    )
