"""Signed checkpoints and archives of the audit log.

A checkpoint (`audit_seals`) lets `verify` see what the rows alone cannot: a chain's
newest rows removed (a cut tail) or rewritten with hashes computed as the trigger would.
An archive (`audit_archive`) moves old rows to a signed file and cuts the chains in a way
`verify` accepts, with or without a checkpoint taken before it. Tampering is done as the
test cluster's superuser with the guard triggers off, as in test_audit_chains.py.
"""

from __future__ import annotations

import gzip
import json
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from prefect_integrations.audit_archive import archive, verify_archive
from prefect_integrations.audit_seals import (
    CHECKPOINT_PURPOSE,
    Checkpoint,
    cut_is_authentic,
    database_label,
    loads_strict,
    newest,
    parse_checkpoint,
    sign_document,
    take_checkpoint,
)
from prefect_integrations.db import Database
from prefect_integrations.exceptions import AuditChainBroken, PermissionDenied, ValidationError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction, AuditRow
from prefect_integrations.store.audit_chain import CHAINS, LOCK_CLASS
from prefect_integrations.store.audit_seal import seal_pending, seal_rows

from .test_audit_chains import _append, _tamper

ACTOR = "archivist"


def _checkpoint(db: Database, keyring: Keyring, previous: Checkpoint | None = None) -> Checkpoint:
    """Seal, then sign (as `audit checkpoint` and the maintenance runs do)."""
    seal_pending(db)
    with db.transaction() as s:
        return take_checkpoint(s, keyring, database=database_label(db.url), previous=previous)


def _verify(
    db: Database, checkpoint: Checkpoint | None = None, keyring: Keyring | None = None
) -> audit.VerifyReport:
    """Verify; with ``keyring``, cuts signed with it are accepted."""
    ring = keyring
    with db.transaction() as s:
        return audit.verify(
            s,
            checkpoint.chains if checkpoint else None,
            cut_check=(lambda c, d: cut_is_authentic(ring, c, d)) if ring else None,
        )


def _kinds(report: audit.VerifyReport) -> set[str]:
    return {p.kind for p in report.problems}


def _last(db: Database) -> Any:
    with db.transaction() as s:
        return s.execute(
            sa.text("SELECT id, chain, seq FROM integration_audit_log ORDER BY id DESC LIMIT 1")
        ).one()


def _now(db: Database) -> datetime:
    with db.transaction() as s:
        return s.execute(sa.text("SELECT clock_timestamp()")).scalar_one()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------
# The checkpoint document
# --------------------------------------------------------------------------------------


def test_a_checkpoint_round_trips_and_covers_every_row(db: Database, keyring: Keyring) -> None:
    _append(db, 5)
    checkpoint = _checkpoint(db, keyring)
    assert checkpoint.rows == 5 == sum(c.rows for c in checkpoint.chains)
    assert checkpoint.key_id == keyring.primary_id
    assert checkpoint.chains == _verify(db).chains
    again = parse_checkpoint(json.loads(checkpoint.to_json()), keyring, subject="cp")
    assert again == checkpoint
    report = _verify(db, again)
    assert report.ok and report.covered_rows == 5 and report.archived_since == 0


def test_appends_after_a_checkpoint_keep_it_valid(db: Database, keyring: Keyring) -> None:
    _append(db, 3)
    checkpoint = _checkpoint(db, keyring)
    _append(db, 4)
    report = _verify(db, checkpoint)
    assert report.ok and report.rows == 7 and report.covered_rows == 3


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d | {"rows": d["rows"] + 1}, "$.signature"),
        (lambda d: d | {"created_at": "2020-01-01T00:00:00.000000Z"}, "$.signature"),
        (lambda d: d | {"chains": d["chains"][:-1]}, "$.signature"),
        (lambda d: d | {"signature": "AAAA"}, "$.signature"),
        (lambda d: {k: v for k, v in d.items() if k != "signature"}, "$.signature"),
        (lambda d: d | {"key_id": "elsewhere"}, "$.key_id"),
        (lambda d: d | {"format": "something"}, "$.format"),
        (lambda d: d | {"version": 2}, "$.version"),
    ],
)
def test_a_changed_checkpoint_is_refused_naming_the_field(
    db: Database, keyring: Keyring, change: Any, path: str
) -> None:
    _append(db, 2)
    document = _checkpoint(db, keyring).as_dict()
    with pytest.raises(ValidationError) as caught:
        parse_checkpoint(change(document), keyring, subject="checkpoint file 'cp.json'")
    assert str(caught.value).startswith(f"checkpoint file 'cp.json' is invalid at {path}")


