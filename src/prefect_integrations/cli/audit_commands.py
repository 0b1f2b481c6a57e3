"""`prefect-integrations audit ...`: read, seal, verify, checkpoint and archive the audit log."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_integrations.audit_archive import archive as archive_rows
from prefect_integrations.audit_archive import verify_archive as check_archive_file
from prefect_integrations.audit_seals import (
    Checkpoint,
    cut_is_authentic,
    database_label,
    loads_strict,
    parse_checkpoint,
    take_checkpoint,
)
from prefect_integrations.cli._common import (
    check_output_file,
    echo,
    echo_table,
    emit_json,
    runtime,
)
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.store import audit
from prefect_integrations.store.audit_seal import WAIT, seal_pending

app = typer.Typer(help="The append-only audit log.", no_args_is_help=True)


@app.command()
def tail(
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, max=10000)] = 20,
    instance: Annotated[str | None, typer.Option(help="Only this instance")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the newest audit rows."""
    rt = runtime()
    with rt.transaction("read the audit log") as session:
        rows = audit.tail(session, limit=limit, instance_id=instance, action=action)
    if as_json:
        emit_json([r.as_dict() for r in rows])
        return
    echo_table(
        ["ID", "TIME", "ACTOR", "ACTION", "INSTANCE", "OUTCOME", "DETAILS"],
        [
            [
                r.id,
                r.occurred_at.isoformat(timespec="seconds"),
                r.actor,
                r.action,
                r.instance_id or r.integration_id,
                r.outcome,
                _details_text(r.details),
            ]
            for r in rows
        ],
    )


def _details_text(details: Mapping[str, Any]) -> str:
    """``key=value, ...`` (nested values as compact JSON), not a Python dict repr."""
    return ", ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for key, value in details.items()
        if value not in (None, "", [], {})
    )


#: How `verify` names each kind of problem, in the order it prints them.
_HEADINGS = {
    "altered": "altered rows",
    "missing": "missing rows",
    "reordered": "reordered rows",
    "inserted": "inserted rows",
    "cut": "cut from the end of a chain (checkpoint)",
    "rewritten": "history rewritten (checkpoint)",
    "table": "table",
    "trigger": "triggers",
    "function": "functions",
}


def _describe(problem: audit.Problem) -> str:
    """One problem as it is listed: the row's id, or where in which chain."""
    if problem.kind == "missing":
        seqs = f"seq {problem.seq}"
        if problem.last_seq is not None and problem.last_seq != problem.seq:
            seqs = f"seq {problem.seq}-{problem.last_seq}"
        around = [
            f"after id {problem.id}" if problem.id is not None else "",
            f"before id {problem.next_id}" if problem.next_id is not None else "",
        ]
        where = ", ".join(a for a in around if a)
        return f"chain {problem.chain} {seqs}" + (f" ({where})" if where else "")
    if problem.kind in ("altered", "reordered", "inserted"):
        return str(problem.id)
    return problem.detail


