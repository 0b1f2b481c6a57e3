"""`audit archive`: move old audit rows to a signed, verifiable file, then cut the chains.

The file is gzip-compressed JSON lines::

    {"format": "prefect-integrations.audit-archive", "version": 1, "created_at": ...,
     "before": ...}                                   the header
    {"id": 1, "version": 2, "chain": 0, "seq": 1, "occurred_at": "2026-01-02 03:04:05.1",
     "actor": ..., "db_role": ..., "action": ..., "instance_id": ..., "integration_id": ...,
     "outcome": ..., "details": "<the jsonb's text>", "prev_hash": hex, "hash": hex}
    ...                                               one line per row, by chain and seq
    {"format": ..., "trailer": true, "rows": N, "rows_sha256": hex, "chains": [...],
     "key_id": ..., "signature": ...}                 the signed trailer

``occurred_at`` and ``details`` are kept as the text the hash covers, so
`verify_archive` recomputes every row's hash (`audit_chain.row_hash`) and each chain's
links without a database. The trailer's signature (HMAC-SHA256 under a keyring subkey,
`audit_seals.sign_document`) covers the header's fields, the chains cut and the SHA-256
of the row lines.

`archive` runs in one transaction: it verifies the log (it refuses to archive a broken
one), writes the file next to its destination and renames it into place, appends a cut
to each chain (`store.audit_archive.cut`) and deletes the rows. If the transaction
fails, the file is removed: the rows are either in the log or in the file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_integrations.audit_seals import check_document, sign_document
from prefect_integrations.db import Database
from prefect_integrations.exceptions import AuditChainBroken, ValidationError, quote
from prefect_integrations.keyring import Keyring
from prefect_integrations.store.audit_archive import (
    ARCHIVE_COLUMNS,
    PlannedCut,
    archived_rows,
    cut,
    lock_archives,
    plan_cuts,
)
from prefect_integrations.store.audit_chain import row_hash
from prefect_integrations.store.audit_verify import verify

__all__ = ["ARCHIVE_FORMAT", "ArchiveReport", "ArchiveResult", "archive", "verify_archive"]

ARCHIVE_FORMAT = "prefect-integrations.audit-archive"
_VERSION = 1
ARCHIVE_PURPOSE = b"prefect-integrations audit-archive v1"


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """What `archive` did: the rows moved to ``path`` and the cut of each chain."""

    path: Path
    rows: int
    cuts: tuple[PlannedCut, ...]
    file_sha256: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "path": str(self.path),
            "rows": self.rows,
            "file_sha256": self.file_sha256,
            "cuts": [c.as_dict() for c in self.cuts],
        }


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def _row_document(row: Any) -> dict[str, Any]:
    document = {name: getattr(row, name) for name in ARCHIVE_COLUMNS}
    for name in ("prev_hash", "hash"):
        value = document[name]
        document[name] = bytes(value).hex() if value is not None else None
    return document


def _write(
    path: Path,
    header: dict[str, Any],
    rows: Iterator[Any],
    cuts: list[PlannedCut],
    keyring: Keyring,
) -> int:
    """Write the file at ``path`` (header, rows, signed trailer); the rows written."""
    digest = hashlib.sha256()
    count = 0
    with path.open("xb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
        out.write(_line(header))
        for row in rows:
            line = _line(_row_document(row))
            digest.update(line)
            out.write(line)
            count += 1
        trailer = sign_document(
            keyring,
            ARCHIVE_PURPOSE,
            {
                **header,
                "trailer": True,
                "rows": count,
                "rows_sha256": digest.hexdigest(),
                "chains": [c.as_dict() for c in cuts],
            },
        )
        out.write(_line(trailer))
        out.close()
        raw.flush()
        os.fsync(raw.fileno())
    return count


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive(
    db: Database, keyring: Keyring, *, before: datetime, to: Path, actor: str
) -> ArchiveResult:
    """Move every chain's rows older than ``before`` to the file ``to`` (see the module).

    Refuses an existing ``to`` and a log that does not verify. Nothing older: no file,
    no cut, ``rows == 0``.
    """
    target = to.expanduser().absolute()
    subject = f"archive file {quote(str(to), limit=1000)}"
    if target.exists() or target.is_symlink():
        raise ValidationError(subject, [], "already exists; archives are never overwritten")
    if not target.parent.is_dir():
        raise ValidationError(subject, [], f"no such folder: {target.parent}")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    created = False
    try:
        with db.transaction("archive the audit log") as session:
            lock_archives(session)
            report = verify(session)
            if not report.ok:
                raise AuditChainBroken(
                    "The audit log does not verify; nothing was archived "
                    "(run `prefect-integrations audit verify` for the problems)"
                )
            cuts = plan_cuts(session, before)
            if not cuts:
                return ArchiveResult(target, 0, (), "")
            header = {
                "format": ARCHIVE_FORMAT,
                "version": _VERSION,
                "created_at": _timestamp(datetime.now(UTC)),
                "before": _timestamp(before),
            }
            rows = _write(partial, header, archived_rows(session, cuts), cuts, keyring)
            os.replace(partial, target)
            created = True
            file_sha256 = _sha256(target)
            details = {"before": header["before"], "file": target.name, "file_sha256": file_sha256}
            deleted = cut(session, cuts, actor=actor, details=details)
            if deleted != rows:
                raise AuditChainBroken(
                    f"The archive read {rows} rows but would delete {deleted}; nothing was archived"
                )
        return ArchiveResult(target, rows, tuple(cuts), file_sha256)
    except BaseException:
        partial.unlink(missing_ok=True)
        if created:
            target.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------
# Verifying a file
# --------------------------------------------------------------------------------------


@dataclass
class ArchiveReport:
    """What `verify_archive` found: rows, chains (first seq, through seq) and problems."""

    rows: int = 0
    chains: dict[int, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    created_at: str | None = None
    before: str | None = None

    @property
    def ok(self) -> bool:
        """True when the signature, every row's hash and every link hold."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "rows": self.rows,
            "created_at": self.created_at,
            "before": self.before,
            "chains": [
                {"chain": c, "first_seq": first, "through_seq": last}
                for c, (first, last) in sorted(self.chains.items())
            ],
            "problems": self.problems[:1000],
        }