def test_a_checkpoint_of_another_keyring_is_refused(db: Database, keyring: Keyring) -> None:
    _append(db, 1)
    document = _checkpoint(db, keyring).as_dict()
    other = parse_keyring(f"{keyring.primary_id}:{generate_key()}")
    with pytest.raises(ValidationError, match=r"\$\.signature: does not match"):
        parse_checkpoint(document, other, subject="cp")
    # a keyring that still holds the old key after a rotation reads it
    rotated = parse_keyring(f"k9:{generate_key()},k1:{keyring.primary.get_secret_value()}")
    assert parse_checkpoint(document, rotated, subject="cp").rows == 1


def test_a_signed_but_malformed_checkpoint_names_the_path(keyring: Keyring) -> None:
    document = sign_document(
        keyring,
        CHECKPOINT_PURPOSE,
        {
            "format": "prefect-integrations.audit-checkpoint",
            "version": 1,
            "created_at": "2026-01-01T00:00:00.000000Z",
            "rows": 1,
            "sequence": 1,
            "previous": None,
            "database": "db@local:5432",
            "chains": [{"chain": 0, "first_seq": 1, "seq": 1, "head": "zz", "rows": 1}],
        },
    )
    with pytest.raises(ValidationError, match=r"at \$\.chains\[0\]\.head: must be a SHA-256"):
        parse_checkpoint(document, keyring, subject="cp")


# --------------------------------------------------------------------------------------
# Every tampering is detected with a checkpoint too; a cut or rewritten tail only with one
# --------------------------------------------------------------------------------------

_PAIR = "(SELECT id FROM integration_audit_log ORDER BY id LIMIT 1 OFFSET 1)"
TAMPERING = {
    "edit": ["UPDATE integration_audit_log SET actor = 'mallory' WHERE id = " + _PAIR],
    "delete": ["DELETE FROM integration_audit_log WHERE id = " + _PAIR],
    "reorder": [
        "UPDATE integration_audit_log SET seq = -seq WHERE seq IN (1, 2)",
        "UPDATE integration_audit_log SET seq = CASE seq WHEN -1 THEN 2 ELSE 1 END WHERE seq < 0",
    ],
    "insert": [
        "INSERT INTO integration_audit_log SELECT 999, occurred_at, 'mallory', db_role, action, "
        "instance_id, integration_id, outcome, details, prev_hash, hash, version, chain, "
        "seq + 1000 FROM integration_audit_log ORDER BY id LIMIT 1"
    ],
    "replaced function": [
        "CREATE OR REPLACE FUNCTION integration_audit_hash(prev bytea, r integration_audit_log) "
        "RETURNS bytea LANGUAGE sql STABLE AS $$ SELECT r.hash $$"
    ],
    "disabled trigger": [
        "ALTER TABLE integration_audit_log DISABLE TRIGGER integration_audit_refuse_change"
    ],
}


def _one_chain(db: Database, n: int) -> None:
    """``n`` rows appended in one transaction, then sealed."""
    with db.transaction() as s:
        for i in range(n):
            audit.record(s, action=AuditAction.METHOD_CALL, actor="one", details={"i": i})
    seal_pending(db)


def _in_chain(s: Any, chain: int, row: AuditRow) -> int:
    """Append ``row`` and seal it into ``chain`` at once (as an archive seals its cut)."""
    row_id = audit.record_one(s, row)
    seal_rows(s, chain, [row_id])
    return row_id


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_each_tampering_is_detected(
    db: Database, keyring: Keyring, tampering: str, with_checkpoint: bool
) -> None:
    _one_chain(db, 4)
    checkpoint = _checkpoint(db, keyring) if with_checkpoint else None
    assert _verify(db, checkpoint).ok
    _tamper(db, *TAMPERING[tampering])
    report = _verify(db, checkpoint)
    assert not report.ok, tampering


def test_a_cut_tail_is_detected_only_with_a_checkpoint(db: Database, keyring: Keyring) -> None:
    _one_chain(db, 4)
    checkpoint = _checkpoint(db, keyring)
    last = _last(db)
    _tamper(db, f"DELETE FROM integration_audit_log WHERE id = {last.id}")
    assert _verify(db).ok  # a shorter chain is a valid chain
    [problem] = _verify(db, checkpoint).problems
    assert (problem.kind, problem.chain, problem.seq, problem.last_seq) == (
        "cut",
        last.chain,
        last.seq,
        last.seq - 1,
    )


