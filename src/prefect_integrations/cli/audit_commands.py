"""`prefect-integrations audit ...`: read and verify the audit log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from prefect_integrations.cli._common import echo, echo_table, emit_json, runtime
from prefect_integrations.store import audit

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


@app.command()
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Recompute every hash; exit 1 if a row, trigger or function was changed or removed.

    Prints each chain's last seq and hash: kept outside the database, they show later
    that no row was removed from the end of a chain.
    """
    rt = runtime()
    with rt.transaction("verify the audit log") as session:
        report = audit.verify(session)
    if as_json:
        emit_json(report.as_dict())
    elif report.ok:
        echo(f"audit log intact: {report.rows} rows in {len(report.chains)} chains")
        for chain in report.chains:
            echo(f"chain {chain.chain}: seq {chain.seq}, head {chain.head}")
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
