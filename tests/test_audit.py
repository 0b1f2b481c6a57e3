from __future__ import annotations

import threading

import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction

A = AuditAction.INSTANCE_CREATE
B = AuditAction.INSTANCE_UPDATE


def _append(db: Database, n: int, actor: str = "t") -> None:
    for i in range(n):
        with db.transaction() as s:
            audit.record(s, action=AuditAction.METHOD_CALL, actor=actor, details={"i": i})


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


def test_chain_links_every_row(db: Database) -> None:
    _append(db, 5)
    with db.transaction() as s:
        rows = s.execute(
            sa.text("SELECT id, prev_hash, hash FROM integration_audit_log ORDER BY id")
        ).all()
        report = audit.verify(s)
    assert [r.id for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash is None
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 5))
    assert report.ok and report.rows == 5 and report.last_hash == rows[-1].hash.hex()


def test_verify_finds_an_altered_row(db: Database) -> None:
    _append(db, 5)
    _tamper(db, "UPDATE integration_audit_log SET actor = 'mallory' WHERE id = 3")
    with db.transaction() as s:
        report = audit.verify(s)
    assert not report.ok and report.broken == (3,)


def test_verify_finds_a_rehashed_row_through_its_successor(db: Database) -> None:
    _append(db, 5)
    _tamper(
        db,
        "UPDATE integration_audit_log l SET actor = 'mallory', "
        "hash = integration_audit_hash(l.prev_hash, l) WHERE id = 3",
    )
    _tamper(
        db,
        "UPDATE integration_audit_log l SET hash = integration_audit_hash(l.prev_hash, "
        "ROW(l.id, l.occurred_at, 'mallory', l.db_role, l.action, l.instance_id, "
        "l.integration_id, l.outcome, l.details, l.prev_hash, l.hash)"
        "::integration_audit_log) WHERE id = 3",
    )
    with db.transaction() as s:
        report = audit.verify(s)
    assert not report.ok and 4 in report.broken


def test_verify_finds_a_deleted_row(db: Database) -> None:
    _append(db, 5)
    _tamper(db, "DELETE FROM integration_audit_log WHERE id = 2")
    with db.transaction() as s:
        report = audit.verify(s)
    assert not report.ok and report.missing == (2,)


def test_concurrent_appends_form_one_chain(db: Database) -> None:
    threads = [threading.Thread(target=_append, args=(db, 25, f"w{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.transaction() as s:
        report = audit.verify(s)
        actors = s.execute(
            sa.text("SELECT actor, count(*) FROM integration_audit_log GROUP BY actor")
        ).all()
    assert report.ok and report.rows == 100
    assert sorted((a, int(n)) for a, n in actors) == [(f"w{i}", 25) for i in range(4)]


def test_rolled_back_rows_leave_no_gap(db: Database) -> None:
    _append(db, 2)
    with db.sessions() as s:
        audit.record(s, action=AuditAction.METHOD_CALL, actor="t")
        s.rollback()
    _append(db, 1)
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.ok and report.rows == 3


def test_tail_filters(db: Database) -> None:
    with db.transaction() as s:
        audit.record(s, action=A, actor="t", instance_id="x")
        audit.record(s, action=B, actor="t", instance_id="y", outcome="failure")
        assert [e.action for e in audit.tail(s)] == [A.value, B.value]
        assert [e.action for e in audit.tail(s, instance_id="y")] == [B.value]
        assert [e.instance_id for e in audit.tail(s, action=A.value)] == ["x"]
        assert audit.tail(s, limit=1)[0].as_dict()["outcome"] == "failure"
