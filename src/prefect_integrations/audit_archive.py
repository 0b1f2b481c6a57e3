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

`archive` runs one at a time (`store.audit_archive.archive_lock`). It seals the rows
appended so far (`store.audit_seal`), verifies the log (it refuses to archive a broken
one) and writes the file next to its destination in one read-only transaction, links it
into place (never over an existing file) and flushes the folder; then, one transaction
per chain, appends a cut signed with the keyring (`audit_seals.cut_mac`) and deletes the
chain's rows. If the first chain's cut fails, the file is removed; after that the file
is kept (it holds every row planned) and the error names the chains still uncut.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_integrations.audit_seals import (
    check_document,
    cut_is_authentic,
    cut_mac,
    loads_strict,
    sign_document,
)
from prefect_integrations.db import Database
from prefect_integrations.exceptions import AuditChainBroken, AuditError, ValidationError, quote
from prefect_integrations.keyring import Keyring
from prefect_integrations.store.audit_archive import (
    ARCHIVE_COLUMNS,
    PlannedCut,
    archive_lock,
    archived_rows,
    cut_chain,
    plan_cuts,
)
from prefect_integrations.store.audit_chain import row_hash
from prefect_integrations.store.audit_seal import seal_pending
from prefect_integrations.store.audit_verify import verify

__all__ = ["ARCHIVE_FORMAT", "ArchiveReport", "ArchiveResult", "archive", "verify_archive"]

ARCHIVE_FORMAT = "prefect-integrations.audit-archive"
_VERSION = 1
ARCHIVE_PURPOSE = b"prefect-integrations audit-archive v1"
#: Problems `verify_archive` keeps; past this only their number grows.
MAX_PROBLEMS = 1000
#: The longest line `verify_archive` reads (a row's details are at most a few kilobytes).
MAX_LINE = 16 * 1024 * 1024


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


def _discard(path: Path) -> None:
    """Remove a file if it is there (a name the system refuses was never created)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _place(partial: Path, target: Path, subject: str) -> None:
    """Give the written file its name, never over an existing one, durably."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise ValidationError(
            subject, [], "already exists; archives are never overwritten"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _cut_details(
    keyring: Keyring, planned: PlannedCut, header: dict[str, Any], name: str, sha256: str
) -> dict[str, Any]:
    details: dict[str, Any] = {
        "before": header["before"],
        "file": name,
        "file_sha256": sha256,
        "first_seq": planned.first_seq,
        "through_seq": planned.through_seq,
        "through_hash": planned.through_hash,
        "rows": planned.rows,
    }
    return details | cut_mac(keyring, planned.chain, details)


def _read_and_write(
    db: Database, keyring: Keyring, before: datetime, partial: Path
) -> tuple[list[PlannedCut], dict[str, Any], int]:
    """Verify the log, plan the cuts and write the rows they cover to ``partial``."""
    with db.transaction("archive the audit log") as session:
        report = verify(session, cut_check=lambda c, d: cut_is_authentic(keyring, c, d))
        if not report.ok:
            raise AuditChainBroken(
                "The audit log does not verify; nothing was archived "
                "(run `prefect-integrations audit verify` for the problems)"
            )
        cuts = plan_cuts(session, before)
        header = {
            "format": ARCHIVE_FORMAT,
            "version": _VERSION,
            "created_at": _timestamp(datetime.now(UTC)),
            "before": _timestamp(before),
        }
        rows = _write(partial, header, archived_rows(session, cuts), cuts, keyring) if cuts else 0
    return cuts, header, rows


