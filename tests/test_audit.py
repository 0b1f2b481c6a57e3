from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.audit_seal import seal_pending


def _append(db: Database, n: int, actor: str = "t", *, sealed: bool = True) -> None:
    for i in range(n):
        with db.transaction() as s:
            audit.record(s, action=AuditAction.HEALTH_CHECK, actor=actor, details={"i": i})
    if sealed:
        seal_pending(db)


def _tamper(db: Database, statement: str) -> None:
    """Alter the log as a superuser who switches the guard trigger off."""
    with db.transaction() as s:
        s.execute(
            sa.text(
                "ALTER TABLE integration_audit_log DISABLE TRIGGER integration_audit_refuse_change"
            )
        )
        s.execute(sa.text(statement))
        s.execute(
            sa.text(
                "ALTER TABLE integration_audit_log ENABLE TRIGGER integration_audit_refuse_change"
            )
        )


def _rows(db: Database) -> list[sa.Row[Any]]:
    with db.transaction() as s:
        return list(
            s.execute(
                sa.text(
                    "SELECT id, chain, seq, prev_hash, hash FROM integration_audit_log "
                    "ORDER BY chain, seq"
                )
            )
        )


def _successor(db: Database, row_id: int) -> int:
    """The id of the row after ``row_id`` in its chain."""
    rows = _rows(db)
    at = next(i for i, r in enumerate(rows) if r.id == row_id)
    assert rows[at + 1].chain == rows[at].chain, "the row is the last of its chain"
    return int(rows[at + 1].id)


def test_chain_links_every_row(db: Database) -> None:
    _append(db, 5)
    rows = _rows(db)
    with db.transaction() as s:
        report = audit.verify(s)
    assert sorted(r.id for r in rows) == [1, 2, 3, 4, 5]
    heads = set()
    for chain in {r.chain for r in rows}:
        mine = [r for r in rows if r.chain == chain]
        assert [r.seq for r in mine] == list(range(1, len(mine) + 1))
        assert mine[0].prev_hash is None
        assert all(mine[i].prev_hash == mine[i - 1].hash for i in range(1, len(mine)))
        heads.add((chain, len(mine), mine[-1].hash.hex()))
    assert report.ok and report.rows == 5
    assert {(c.chain, c.seq, c.head) for c in report.chains} == heads


def test_the_sealer_continues_the_chain_in_id_order(db: Database) -> None:
    _append(db, 3, sealed=False)
    assert {(r.chain, r.seq, r.hash) for r in _rows(db)} == {(None, None, None)}
    assert seal_pending(db).rows == 3
    _append(db, 2)
    rows = _rows(db)
    assert [(r.id, r.chain, r.seq) for r in rows] == [(i, 0, i) for i in range(1, 6)]
    assert rows[3].prev_hash == rows[2].hash
    assert seal_pending(db).rows == 0


def test_verify_finds_an_altered_row(db: Database) -> None:
    _append(db, 5)
    _tamper(db, "UPDATE integration_audit_log SET actor = 'mallory' WHERE id = 3")
    with db.transaction() as s:
        report = audit.verify(s)
    assert not report.ok and report.ids("altered") == (3,)


def test_verify_finds_a_rehashed_row_through_its_successor(db: Database) -> None:
    with db.transaction() as s:
        for i in range(5):
            audit.record(s, action=AuditAction.HEALTH_CHECK, actor="t", details={"i": i})
    seal_pending(db)
    _tamper(
        db,
        "UPDATE integration_audit_log l SET hash = integration_audit_hash(l.prev_hash, "
        "ROW(l.id, l.occurred_at, 'mallory', l.db_role, l.action, l.instance_id, "
        "l.integration_id, l.outcome, l.details, l.prev_hash, l.hash, l.version, l.chain, "
        "l.seq)::integration_audit_log), actor = 'mallory' WHERE id = 3",
    )
    with db.transaction() as s:
        report = audit.verify(s)
    assert not report.ok and report.ids("altered") == (4,)
    assert report.of("altered")[0].detail == "does not link to the row before it"


def test_verify_finds_a_deleted_row(db: Database) -> None:
    with db.transaction() as s:
        for i in range(5):
            audit.record(s, action=AuditAction.HEALTH_CHECK, actor="t", details={"i": i})
    seal_pending(db)
    _tamper(db, "DELETE FROM integration_audit_log WHERE id = 2")
    with db.transaction() as s:
        report = audit.verify(s)
    [missing] = report.problems
    assert (missing.kind, missing.seq, missing.last_seq, missing.id, missing.next_id) == (
        "missing",
        2,
        2,
        1,
        3,
    )


