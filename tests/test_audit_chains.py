"""The audit log's chains: parallel appends and sealing, the Python hash, and tampering
`verify` sees.

The tampering is done as the test cluster's superuser, who can switch the guard triggers
off (``session_replication_role = replica`` or ``DISABLE TRIGGER``) and replace
functions: `verify` must name what changed without using any of the database's functions.
A chain's newest rows removed together with its head moved back look like a shorter,
intact chain: only heads kept outside the database (a signed checkpoint) show that: see
test_audit_seals.py.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.audit_chain import json_string, timestamp_text
from prefect_integrations.store.audit_seal import seal_pending

AWKWARD = [
    "",
    'a "quoted" word',
    "back\\slash \\u0041 \\n",
    "".join(chr(c) for c in range(1, 0x20)) + "\x7f",
    "tab\tnewline\nreturn\rbell\x07",
    "café naïve Ελληνικά 日本語",
    "emoji 😀 👩‍👩‍👧 \U0001f600",
    "line\u2028separator\u2029 and \ufeff bom",
    "</script><!--",
]


def _append(db: Database, n: int, *, actor: str = "t") -> None:
    for i in range(n):
        with db.transaction() as s:
            audit.record(s, action=AuditAction.HEALTH_CHECK, actor=actor, details={"i": i})
    seal_pending(db)


def _tamper(db: Database, *statements: str) -> None:
    """Change the log as a superuser with the guard triggers off for this transaction."""
    with db.transaction() as s:
        s.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            s.execute(sa.text(statement))


def _verify(db: Database) -> audit.VerifyReport:
    with db.transaction() as s:
        return audit.verify(s)


def _two_in_one_chain(db: Database) -> tuple[Any, Any]:
    """Two neighbouring rows of one chain (appended in one transaction)."""
    with db.transaction() as s:
        for i in range(3):
            audit.record(s, action=AuditAction.METHOD_CALL, actor="pair", details={"i": i})
    seal_pending(db)
    with db.transaction() as s:
        rows = s.execute(
            sa.text(
                "SELECT id, chain, seq FROM integration_audit_log WHERE actor = 'pair' ORDER BY seq"
            )
        ).all()
    return rows[0], rows[1]


# --------------------------------------------------------------------------------------
# The hash in Python is the database's, byte for byte
# --------------------------------------------------------------------------------------


def test_json_strings_are_written_as_postgres_writes_them(db: Database) -> None:
    with db.transaction() as s:
        for text in AWKWARD:
            ours = json_string(text)
            theirs = s.execute(sa.text("SELECT to_jsonb(CAST(:t AS text))::text"), {"t": text})
            assert ours == theirs.scalar_one(), text
            array = s.execute(
                sa.text("SELECT jsonb_build_array(1, CAST(:t AS text), NULL)::text"), {"t": text}
            ).scalar_one()
            assert array == f"[1, {ours}, null]"
    assert json_string(None) == "null"


@pytest.mark.parametrize(
    "moment",
    [
        "2026-11-30 02:34:56.123456+00",
        "2026-11-30 02:34:56+00",
        "2026-11-30 02:34:56.1+00",
        "1999-01-01 00:00:00.000001+05:30",
    ],
)
def test_timestamps_are_formatted_as_the_hash_formats_them(db: Database, moment: str) -> None:
    with db.transaction() as s:
        row = s.execute(
            sa.text(
                "SELECT (CAST(:m AS timestamptz) AT TIME ZONE 'UTC')::text AS raw, "
                "to_char(CAST(:m AS timestamptz) AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') AS formatted'
            ),
            {"m": moment},
        ).one()
    assert timestamp_text(row.raw) == row.formatted


def test_rows_with_awkward_text_verify(db: Database) -> None:
    with db.transaction() as s:
        for text in AWKWARD:
            audit.record(
                s,
                action=AuditAction.METHOD_CALL,
                actor=text,
                instance_id=text[:255],
                integration_id=text[:255] or None,
                details={text: text, "n": [1.5, 1e-7, 10**20, True, None], "o": {"": text}},
            )
    assert _verify(db).unsealed == len(AWKWARD)
    assert seal_pending(db).rows == len(AWKWARD)
    report = _verify(db)
    assert report.ok, report.problems
    assert (report.rows, report.unsealed) == (len(AWKWARD), 0)
    with db.transaction() as s:  # the sealer's Python hash is the SQL formula's
        differ = s.execute(
            sa.text(
                "SELECT count(*) FROM integration_audit_log l "
                "WHERE l.hash IS DISTINCT FROM integration_audit_hash(l.prev_hash, l)"
            )
        ).scalar_one()
    assert differ == 0


# --------------------------------------------------------------------------------------
# Each tampering is named
# --------------------------------------------------------------------------------------


def test_an_edited_row_is_altered(db: Database) -> None:
    _append(db, 4)
    _tamper(db, "UPDATE integration_audit_log SET details = '{\"i\": 99}' WHERE id = 3")
    report = _verify(db)
    assert report.ids("altered") == (3,) and len(report.problems) == 1


def test_a_deleted_row_is_missing_at_its_place(db: Database) -> None:
    first, second = _two_in_one_chain(db)
    _tamper(db, f"DELETE FROM integration_audit_log WHERE id = {first.id}")
    [problem] = _verify(db).problems
    assert (problem.kind, problem.chain, problem.seq, problem.next_id) == (
        "missing",
        first.chain,
        first.seq,
        second.id,
    )


def test_swapped_rows_are_reordered(db: Database) -> None:
    first, second = _two_in_one_chain(db)
    _tamper(
        db,
        f"UPDATE integration_audit_log SET seq = -1 WHERE id = {first.id}",
        f"UPDATE integration_audit_log SET seq = {first.seq} WHERE id = {second.id}",
        f"UPDATE integration_audit_log SET seq = {second.seq} WHERE id = {first.id}",
    )
    report = _verify(db)
    assert report.ids("reordered") == (first.id,)
    # both rows, and the row after them, which links to a hash no longer before it
    assert set(report.ids("altered")) >= {first.id, second.id}


_LAST_PAIR = "(SELECT max(id) FROM integration_audit_log WHERE actor = 'pair')"
_FORGED = (
    "INSERT INTO integration_audit_log SELECT 999, x.t, 'mallory', 'prefect_integrations', "
    "'keys.rotate', NULL, NULL, 'success', '{{}}', l.hash, {hash}, 2, l.chain, l.seq + 1 "
    "FROM integration_audit_log l, (SELECT clock_timestamp() AS t) x WHERE l.id = {after}"
)


def test_a_forged_row_is_altered(db: Database) -> None:
    """A row written around the trigger, with a hash that is not its own."""
    _two_in_one_chain(db)
    _tamper(db, _FORGED.format(hash="l.hash", after=_LAST_PAIR))
    assert _verify(db).ids("altered") == (999,)


def test_a_row_with_a_correct_hash_at_the_end_of_a_chain_looks_appended(db: Database) -> None:
    """Hashed as the trigger would, a row added at the end of a chain looks appended, and
    is indistinguishable from a later append; a checkpoint shows a changed or removed row
    up to its heads (test_audit_seals.py)."""
    _, second = _two_in_one_chain(db)
    before = {c.chain: c.head for c in _verify(db).chains}
    hashed = (
        "integration_audit_hash(l.hash, ROW(999, x.t, 'mallory', 'prefect_integrations', "
        "'keys.rotate', NULL, NULL, 'success', '{}', l.hash, NULL, 2, l.chain, l.seq + 1)"
        "::integration_audit_log)"
    )
    _tamper(db, _FORGED.format(hash=hashed, after=_LAST_PAIR))
    report = _verify(db)
    assert report.ok
    assert {c.chain: c.head for c in report.chains}[second.chain] != before[second.chain]


def test_a_row_in_a_chain_that_does_not_exist_is_inserted(db: Database) -> None:
    _append(db, 1)
    _tamper(
        db,
        "ALTER TABLE integration_audit_log DROP CONSTRAINT ck_integration_audit_log_chain",
        "INSERT INTO integration_audit_log SELECT 998, occurred_at, 'mallory', db_role, action, "
        "instance_id, integration_id, outcome, details, NULL, hash, version, 500, 1 "
        "FROM integration_audit_log LIMIT 1",
    )
    report = _verify(db)
    assert 998 in report.ids("inserted") and 998 in report.ids("altered")


def test_a_replaced_hash_function_is_named(db: Database) -> None:
    _append(db, 2)
    _tamper(
        db,
        "CREATE OR REPLACE FUNCTION integration_audit_hash(prev bytea, r integration_audit_log) "
        "RETURNS bytea LANGUAGE sql STABLE AS $$ SELECT r.hash $$",
    )
    report = _verify(db)
    assert [(p.kind, p.detail) for p in report.problems] == [
        ("function", "integration_audit_hash differs from its expected source")
    ]


@pytest.mark.parametrize(
    ("statement", "detail"),
    [
        (
            "ALTER TABLE integration_audit_log ALTER COLUMN id "
            "SET DEFAULT nextval('integration_audit_log_id_seq')",
            "the default of id is not the expected one",
        ),
        (
            "ALTER TABLE integration_audit_log ALTER COLUMN db_role SET DEFAULT 'auditor'",
            "the default of db_role is not the expected one",
        ),
        (
            "ALTER TABLE integration_audit_log ALTER COLUMN occurred_at DROP DEFAULT",
            "the default of occurred_at is not the expected one",
        ),
        (
            "ALTER TABLE integration_audit_log ALTER COLUMN seq SET DEFAULT 1",
            "seq has a default",
        ),
        (
            "ALTER SEQUENCE integration_audit_log_id_seq CACHE 20",
            "the id sequence caches, cycles or counts down",
        ),
        (
            "ALTER TABLE integration_audit_log ALTER COLUMN id SET DEFAULT CASE WHEN "
            "pg_current_xact_id() IS NOT NULL THEN nextval('prefect_integrations_id_seq') END",
            "the default of id does not draw from the id column's sequence",
        ),
        (
            "GRANT INSERT ON integration_audit_log TO prefect_integrations_runtime",
            "prefect_integrations_runtime may INSERT every column",
        ),
        (
            "GRANT INSERT (occurred_at), UPDATE (details) ON integration_audit_log TO PUBLIC",
            "PUBLIC may INSERT occurred_at",
        ),
        (
            "GRANT DELETE, TRUNCATE ON integration_audit_log TO prefect_integrations_admin",
            "prefect_integrations_admin may DELETE the table",
        ),
    ],
)
def test_a_changed_default_or_a_wider_grant_is_named(
    db: Database, runtime_db: Database, admin_db: Database, statement: str, detail: str
) -> None:
    """The defaults number and stamp rows; roles may write a row's content and seal it."""
    _append(db, 1)
    assert _verify(db).ok
    with db.transaction() as s:
        s.execute(sa.text("CREATE SEQUENCE prefect_integrations_id_seq"))
        s.execute(sa.text(statement))
    details = [p.detail for p in _verify(db).problems]
    assert detail in details and {p.kind for p in _verify(db).problems} == {"table"}, details