def test_a_cut_tail_followed_by_new_rows_is_detected(db: Database, keyring: Keyring) -> None:
    """The sealer numbers the next row where the cut chain ends: the head is another row."""
    _one_chain(db, 4)
    checkpoint = _checkpoint(db, keyring)
    last = _last(db)
    _tamper(db, f"DELETE FROM integration_audit_log WHERE id = {last.id}")
    with db.transaction() as s:
        audit.record(s, action=AuditAction.METHOD_CALL, actor="later")
    seal_pending(db)
    assert _verify(db).ok
    assert _kinds(_verify(db, checkpoint)) == {"rewritten"}


def test_a_rewritten_tail_with_correct_hashes_is_detected_only_with_a_checkpoint(
    db: Database, keyring: Keyring
) -> None:
    _one_chain(db, 3)
    checkpoint = _checkpoint(db, keyring)
    last = _last(db)
    # the owner rewrites the last row and recomputes its hash as the trigger would
    _tamper(
        db,
        "UPDATE integration_audit_log l SET actor = 'mallory' WHERE id = " + str(last.id),
        "UPDATE integration_audit_log l SET hash = integration_audit_hash(l.prev_hash, l) "
        f"WHERE id = {last.id}",
    )
    assert _verify(db).ok
    report = _verify(db, checkpoint)
    assert [(p.kind, p.chain, p.seq) for p in report.problems] == [
        ("rewritten", last.chain, last.seq)
    ]


def test_a_chain_gone_entirely_is_a_cut(db: Database, keyring: Keyring) -> None:
    _one_chain(db, 2)
    checkpoint = _checkpoint(db, keyring)
    _tamper(db, "DELETE FROM integration_audit_log")
    assert _verify(db).ok  # an empty log is intact
    assert _kinds(_verify(db, checkpoint)) == {"cut"}


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------


def _archive(db: Database, keyring: Keyring, path: Path, before: datetime | None = None) -> Any:
    return archive(db, keyring, before=before or _now(db), to=path, actor=ACTOR)