def archive(
    db: Database, keyring: Keyring, *, before: datetime, to: Path, actor: str
) -> ArchiveResult:
    """Move every chain's rows older than ``before`` to the file ``to`` (see the module).

    Refuses an existing ``to`` and a log that does not verify. Nothing older: no file,
    no cut, ``rows == 0``. Each chain is cut in a transaction of its own; if one fails,
    the file is removed only when no chain was cut (else `AuditError` says which were).
    """
    target = to.expanduser().absolute()
    subject = f"archive file {quote(str(to), limit=1000)}"
    try:
        if target.exists() or target.is_symlink():
            raise ValidationError(subject, [], "already exists; archives are never overwritten")
        if not target.parent.is_dir():
            raise ValidationError(subject, [], f"no such folder: {target.parent}")
    except OSError as exc:  # a name the system refuses (too long, ...)
        raise ValidationError(subject, [], exc.strerror or "cannot be used") from None
    except ValueError:  # a NUL character
        raise ValidationError(subject, [], "not a usable file name") from None
    partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(8)}")
    with archive_lock(db):
        seal_pending(db)  # the rows to archive are in a chain
        try:
            cuts, header, rows = _read_and_write(db, keyring, before, partial)
        except OSError as exc:
            _discard(partial)
            raise ValidationError(subject, [], exc.strerror or "cannot be written") from None
        except BaseException:
            _discard(partial)
            raise
        if not cuts:
            return ArchiveResult(target, 0, (), "")
        _place(partial, target, subject)
        file_sha256 = _sha256(target)
        done: list[int] = []
        committing = False
        try:
            for planned in cuts:
                with db.transaction("archive the audit log") as session:
                    details = _cut_details(keyring, planned, header, target.name, file_sha256)
                    deleted = cut_chain(session, planned, actor=actor, details=details)
                    if deleted != planned.rows:
                        raise AuditChainBroken(
                            f"Chain {planned.chain}: the archive holds {planned.rows} rows but "
                            f"{deleted} would be deleted; that chain was not cut"
                        )
                    committing = True
                done.append(planned.chain)
                committing = False
        except BaseException as exc:
            if not done and not committing:
                target.unlink(missing_ok=True)
                raise
            left = [c.chain for c in cuts if c.chain not in done]
            if not isinstance(exc, Exception):
                raise
            raise AuditError(
                f"The archive {target} holds every row planned, but only chains "
                f"{', '.join(map(str, done)) or '(unknown: a commit failed)'} were cut; chains "
                f"{', '.join(map(str, left))} still hold their rows (in the file too): keep "
                f"the file and archive again to a new file ({type(exc).__name__}: {exc})"
            ) from exc
    return ArchiveResult(target, rows, tuple(cuts), file_sha256)


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
    #: problems found beyond `MAX_PROBLEMS` (counted, not kept)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        """True when the signature, every row's hash and every link hold."""
        return not self.problems and not self.more_problems

    def add(self, problem: str) -> None:
        """Keep a problem (up to `MAX_PROBLEMS`, then only count them)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

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
            "problems": self.problems,
            "more_problems": self.more_problems,
        }


def _lines(path: Path, subject: str) -> Iterator[tuple[int, bytes]]:
    number = 0
    try:
        with gzip.open(path, "rb") as file:
            while line := file.readline(MAX_LINE + 1):
                number += 1
                if len(line) > MAX_LINE:
                    raise ValidationError(
                        subject, [f"line {number}"], f"longer than {MAX_LINE} bytes"
                    )
                yield number, line
    except FileNotFoundError:
        raise ValidationError(subject, [], "no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise ValidationError(subject, [], f"not a complete gzip file ({exc})") from None
    except ValueError:  # a NUL character in the name
        raise ValidationError(subject, [], "not a usable file name") from None


def _parse(line: bytes, subject: str, number: int) -> dict[str, Any]:
    value = loads_strict(line, f"{subject} line {number}")
    if not isinstance(value, dict):
        raise ValidationError(subject, [f"line {number}"], "must be a JSON object")
    return value


#: The fields of an archived row `row_hash` takes by their own name.
_HASHED = tuple(name for name in ARCHIVE_COLUMNS if name not in ("id", "prev_hash", "hash"))


#: The type of each field of an archived row.
_TYPES: dict[str, tuple[type, ...]] = {
    **{name: (int,) for name in ("id", "version", "chain", "seq")},
    **{name: (str,) for name in ("occurred_at", "actor", "db_role", "action", "outcome", "hash")},
    **{name: (str, type(None)) for name in ("instance_id", "integration_id", "prev_hash")},
    "details": (str,),
}


def _is_row(doc: dict[str, Any]) -> bool:
    return all(
        name in doc and isinstance(doc[name], types) and not isinstance(doc[name], bool)
        for name, types in _TYPES.items()
    )


def _check_row(
    doc: dict[str, Any], last: dict[int, tuple[int, str]], report: ArchiveReport, where: str
) -> None:
    if not _is_row(doc):
        report.add(f"{where}: not an audit row (a field is missing or of the wrong type)")
        return
    try:
        values = {name: doc[name] for name in _HASHED}
        prev = bytes.fromhex(doc["prev_hash"]) if doc["prev_hash"] is not None else None
        expected = row_hash(prev, row_id=doc["id"], **values)
    except ValueError:
        report.add(f"{where}: not an audit row (prev_hash is not hex)")
        return
    chain, seq = doc["chain"], doc["seq"]
    if expected.hex() != doc["hash"]:
        report.add(f"{where} (id {doc['id']}): hash does not match the row")
    previous = last.get(chain)
    if previous is not None:
        if seq != previous[0] + 1:
            report.add(f"{where} (id {doc['id']}): seq {seq} after {previous[0]}")
        elif doc["prev_hash"] != previous[1]:
            report.add(f"{where} (id {doc['id']}): does not link to the row before")
    elif seq != 1 and doc["prev_hash"] is None:
        report.add(f"{where} (id {doc['id']}): starts chain {chain} without a link")
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
            report.add(f"line {number}: after the signed trailer")
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
        report.add("the header differs from the signed trailer")
    if trailer.get("rows") != report.rows or trailer.get("rows_sha256") != digest.hexdigest():
        report.add("the rows differ from those the trailer signed")
    listed = trailer.get("chains")
    signed = {
        c["chain"]: c
        for c in (listed if isinstance(listed, list) else [])
        if isinstance(c, dict) and type(c.get("chain")) is int
    }
    for chain, (first, through) in report.chains.items():
        planned = signed.pop(chain, None)
        if (
            planned is None
            or (planned.get("first_seq"), planned.get("through_seq")) != (first, through)
            or planned.get("through_hash") != last[chain][1]
        ):
            report.add(f"chain {chain}: rows differ from the cut the trailer signed")
    for missing in sorted(signed):
        report.add(f"chain {missing}: cut in the trailer, no rows in the file")
    return report