def test_concurrent_appends_keep_every_chain(db: Database) -> None:
    threads = [threading.Thread(target=_append, args=(db, 25, f"w{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seal_pending(db)
    with db.transaction() as s:
        report = audit.verify(s)
        actors = s.execute(
            sa.text("SELECT actor, count(*) FROM integration_audit_log GROUP BY actor")
        ).all()
    assert report.ok and report.rows == 100
    assert sorted((a, int(n)) for a, n in actors) == [(f"w{i}", 25) for i in range(4)]


def test_rolled_back_rows_leave_no_gap_in_their_chain(db: Database) -> None:
    _append(db, 2)
    with db.sessions() as s:
        audit.record(s, action=AuditAction.HEALTH_CHECK, actor="t")
        s.rollback()
    _append(db, 1)
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and report.rows == 3


def test_tail_filters(db: Database) -> None:
    with db.transaction() as s:
        a, b = AuditAction.HEALTH_CHECK, AuditAction.METHOD_CALL
        audit.record(s, action=a, actor="t", instance_id="x")
        audit.record(s, action=b, actor="t", instance_id="y", outcome="failure")
        assert [e.action for e in audit.tail(s)] == [a, b]
        assert [e.action for e in audit.tail(s, instance_id="y")] == [b]
        assert [e.instance_id for e in audit.tail(s, action=a)] == ["x"]
        assert audit.tail(s, limit=1)[0].as_dict()["outcome"] == "failure"


def test_rows_appended_inside_a_statement_join_the_chain(db: Database) -> None:
    """`insert_rows` in a CTE appends rows with the bound action, sealed like `record`'s."""
    _append(db, 1)
    appended = audit.insert_rows(
        audit.select_row(
            actor="CAST(:actor AS text)",
            instance_id="v.iid",
            outcome="'success'",
            details="jsonb_build_object('n', v.n)",
            rest="FROM (VALUES ('x', 1), ('y', 2)) AS v(iid, n)",
        ),
        audit.select_row(actor="CAST(:actor AS text)", outcome="'failure'", details="'{}'"),
    )
    statement = audit.bind_action(
        sa.text(f"WITH a AS ({appended}) SELECT 1"), AuditAction.KEYS_ROTATE
    )
    assert "integration_audit_log" in appended
    with db.transaction() as s:
        s.execute(statement, {"actor": "cte"})
    seal_pending(db)
    with db.transaction() as s:
        rows = [e for e in audit.tail(s) if e.actor == "cte"]
        assert [(e.action, e.instance_id, e.outcome, dict(e.details)) for e in rows] == [
            ("keys.rotate", "x", "success", {"n": 1}),
            ("keys.rotate", "y", "success", {"n": 2}),
            ("keys.rotate", None, "failure", {}),
        ]
        assert audit.verify(s).ok


def test_only_known_actions_are_recorded(db: Database) -> None:
    with db.transaction() as s:
        with pytest.raises(ValueError, match=r"'made\.up'"):
            audit.record(s, action="made.up", actor="t")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"'made\.up'"):
            audit.record_many(s, [audit.AuditRow(action="made.up", actor="t")])  # type: ignore[arg-type]
        assert audit.tail(s) == []
    assert {a.value for a in audit.AuditAction} >= {"method.call", "credentials.decrypt"}


# --------------------------------------------------------------------------------------
# Appends are stamped, not chained; the sealer chains them
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["id", "occurred_at", "db_role", "seq", "hash"])
@pytest.mark.parametrize("role_db", ["admin_db", "runtime_db"])
def test_a_role_may_append_only_a_rows_content(
    request: pytest.FixtureRequest, db: Database, role_db: str, column: str
) -> None:
    from prefect_integrations.exceptions import PermissionDenied

    database: Database = request.getfixturevalue(role_db)
    value = {"id": "999", "occurred_at": "'2000-01-01'", "db_role": "'x'"}.get(column, "NULL")
    with pytest.raises(PermissionDenied), database.transaction("forge a row") as s:
        s.execute(
            sa.text(
                f"INSERT INTO integration_audit_log (actor, action, outcome, details, {column}) "
                f"VALUES ('mallory', 'health.check', 'success', '{{}}', {value})"
            )
        )
    with database.transaction("append") as s:
        audit.record(s, action=AuditAction.HEALTH_CHECK, actor="t")
    with db.transaction() as s:
        row = s.execute(
            sa.text(
                "SELECT id, db_role <> current_user AS theirs, "
                "occurred_at > now() - interval '1 hour' AS now, seq FROM integration_audit_log"
            )
        ).one()
    assert (row.id, row.theirs, row.now, row.seq) == (1, True, True, None)


def test_a_row_written_around_the_defaults_is_named(db: Database) -> None:
    """The owner can write any column; a row it claims sealed is not in a chain."""
    _append(db, 1)
    with db.transaction() as s:
        s.execute(
            sa.text(
                "INSERT INTO integration_audit_log (id, actor, action, outcome, details, "
                "version, chain, seq, hash) "
                "VALUES (999, 'mallory', 'health.check', 'success', '{}', 2, 0, 2, '\\x00')"
            )
        )
    with db.transaction() as s:
        assert audit.verify(s).ids("altered") == (999,)


GUARDED = [
    # an unsealed row's content
    "UPDATE integration_audit_log SET actor = 'mallory' WHERE seq IS NULL",
    # sealing that changes the content too
    "UPDATE integration_audit_log SET version = 2, chain = 0, seq = 9, hash = '\\x00', "
    "details = '{\"i\": 99}' WHERE seq IS NULL",
    # the same jsonb written differently (the hash reads its text)
    "UPDATE integration_audit_log SET version = 2, chain = 0, seq = 9, hash = '\\x00', "
    "details = '{\"i\": 0.00}' WHERE seq IS NULL",
    # a sealed row sealed again
    "UPDATE integration_audit_log SET seq = 9 WHERE seq IS NOT NULL",
    "DELETE FROM integration_audit_log WHERE seq IS NULL",
]


@pytest.mark.parametrize("statement", GUARDED)
@pytest.mark.parametrize("role_db", ["db", "runtime_db"])
def test_the_guard_lets_only_sealing_through(
    request: pytest.FixtureRequest, db: Database, role_db: str, statement: str
) -> None:
    from prefect_integrations.exceptions import PermissionDenied

    database: Database = request.getfixturevalue(role_db)
    _append(db, 1)
    with db.transaction() as s:
        audit.record(s, action=AuditAction.HEALTH_CHECK, actor="t", details={"i": 0.0})
    before = _rows(db)
    with pytest.raises(PermissionDenied), database.transaction("change the log") as s:
        s.execute(sa.text(statement))
    assert _rows(db) == before
    assert seal_pending(database).rows == 1  # the role may seal
    with db.transaction() as s:
        assert audit.verify(s).ok


def test_a_row_with_chain_columns_filled_in_part_is_altered(db: Database) -> None:
    _append(db, 2)
    _append(db, 1, sealed=False)
    _tamper(db, "UPDATE integration_audit_log SET hash = '\\x01' WHERE id = 3")
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.ids("altered") == (3,) and report.unsealed == 0
    assert report.of("altered")[0].detail == "chain columns filled in part"


def test_the_sealer_waits_for_transactions_that_may_still_append_below(db: Database) -> None:
    """A row numbered before a sealed one but committed after it would break the id order:
    the sealer waits for open transactions, and gives up after ``wait`` seconds."""
    from prefect_integrations.store.audit_seal import SealWaitTimeout

    slow = db.sessions()
    audit.record(slow, action=AuditAction.HEALTH_CHECK, actor="slow")  # id 1, open
    _append(db, 1, "quick", sealed=False)  # id 2, committed
    with pytest.raises(SealWaitTimeout, match=r"stayed open for more than 0\.2 s"):
        seal_pending(db, wait=0.2)
    assert {r.seq for r in _rows(db)} == {None}  # nothing sealed

    done: list[int] = []
    sealer = threading.Thread(target=lambda: done.append(seal_pending(db).rows))
    sealer.start()
    sealer.join(0.5)
    assert sealer.is_alive()  # still waiting
    slow.commit()
    slow.close()
    sealer.join(60)
    assert done == [2]
    assert [(r.id, r.seq) for r in _rows(db)] == [(1, 1), (2, 2)]


def test_the_sealer_waits_for_a_transaction_that_took_its_id_after_another(
    db: Database, runtime_db: Database
) -> None:
    """Transaction ids above the snapshot's horizon count too: U takes an id, T a later
    one and appends, U appends and commits; T's row, numbered first, is sealed first."""
    from prefect_integrations.store.audit_seal import SealWaitTimeout

    early, late = runtime_db.engine.connect(), runtime_db.engine.connect()
    try:
        early.execute(sa.text("SELECT pg_current_xact_id()"))
        audit.record(late, action=AuditAction.HEALTH_CHECK, actor="late")  # id 1, open
        audit.record(early, action=AuditAction.HEALTH_CHECK, actor="early")  # id 2
        early.commit()
        with pytest.raises(SealWaitTimeout):
            seal_pending(runtime_db, wait=0.2)
        late.commit()
    finally:
        early.close()
        late.close()
    assert seal_pending(runtime_db).rows == 2
    assert [(r.id, r.seq) for r in _rows(db)] == [(1, 1), (2, 2)]


def test_a_role_cannot_seal_by_hand(db: Database, runtime_db: Database) -> None:
    """Only the sealer (which runs as the owner) fills chain columns: a role sealing its own
    row first, with the right hash, would keep older rows out of the chain."""
    from prefect_integrations.exceptions import PermissionDenied
    from prefect_integrations.store.audit_chain import hash_of

    _append(db, 1)
    _append(db, 2, "victim", sealed=False)
    with runtime_db.transaction() as s:
        audit.record(s, action=AuditAction.HEALTH_CHECK, actor="mallory")
    with db.transaction() as s:
        s.execute(sa.text("SELECT set_config('DateStyle', 'ISO, YMD', true)"))
        head = s.execute(sa.text("SELECT seq, hash FROM integration_audit_log WHERE id = 1")).one()
        row = s.execute(
            sa.text(
                "SELECT id, 2 AS version, 0 AS chain, CAST(:seq AS bigint) AS seq, "
                "(occurred_at AT TIME ZONE 'UTC')::text AS occurred_at, actor, db_role, "
                "action, instance_id, integration_id, outcome, details::text AS details "
                "FROM integration_audit_log WHERE id = 4"
            ),
            {"seq": head.seq + 1},
        ).one()
    digest = hash_of(bytes(head.hash), row)
    with pytest.raises(PermissionDenied), runtime_db.transaction("seal by hand") as s:
        s.execute(
            sa.text(
                "UPDATE integration_audit_log SET version = 2, chain = 0, seq = :seq, "
                "prev_hash = :prev, hash = :hash WHERE id = 4"
            ),
            {"seq": head.seq + 1, "prev": bytes(head.hash), "hash": digest},
        )
    assert seal_pending(runtime_db).rows == 3
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and (report.rows, report.unsealed) == (4, 0)


def test_the_sealer_is_the_owners_and_only_the_roles_may_call_it(
    db: Database, runtime_db: Database
) -> None:
    with db.transaction() as s:
        row = s.execute(
            sa.text(
                "SELECT p.prosecdef, p.proconfig, "
                "has_function_privilege('public', p.oid, 'EXECUTE') AS anyone, "
                "has_function_privilege('prefect_integrations_runtime', p.oid, 'EXECUTE') "
                "AS runtime FROM pg_proc p "
                "WHERE p.oid = to_regprocedure(:f)"
            ),
            {"f": "integration_audit_seal(bigint, integer, double precision)"},
        ).one()
    assert (row.prosecdef, row.proconfig, row.anyone, row.runtime) == (
        True,
        ["search_path=pg_catalog, pg_temp"],
        False,
        True,
    )


def test_the_sealer_caps_what_it_is_told_and_checks_its_arguments(
    db: Database, runtime_db: Database
) -> None:
    """A caller cannot have it seal past rows that may still commit, or wait forever."""
    from prefect_integrations.exceptions import DatabaseError

    _append(db, 1)
    call = sa.text(
        "SELECT sealed_rows FROM integration_audit_seal("
        "CAST(:u AS bigint), CAST(:m AS integer), CAST(:w AS double precision))"
    )
    for args in (
        {"u": None, "m": 1, "w": 1},
        {"u": 1, "m": -1, "w": 1},
        {"u": 1, "m": 1, "w": None},
    ):
        with (
            pytest.raises(DatabaseError, match="must be given, at least 0"),
            runtime_db.transaction("seal") as s,
        ):
            s.execute(call, args)
    slow = runtime_db.sessions()
    audit.record(slow, action=AuditAction.HEALTH_CHECK, actor="slow")  # id 2, open
    try:
        _append(db, 1, "quick", sealed=False)  # id 3
        with (  # an upto far beyond: capped, and it waits for the open row
            pytest.raises(sa.exc.DBAPIError, match="stayed open"),
            runtime_db.transaction("seal") as s,
        ):
            s.execute(call, {"u": 2**62, "m": 10, "w": 0.2})
    finally:
        slow.commit()
        slow.close()
    assert seal_pending(runtime_db).rows == 2
    with db.transaction() as s:
        assert audit.verify(s).ok


def test_a_row_left_below_the_chain_is_missing(db: Database) -> None:
    """Whatever kept a row out of the chain, rows after it sealed: verify says it."""
    _append(db, 3)
    _tamper(
        db,
        "UPDATE integration_audit_log SET version = NULL, chain = NULL, seq = NULL, "
        "prev_hash = NULL, hash = NULL WHERE id = 2",
    )
    with db.transaction() as s:
        report = audit.verify(s)
    assert (2, "missing") in {(p.id, p.kind) for p in report.problems}


def test_a_row_too_large_to_hash_is_refused(runtime_db: Database) -> None:
    with (
        pytest.raises(sa.exc.IntegrityError, match="ck_integration_audit_log_size"),
        runtime_db.transaction("append") as s,
    ):
        audit.record(s, action=AuditAction.HEALTH_CHECK, actor="x" * 2000)