def test_archive_moves_old_rows_and_the_chains_stay_verifiable(
    db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    _one_chain(db, 5)
    _append(db, 3)
    old_checkpoint = _checkpoint(db, keyring)
    moment = _now(db)
    _append(db, 2, actor="recent")
    result = _archive(db, keyring, tmp_path / "a.jsonl.gz", before=moment)
    assert result.rows == 8 and result.path.exists()

    report = _verify(db, keyring=keyring)
    assert report.ok, report.problems
    # the recent rows and one cut per chain archived
    assert report.rows == 2 + len(result.cuts)
    assert {c.chain for c in report.cuts} == {c.chain for c in result.cuts}
    assert all(c.details["file_sha256"] == result.file_sha256 for c in report.cuts)
    # a checkpoint from before the archive: its rows are here or archived by a cut
    before = _verify(db, old_checkpoint, keyring)
    assert before.ok, before.problems
    assert (before.covered_rows, before.archived_since) == (0, 8)
    # the next checkpoint covers the cut
    after = _checkpoint(db, keyring, old_checkpoint)
    assert after.rows == report.rows and _verify(db, after, keyring).ok
    assert (after.sequence, after.previous) == (2, old_checkpoint.signature)

    file = verify_archive(result.path, keyring)
    assert file.ok, file.problems
    assert file.rows == 8 and set(file.chains) == {c.chain for c in result.cuts}
    with db.transaction() as s:
        rows = audit.tail(s, limit=100)
    assert [r.actor for r in rows].count("recent") == 2
    assert {r.action for r in rows} == {"health.check", "audit.archive"}


def test_archive_twice_and_the_cut_of_a_cut(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    _one_chain(db, 3)
    first = _archive(db, keyring, tmp_path / "1.gz")
    _one_chain(db, 2)
    second = _archive(db, keyring, tmp_path / "2.gz")
    assert first.rows == 3
    assert second.rows >= 2  # the new rows and the first archive's cut rows
    assert _verify(db, keyring=keyring).ok, _verify(db, keyring=keyring).problems
    assert verify_archive(tmp_path / "2.gz", keyring).ok
    # the second file continues the chains the first ended, from their cut on
    continued = verify_archive(tmp_path / "2.gz", keyring).chains
    assert {c.chain for c in first.cuts} <= set(continued)
    for cut in first.cuts:
        assert continued[cut.chain][0] == cut.through_seq + 1


def test_nothing_older_archives_nothing(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    _append(db, 2)
    result = _archive(db, keyring, tmp_path / "a.gz", before=_now(db) - timedelta(days=1))
    assert result.rows == 0 and not (tmp_path / "a.gz").exists()
    assert list(tmp_path.iterdir()) == []
    assert _verify(db).rows == 2


def test_archive_refuses_an_existing_file_and_a_broken_log(
    db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    _one_chain(db, 3)
    existing = tmp_path / "exists.gz"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValidationError, match="already exists"):
        _archive(db, keyring, existing)
    assert existing.read_bytes() == b"keep me"
    _tamper(db, "UPDATE integration_audit_log SET actor = 'x' WHERE id = " + _PAIR)
    with pytest.raises(AuditChainBroken, match="nothing was archived"):
        _archive(db, keyring, tmp_path / "b.gz")
    assert not (tmp_path / "b.gz").exists() and _verify(db).rows == 3
    assert [p.name for p in tmp_path.iterdir()] == ["exists.gz"]


def test_an_archive_that_cannot_delete_leaves_rows_and_no_file(
    db: Database, admin_db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    """The admin role may not delete audit rows: the archive fails whole."""
    _one_chain(db, 3)
    with pytest.raises(PermissionDenied):
        _archive(admin_db, keyring, tmp_path / "a.gz", before=_now(db))
    assert list(tmp_path.iterdir()) == []
    report = _verify(db)
    assert report.ok and report.rows == 3 and not report.cuts


def test_the_guard_still_refuses_deletes_no_cut_covers(db: Database) -> None:
    _one_chain(db, 3)
    with pytest.raises(PermissionDenied), db.transaction() as s:
        s.execute(sa.text("DELETE FROM integration_audit_log WHERE seq = 1"))
    # a cut covering seq 1 only: seq 2 stays protected
    with db.transaction() as s:
        chain = s.execute(sa.text("SELECT chain FROM integration_audit_log LIMIT 1")).scalar_one()
        _in_chain(s, chain, AuditRow(AuditAction.AUDIT_ARCHIVE, ACTOR, details={"through_seq": 1}))
        assert s.execute(sa.text("DELETE FROM integration_audit_log WHERE seq = 1")).rowcount == 1  # type: ignore[attr-defined]
    with pytest.raises(PermissionDenied), db.transaction() as s:
        s.execute(sa.text("DELETE FROM integration_audit_log WHERE seq = 2"))
    # the deletion is in the chain, but the cut does not name the removed row's hash
    report = _verify(db)
    assert _kinds(report) == {"missing"} and not report.cuts


def test_writers_lose_no_row_while_an_archive_runs(
    db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    _one_chain(db, 50)
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        while not stop.is_set():
            with db.transaction() as s:
                audit.record(s, action=AuditAction.METHOD_CALL, actor="live")
            written.append(1)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for thread in writers:
        thread.start()
    try:
        result = _archive(db, keyring, tmp_path / "a.gz")
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    report = _verify(db, keyring=keyring)
    assert report.ok, report.problems
    file = verify_archive(tmp_path / "a.gz", keyring)
    assert file.ok
    with db.transaction() as s:
        live = s.execute(
            sa.text("SELECT count(*) FROM integration_audit_log WHERE actor = 'live'")
        ).scalar_one()
    archived_live = result.rows - 50
    assert live + archived_live == len(written)


# --------------------------------------------------------------------------------------
# A changed archive file
# --------------------------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as file:
        return file.read().splitlines(keepends=True)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    with gzip.open(path, "wb") as file:
        file.writelines(lines)


@pytest.fixture
def archived(db: Database, keyring: Keyring, tmp_path: Path) -> Path:
    _one_chain(db, 4)
    path = tmp_path / "a.gz"
    _archive(db, keyring, path)
    return path


def test_an_edited_archived_row_is_named(archived: Path, keyring: Keyring) -> None:
    lines = _lines(archived)
    row = json.loads(lines[2])
    lines[2] = json.dumps(row | {"actor": "mallory"}, separators=(",", ":")).encode() + b"\n"
    _rewrite(archived, lines)
    report = verify_archive(archived, keyring)
    assert not report.ok
    assert f"line 3 (id {row['id']}): hash does not match the row" in report.problems


def test_a_removed_archived_row_is_named(archived: Path, keyring: Keyring) -> None:
    lines = _lines(archived)
    _rewrite(archived, lines[:2] + lines[3:])
    report = verify_archive(archived, keyring)
    assert any("seq 3 after 1" in p for p in report.problems), report.problems
    assert "the rows differ from those the trailer signed" in report.problems


def test_an_archive_cut_short_or_resigned_is_refused(archived: Path, keyring: Keyring) -> None:
    lines = _lines(archived)
    _rewrite(archived, lines[:-1])
    with pytest.raises(ValidationError, match="ends before its signed trailer"):
        verify_archive(archived, keyring)
    trailer = json.loads(lines[-1]) | {"rows": 99}
    _rewrite(archived, [*lines[:-1], json.dumps(trailer).encode() + b"\n"])
    with pytest.raises(ValidationError, match=r"trailer is invalid at \$\.signature"):
        verify_archive(archived, keyring)
    archived.write_bytes(b"not gzip")
    with pytest.raises(ValidationError, match="not a complete gzip file"):
        verify_archive(archived, keyring)


# --------------------------------------------------------------------------------------
# What the database's owner cannot do without the keyring
# --------------------------------------------------------------------------------------


def _forge_cut(s: Any, chain: int, through_seq: int, through_hash: str) -> None:
    """A cut appended and sealed as any writer can: no key involved."""
    details = {
        "file": "audit.jsonl.gz",
        "file_sha256": "0" * 64,
        "through_seq": through_seq,
        "through_hash": through_hash,
        "rows": through_seq,
        "key_id": "k1",
        "mac": "AAAA",
    }
    _in_chain(s, chain, AuditRow(AuditAction.AUDIT_ARCHIVE, ACTOR, details=details))


def test_a_forged_cut_hides_no_row(db: Database, keyring: Keyring) -> None:
    """Triggers on, no keyring: the owner appends a cut and deletes what it covers."""
    _one_chain(db, 6)
    checkpoint = _checkpoint(db, keyring)
    [head] = checkpoint.chains
    with db.transaction() as s:
        _forge_cut(s, head.chain, head.seq, str(head.head))
        deleted = s.execute(
            sa.text("DELETE FROM integration_audit_log WHERE action <> 'audit.archive'")
        ).rowcount  # type: ignore[attr-defined]
    assert deleted == 6  # the guard lets it through: a cut covers the rows
    plain = _verify(db, keyring=keyring)
    [problem] = plain.problems
    assert problem.kind == "missing" and "is not signed with a key of the keyring" in problem.detail
    assert not plain.cuts
    assert not _verify(db, checkpoint, keyring).ok


def test_a_checkpoint_is_not_signed_over_a_cut_tail(db: Database, keyring: Keyring) -> None:
    _one_chain(db, 5)
    first = _checkpoint(db, keyring)
    _one_chain(db, 2)
    second = _checkpoint(db, keyring, first)  # extends the first: only new rows read
    assert (second.sequence, second.previous, second.rows) == (2, first.signature, 7)
    last = _last(db)
    _tamper(db, f"DELETE FROM integration_audit_log WHERE id = {last.id}")
    with pytest.raises(AuditChainBroken, match="does not verify against checkpoint 2"):
        _checkpoint(db, keyring, second)
    # replaying an older checkpoint gains nothing: the highest sequence is chosen
    assert newest([second, first]) == second == newest([first, second])


def test_the_archive_waits_for_another_and_never_overwrites_its_file(
    db: Database, keyring: Keyring, tmp_path: Path
) -> None:
    _one_chain(db, 4)
    before = _now(db)
    target = tmp_path / "a.gz"
    blocker = db.engine.connect()  # another archive holds the lock
    blocker.execute(sa.text("SELECT pg_advisory_lock(:a, 1000000)"), {"a": LOCK_CLASS})
    blocker.commit()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            archive(db, keyring, before=before, to=target, actor=ACTOR)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    with db.transaction() as s:  # wait until it waits for the lock
        for _ in range(600):
            waiting = s.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar_one()
            if waiting:
                break
            s.execute(sa.text("SELECT pg_sleep(0.05)"))
    target.write_bytes(b"the other archive's file")
    blocker.execute(sa.text("SELECT pg_advisory_unlock(:a, 1000000)"), {"a": LOCK_CLASS})
    blocker.close()
    thread.join()
    assert len(errors) == 1 and "already exists" in str(errors[0])
    assert target.read_bytes() == b"the other archive's file"
    assert _verify(db).rows == 4 and [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_an_interrupt_after_the_cut_keeps_the_file(
    db: Database, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect_integrations.audit_archive as archive_module

    _one_chain(db, 4)

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C once the chains are cut
        raise KeyboardInterrupt

    monkeypatch.setattr(archive_module, "ArchiveResult", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _archive(db, keyring, tmp_path / "a.gz")
    assert verify_archive(tmp_path / "a.gz", keyring).rows == 4
    assert _verify(db, keyring=keyring).ok


def test_writers_append_while_chains_are_cut(
    db: Database, keyring: Keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chain is cut in its own transaction: the others stay free for writers."""
    import prefect_integrations.store.audit_archive as store_archive

    for chain in range(CHAINS):  # a row in every chain
        with db.transaction() as s:
            _in_chain(s, chain, AuditRow(AuditAction.HEALTH_CHECK, "t"))
    before = _now(db)
    paused, release = threading.Event(), threading.Event()
    real = store_archive.record_one  # type: ignore[attr-defined]

    def pausing(session: Any, row: Any) -> int:
        written = real(session, row)
        if not paused.is_set():  # the first chain's cut is appended, not committed
            paused.set()
            release.wait(60)
        return written

    monkeypatch.setattr(store_archive, "record_one", pausing)
    thread = threading.Thread(target=lambda: _archive(db, keyring, tmp_path / "a.gz", before))
    thread.start()
    try:
        assert paused.wait(60)
        with db.transaction() as s:  # would wait for every chain if they were all held
            s.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            audit.record(s, action=AuditAction.METHOD_CALL, actor="live")
    finally:
        release.set()
        thread.join()
    report = _verify(db, keyring=keyring)
    assert report.ok, report.problems
    assert len(report.cuts) == CHAINS


def test_a_table_with_row_level_security_is_named(db: Database) -> None:
    _append(db, 1)
    with db.transaction() as s:
        s.execute(sa.text("ALTER TABLE integration_audit_log ENABLE ROW LEVEL SECURITY"))
        s.execute(
            sa.text("CREATE POLICY hide ON integration_audit_log FOR SELECT USING (actor <> 'x')")
        )
    assert {(p.kind, p.detail) for p in _verify(db).problems} == {
        ("table", "integration_audit_log has row-level security on"),
        ("table", "integration_audit_log has 1 row-level policies"),
    }


def test_a_signature_with_extra_characters_is_refused(db: Database, keyring: Keyring) -> None:
    _append(db, 1)
    document = _checkpoint(db, keyring).as_dict()
    signature = document["signature"]
    changed = document | {"signature": signature[:4] + "!!!!" + signature[4:]}
    with pytest.raises(ValidationError, match=r"\$\.signature"):
        parse_checkpoint(changed, keyring, subject="cp")


def test_duplicate_keys_in_a_signed_document_are_refused() -> None:
    with pytest.raises(ValidationError, match="the key 'rows' appears twice"):
        loads_strict('{"rows": 1, "rows": 2}', "checkpoint file 'cp.json'")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": 1, "chain": []}', "line 2: not an audit row"),
        ('{"id": true, "version": 2}', "line 2: not an audit row"),
    ],
)
def test_a_malformed_archived_row_is_a_problem_not_a_crash(
    archived: Path, keyring: Keyring, line: str, problem: str
) -> None:
    lines = _lines(archived)
    _rewrite(archived, [lines[0], line.encode() + b"\n", *lines[1:]])
    report = verify_archive(archived, keyring)
    assert any(p.startswith(problem) for p in report.problems), report.problems


def test_a_deeply_nested_archive_line_is_a_clear_error(archived: Path, keyring: Keyring) -> None:
    lines = _lines(archived)
    _rewrite(archived, [lines[0], b"[" * 100_000 + b"]" * 100_000 + b"\n", *lines[1:]])
    with pytest.raises(ValidationError, match=r"line 2 is invalid at \$: not valid JSON"):
        verify_archive(archived, keyring)