def _read_checkpoint_file(path: Path, subject: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValidationError(subject, [], "no such file") from None
    except OSError as exc:
        raise ValidationError(subject, [], exc.strerror or "unreadable") from None
    except ValueError:  # a NUL character
        raise ValidationError(subject, [], "not a usable file name") from None
    return loads_strict(data, subject)


def _load_checkpoint(reference: str) -> Checkpoint:
    """A checkpoint from a file, or from a Prefect artifact (``artifact:KEY|ID``)."""
    from prefect_integrations.maintenance.checkpoints import (
        ARTIFACT_PREFIX,
        read_artifact_checkpoint,
    )

    rt = runtime()
    database = database_label(rt.db.url)
    if reference.startswith(ARTIFACT_PREFIX):
        checkpoint = read_artifact_checkpoint(reference, rt.keyring, database)
        subject = f"checkpoint artifact {reference!r}"
    else:
        subject = f"checkpoint file {reference!r}"
        checkpoint = parse_checkpoint(
            _read_checkpoint_file(Path(reference), subject), rt.keyring, subject=subject
        )
    if checkpoint.database != database:
        raise ValidationError(
            subject,
            ["database"],
            f"is a checkpoint of {checkpoint.database}, not of {database} (this database)",
        )
    return checkpoint


@app.command()
def seal(
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for open transactions that may still append (then exit 1)",
        ),
    ] = WAIT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Chain the rows appended since the last seal (every maintenance run also does).

    Appends only number and stamp a row; sealing links the new rows, in id order, into
    the hash chain that `audit verify` checks and `audit checkpoint` signs.
    """
    rt = runtime()
    report = seal_pending(rt.db, wait=wait)
    if as_json:
        emit_json(report.as_dict())
    else:
        echo(
            f"sealed {_count(report.rows, 'row')} into chain {report.chain}: "
            f"seq {report.seq}, head {report.head or '-'}"
        )


@app.command()
def verify(
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            metavar="FILE|artifact:KEY|artifact:ID",
            help="Also prove the log still holds everything this signed checkpoint covered",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Recompute every hash; exit 1 if a row, trigger or function was changed or removed.

    Read-only. Prints each chain's last seq and hash, and how many rows await sealing
    (`audit seal`: they are checked once sealed). Without a checkpoint, the newest rows of a
    chain removed (a cut tail) or rows appended by someone computing the hashes look
    like a shorter or longer intact chain; with ``--checkpoint`` (a file from `audit
    checkpoint`, or the artifact each maintenance run publishes) each chain must still
    hold the checkpoint's head unchanged and every row before it that no archive cut.
    """
    covered = _load_checkpoint(checkpoint) if checkpoint is not None else None
    rt = runtime()
    with rt.transaction("verify the audit log") as session:
        report = audit.verify(
            session,
            covered.chains if covered else None,
            cut_check=lambda chain, details: cut_is_authentic(rt.keyring, chain, details),
        )
    if as_json:
        emit_json(
            report.as_dict()
            | (
                {"checkpoint": {"created_at": covered.created_at, "rows": covered.rows}}
                if covered
                else {}
            )
        )
    elif report.ok:
        echo(
            f"audit log intact: {_count(report.rows, 'row')} in "
            f"{_count(len(report.chains), 'chain')}"
        )
        for chain in report.chains:
            start = (
                f"seq {chain.first_seq}-{chain.seq}" if chain.first_seq > 1 else f"seq {chain.seq}"
            )
            echo(f"chain {chain.chain}: {start}, head {chain.head}")
        if report.unsealed:
            echo(
                f"{_count(report.unsealed, 'row')} not sealed yet, the oldest of "
                f"{report.oldest_unsealed} (checked once sealed: `audit seal`)"
            )
        for cut in report.cuts:
            echo(
                f"chain {cut.chain}: seq {cut.details.get('first_seq', 1)}-{cut.through_seq} "
                f"archived by row {cut.id} "
                f"({cut.details.get('file', '?')}, {cut.occurred_at})"
            )
        if covered is not None:
            which = f"checkpoint {covered.sequence} of {covered.created_at} (key {covered.key_id})"
            if report.archived_since:
                echo(
                    f"{which}: of its {covered.rows} rows, {report.covered_rows} are here and "
                    f"{report.archived_since} were archived since (signed cuts)"
                )
            else:
                echo(f"{which}: its {covered.rows} rows are all here")
    else:
        for kind, heading in _HEADINGS.items():
            found = [_describe(p) for p in report.problems if p.kind == kind]
            if found:
                separator = ", " if kind in ("altered", "reordered", "inserted") else "; "
                echo(f"{heading}: {separator.join(found)}", err=True)
        if report.more_problems:
            echo(f"... and {report.more_problems} more problems", err=True)
        echo(f"audit log BROKEN ({report.rows} rows checked)", err=True)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def checkpoint(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write it to this file (default: print it)")
    ] = None,
    previous: Annotated[
        str | None,
        typer.Option(
            "--previous",
            metavar="FILE|artifact:KEY|artifact:ID",
            help="Extend this checkpoint: verify only the rows since it, number the new one next",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file")] = False,
) -> None:
    """Seal and verify the log, then sign the chains' heads, row count and time.

    Signs with the keyring's primary key, and nothing if the log does not verify (exit 1).
    Keep the result outside the database; `audit verify --checkpoint FILE` proves later that
    the log still holds what it covered. Each maintenance run also publishes one as the
    Prefect artifact ``integration-audit-checkpoint-<digest of the database>``, extending
    the previous one.
    """
    if out is not None:
        check_output_file(
            out,
            subject=f"checkpoint file {str(out)!r}",
            force=force,
            hint="an older checkpoint is what shows later changes; use --force to replace it",
        )
    before = _load_checkpoint(previous) if previous is not None else None
    rt = runtime()
    seal_pending(rt.db)
    with rt.transaction("take an audit checkpoint") as session:
        taken = take_checkpoint(
            session, rt.keyring, database=database_label(rt.db.url), previous=before
        )
    if out is None:
        echo(taken.to_json().rstrip())
        return
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        partial.write_text(taken.to_json(), encoding="utf-8")
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ValidationError(
            f"checkpoint file {str(out)!r}", [], exc.strerror or "cannot be written"
        ) from None
    echo(
        f"checkpoint {taken.sequence}: {_count(taken.rows, 'row')} in "
        f"{_count(len(taken.chains), 'chain')} "
        f"written to {out}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _parse_before(text: str) -> datetime:
    """``--before``: an ISO date or time (UTC unless it says otherwise), in the past."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO date or time (e.g. 2025-12-01)", param_hint="--before"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment > datetime.now(UTC):
        raise typer.BadParameter("must be in the past", param_hint="--before")
    return moment


@app.command(name="archive")
def archive_command(
    before: Annotated[
        str, typer.Option("--before", metavar="DATE", help="Archive rows older than this")
    ],
    to: Annotated[Path, typer.Option("--to", metavar="FILE", help="The archive file to write")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Move rows older than DATE to a signed gzip JSON-lines file, then delete them.

    Verifies the log first and refuses a broken one. Each chain gets a cut, a row that
    names the last seq removed and its hash, so the deletion is part of the chain and
    `audit verify` accepts a chain that now starts later. Needs a role that may DELETE
    from the log (its owner). Take a new checkpoint afterwards.
    """
    moment = _parse_before(before)
    rt = runtime()
    result = archive_rows(rt.db, rt.keyring, before=moment, to=to, actor=rt.actor)
    if as_json:
        emit_json(result.as_dict())
    elif not result.rows:
        echo(f"nothing to archive: no row older than {moment.isoformat()}")
    else:
        echo(
            f"archived {_count(result.rows, 'row')} of {_count(len(result.cuts), 'chain')} "
            f"to {result.path} "
            f"(sha256 {result.file_sha256}); take a new checkpoint: "
            "prefect-integrations audit checkpoint --out FILE"
        )


@app.command(name="verify-archive")
def verify_archive_command(
    file: Annotated[Path, typer.Argument(help="A file written by `audit archive`")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Check an archive file: its signature and every row's hash and link; exit 1 if not."""
    rt = runtime()
    report = check_archive_file(file, rt.keyring)
    if as_json:
        emit_json(report.as_dict())
    elif report.ok:
        echo(
            f"archive intact: {_count(report.rows, 'row')} of "
            f"{_count(len(report.chains), 'chain')} older than {report.before} "
            f"(written {report.created_at})"
        )
    else:
        for problem in report.problems[:50]:
            echo(problem, err=True)
        total = len(report.problems) + report.more_problems
        echo(f"archive BROKEN ({total} problems)", err=True)
    if not report.ok:
        raise typer.Exit(1)