def _lines(path: Path, subject: str) -> Iterator[tuple[int, bytes]]:
    try:
        with gzip.open(path, "rb") as file:
            yield from enumerate(file, start=1)
    except FileNotFoundError:
        raise ValidationError(subject, [], "no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ValidationError(subject, [], f"not a complete gzip file ({exc})") from None


def _parse(line: bytes, subject: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise ValidationError(subject, [f"line {number}"], "not valid JSON") from None
    if not isinstance(value, dict):
        raise ValidationError(subject, [f"line {number}"], "must be a JSON object")
    return value


#: The fields of an archived row `row_hash` takes by their own name.
_HASHED = tuple(name for name in ARCHIVE_COLUMNS if name not in ("id", "prev_hash", "hash"))


def _check_row(
    doc: dict[str, Any], last: dict[int, tuple[int, str]], report: ArchiveReport, where: str
) -> None:
    try:
        values = {name: doc[name] for name in _HASHED}
        prev = bytes.fromhex(doc["prev_hash"]) if doc["prev_hash"] is not None else None
        expected = row_hash(prev, row_id=doc["id"], **values)
    except (KeyError, TypeError, ValueError, AttributeError):
        report.problems.append(f"{where}: not an audit row")
        return
    chain, seq = doc["chain"], doc["seq"]
    if expected.hex() != doc["hash"]:
        report.problems.append(f"{where} (id {doc['id']}): hash does not match the row")
    previous = last.get(chain)
    if previous is not None:
        if seq != previous[0] + 1:
            report.problems.append(f"{where} (id {doc['id']}): seq {seq} after {previous[0]}")
        elif doc["prev_hash"] != previous[1]:
            report.problems.append(f"{where} (id {doc['id']}): does not link to the row before")
    elif seq != 1 and doc["prev_hash"] is None:
        report.problems.append(f"{where} (id {doc['id']}): starts chain {chain} without a link")
    first = report.chains.get(chain, (seq, seq))[0]
    report.chains[chain] = (first, seq)
    last[chain] = (seq, doc["hash"])


def verify_archive(path: Path, keyring: Keyring) -> ArchiveReport:
    """Check an archive file: its signature, the rows' digest, every hash and link."""
    subject = f"archive file {quote(str(path), limit=1000)}"
    report = ArchiveReport()
    digest = hashlib.sha256()
    last: dict[int, tuple[int, str]] = {}
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    for number, line in _lines(path, subject):
        if trailer is not None:
            report.problems.append(f"line {number}: after the signed trailer")
            break
        document = _parse(line, subject, number)
        if header is None:
            if document.get("format") != ARCHIVE_FORMAT or document.get("version") != _VERSION:
                raise ValidationError(subject, ["line 1", "format"], f"must be {ARCHIVE_FORMAT!r}")
            header = document
        elif document.get("trailer") is True:
            trailer = document
        else:
            digest.update(line)
            report.rows += 1
            _check_row(document, last, report, f"line {number}")
    if header is None or trailer is None:
        raise ValidationError(subject, [], "ends before its signed trailer (cut short)")
    check_document(keyring, ARCHIVE_PURPOSE, trailer, subject=f"{subject} trailer")
    report.created_at, report.before = trailer.get("created_at"), trailer.get("before")
    if any(trailer.get(k) != v for k, v in header.items()):
        report.problems.append("the header differs from the signed trailer")
    if trailer.get("rows") != report.rows or trailer.get("rows_sha256") != digest.hexdigest():
        report.problems.append("the rows differ from those the trailer signed")
    signed = {c.get("chain"): c for c in trailer.get("chains", []) if isinstance(c, dict)}
    for chain, (first, through) in report.chains.items():
        planned = signed.pop(chain, None)
        if (
            planned is None
            or (planned.get("first_seq"), planned.get("through_seq")) != (first, through)
            or planned.get("through_hash") != last[chain][1]
        ):
            report.problems.append(f"chain {chain}: rows differ from the cut the trailer signed")
    for missing in sorted(signed, key=str):
        report.problems.append(f"chain {missing}: cut in the trailer, no rows in the file")
    return report