@pytest.mark.parametrize(
    ("statement", "detail"),
    [
        (
            "ALTER TABLE integration_audit_log ENABLE REPLICA TRIGGER "
            "integration_audit_refuse_change",
            "integration_audit_refuse_change is disabled",
        ),
        (
            "DROP TRIGGER integration_audit_refuse_truncate ON integration_audit_log",
            "integration_audit_refuse_truncate is missing",
        ),
        (
            "CREATE TRIGGER zz_after BEFORE INSERT ON integration_audit_log "
            "FOR EACH ROW EXECUTE FUNCTION integration_audit_refuse()",
            "zz_after is not one of the log's triggers",
        ),
        (
            "CREATE RULE forget AS ON INSERT TO integration_audit_log DO INSTEAD NOTHING",
            "rule forget rewrites statements on the log",
        ),
        (
            "ALTER FUNCTION integration_audit_refuse() SECURITY DEFINER",
            "integration_audit_refuse runs as its owner",
        ),
        (
            "ALTER FUNCTION integration_audit_refuse() SET search_path = mallory",
            "integration_audit_refuse changes settings when it runs",
        ),
        (
            "CREATE TRIGGER integration_audit_append BEFORE INSERT ON integration_audit_log "
            "FOR EACH ROW EXECUTE FUNCTION integration_audit_refuse()",
            "integration_audit_append is not one of the log's triggers",
        ),
    ],
)
def test_other_changes_to_the_guard_are_named(db: Database, statement: str, detail: str) -> None:
    _append(db, 1)
    with db.transaction() as s:
        s.execute(sa.text(statement))
    assert [p.detail for p in _verify(db).problems] == [detail]


