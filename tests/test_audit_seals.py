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
    parse_checkpoint,
    sign_document,
    take_checkpoint,
)
from prefect_integrations.db import Database
from prefect_integrations.exceptions import AuditChainBroken, PermissionDenied, ValidationError
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.store import audit
from prefect_integrations.store.audit import AuditAction

from .test_audit_chains import _append, _tamper

ACTOR = "archivist"


def _checkpoint(db: Database, keyring: Keyring) -> Checkpoint:
    with db.transaction() as s:
        return take_checkpoint(s, keyring)


def _verify(db: Database, checkpoint: Checkpoint | None = None) -> audit.VerifyReport:
    with db.transaction() as s:
        return audit.verify(s, checkpoint.chains if checkpoint else None)


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
    """``n`` rows in one chain (one transaction holds one chain)."""
    with db.transaction() as s:
        for i in range(n):
            audit.record(s, action=AuditAction.METHOD_CALL, actor="one", details={"i": i})


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
    """The trigger numbers the next row where the cut chain ends: the head is another row."""
    _one_chain(db, 4)
    checkpoint = _checkpoint(db, keyring)
    last = _last(db)
    _tamper(db, f"DELETE FROM integration_audit_log WHERE id = {last.id}")
    with db.transaction() as s:
        s.execute(
            sa.text("SELECT set_config('prefect_integrations.audit_chain', :c, true)"),
            {"c": str(last.chain)},
        )
        audit.record(s, action=AuditAction.METHOD_CALL, actor="later")
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

    report = _verify(db)
    assert report.ok, report.problems
    # the recent rows and one cut per chain archived
    assert report.rows == 2 + len(result.cuts)
    assert {c.chain for c in report.cuts} == {c.chain for c in result.cuts}
    assert all(c.details["file_sha256"] == result.file_sha256 for c in report.cuts)
    # a checkpoint from before the archive: its rows are here or archived by a cut
    before = _verify(db, old_checkpoint)
    assert before.ok, before.problems
    assert (before.covered_rows, before.archived_since) == (0, 8)
    # the next checkpoint covers the cut
    after = _checkpoint(db, keyring)
    assert after.rows == report.rows and _verify(db, after).ok

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
    assert _verify(db).ok, _verify(db).problems
    assert verify_archive(tmp_path / "2.gz", keyring).ok
    # the second file continues the chains the first ended
    assert min(s for s, _ in verify_archive(tmp_path / "2.gz", keyring).chains.values()) > 1


def test_nothing_older_archives_nothing(db: Database, keyring: Keyring, tmp_path: Path) -> None:
    _append(db, 2)
    result = _archive(db, keyring, tmp_path / "a.gz", before=_now(db) - timedelta(days=1))
    assert result.rows == 0 and not (tmp_path / "a.gz").exists()
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
        s.execute(
            sa.text("SELECT set_config('prefect_integrations.audit_chain', :c, true)"),
            {"c": str(chain)},
        )
        audit.record(s, action=AuditAction.AUDIT_ARCHIVE, actor=ACTOR, details={"through_seq": 1})
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
    report = _verify(db)
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
