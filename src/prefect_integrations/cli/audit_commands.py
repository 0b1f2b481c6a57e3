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


@app.command()
def verify() -> None:
    """Recompute the hash chain; exit 1 if any row was altered or removed."""
    rt = runtime()
    with rt.transaction("verify the audit log") as session:
        report = audit.verify(session)
    if report.ok:
        echo(f"audit log intact: {report.rows} rows, last hash {report.last_hash}")
        return
    if report.broken:
        echo(f"altered rows: {', '.join(map(str, report.broken))}", err=True)
    if report.missing:
        echo(f"missing rows: {', '.join(map(str, report.missing))}", err=True)
    echo(f"audit log BROKEN ({report.rows} rows checked)", err=True)
    raise typer.Exit(1)