# --------------------------------------------------------------------------------------
# Appends in parallel
# --------------------------------------------------------------------------------------

WRITERS = 8
PER_WRITER = 200


def _writer(url: str, name: str, start: Any) -> None:
    database = Database.from_url(url)
    try:
        start.wait()
        for i in range(PER_WRITER):
            with database.transaction() as s:
                audit.record(s, action=AuditAction.METHOD_CALL, actor=name, details={"i": i})
                if i % 3 == 0:  # several rows in one transaction
                    audit.record(s, action=AuditAction.METHOD_CALL, actor=name, details={"i": -i})
    finally:
        database.dispose()


def _sealer(url: str, start: Any, stop: Any) -> None:
    database = Database.from_url(url)
    try:
        start.wait()
        while not stop.is_set():
            seal_pending(database, batch=50)
    finally:
        database.dispose()


def test_writers_in_several_processes_lose_no_row_and_break_no_chain(db: Database) -> None:
    """Writers append while two sealers chain their rows: every row is sealed once, in id
    order, with no gap and no fork."""
    context = multiprocessing.get_context("spawn")
    start, stop = context.Event(), context.Event()
    workers = [
        context.Process(target=_writer, args=(db.url, f"w{i}", start)) for i in range(WRITERS)
    ]
    sealers = [context.Process(target=_sealer, args=(db.url, start, stop)) for _ in range(2)]
    for process in workers + sealers:
        process.start()
    start.set()
    for worker in workers:
        worker.join(timeout=300)
    stop.set()
    for sealer in sealers:
        sealer.join(timeout=300)
    assert [p.exitcode for p in workers + sealers] == [0] * (WRITERS + 2)
    seal_pending(db)
    report = _verify(db)
    per_writer = PER_WRITER + len(range(0, PER_WRITER, 3))
    assert report.ok, report.problems[:10]
    assert (report.rows, report.unsealed) == (WRITERS * per_writer, 0)
    assert [(c.chain, c.rows, c.seq) for c in report.chains] == [(0, report.rows, report.rows)]
    with db.transaction() as s:
        actors: Counter[str] = Counter(
            dict(
                s.execute(
                    sa.text("SELECT actor, count(*) FROM integration_audit_log GROUP BY actor")
                ).all()
            )
        )
        in_id_order = s.execute(
            sa.text(
                "SELECT bool_and(seq = n) FROM (SELECT seq, row_number() OVER (ORDER BY id) "
                "AS n FROM integration_audit_log) x"
            )
        ).scalar_one()
    assert actors == {f"w{i}": per_writer for i in range(WRITERS)}
    assert in_id_order


def test_verify_reads_rows_through_a_server_side_cursor(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows come in pages from a cursor on the server, so memory does not grow with the log."""
    from prefect_integrations.store import audit_verify

    _append(db, 5)
    monkeypatch.setattr(audit_verify, "PAGE", 2)
    with db.transaction() as s:
        rows = audit_verify._rows(s, None)
        next(rows)
        open_cursors = s.connection().exec_driver_sql("SELECT count(*) FROM pg_cursors").scalar()
        assert open_cursors == 1
        assert len(list(rows)) == 4
