"""`prefect-integrations definitions ...`: validate, list, show and sync definition files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_integrations.cli._common import echo, echo_table, emit_json, runtime
from prefect_integrations.definitions import collect, collect_layered
from prefect_integrations.method_docs import describe_method, method_doc
from prefect_integrations.store.definitions import list_definitions, sync_definitions

app = typer.Typer(help="Integration definitions (JSON files).", no_args_is_help=True)


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Files or folders; default: the shipped definitions and the configured "
            "ones, which replace shipped ones of the same id"
        ),
    ] = None,
) -> None:
    """Validate definition files; list every problem and exit non-zero if any."""
    rt = runtime()
    if paths:
        found, problems = collect(list(paths))
    else:
        found, problems = collect_layered(rt.settings.extra_definition_paths)
    for problem in problems:
        echo(str(problem), err=True, one_line=True)
    if problems:
        echo(f"{len(problems)} problem(s) in definitions", err=True)
        raise typer.Exit(1)
    echo(f"{len(found)} definition(s) valid: {', '.join(d.id for d in found)}")


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List the definitions in the files; methods without a binding are "not callable"."""
    rt = runtime()
    definitions = list(rt.registry)
    if as_json:
        emit_json(
            [
                {
                    "integrationId": d.id,
                    "name": d.name,
                    "version": d.version,
                    "authType": d.auth_type,
                    "methods": [
                        {"id": m.id, "name": m.name, "callable": m.callable}
                        for m in d.methods.values()
                    ],
                    "source": d.source,
                }
                for d in definitions
            ]
        )
        return
    echo_table(
        ["ID", "NAME", "VERSION", "AUTH", "METHODS", "NOT CALLABLE"],
        [
            [
                d.id,
                d.name,
                d.version,
                d.auth_type,
                len(d.methods),
                ", ".join(m.id for m in d.methods.values() if not m.callable) or "-",
            ]
            for d in definitions
        ],
    )


@app.command()
def show(
    integration: Annotated[str, typer.Argument(help="Integration id, e.g. xero")],
    method: Annotated[str | None, typer.Argument(help="Method id; default: all")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show an integration's methods: parameters (types, defaults, rules) and outputs.

    The same text as the generated task's docstring (``help(xero.create_invoice)``).
    """
    definition = runtime().registry.get(integration)
    methods = [definition.method(method)] if method is not None else definition.methods.values()
    described = [describe_method(definition.id, m.raw) for m in methods]
    if as_json:
        if method is not None:
            emit_json(described[0])
            return
        emit_json(
            {
                "integrationId": definition.id,
                "name": definition.name,
                "version": definition.version,
                "authType": definition.auth_type,
                "description": definition.description,
                "documentationUrl": definition.documentation_url,
                "source": definition.source,
                "methods": described,
            }
        )
        return
    if method is None:
        echo(f"{definition.id}: {definition.name} {definition.version} ({definition.auth_type})")
        if definition.description:
            echo(definition.description)
        if definition.documentation_url:
            echo(f"documentation: {definition.documentation_url}")
    for m in methods:
        if method is None:
            echo("")
            echo(f"== {m.qualified_name}{'' if m.callable else ' (not callable)'}")
        echo(method_doc(definition.id, m.raw))


@app.command()
def sync() -> None:
    """Upsert the definition files into the database (idempotent)."""
    rt = runtime()
    registry = rt.registry
    with rt.transaction("sync definitions") as session:
        report = sync_definitions(session, registry, actor=rt.actor)
    echo(report.counts())
    for warning in report.warnings():
        echo(f"warning: {warning}", err=True)


@app.command()
def stored(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List the definitions stored in the database with their instance counts."""
    rt = runtime()
    with rt.transaction("list definitions") as session:
        rows = list_definitions(session)
    if as_json:
        emit_json(
            [
                {
                    "integrationId": r.id,
                    "name": r.name,
                    "version": r.version,
                    "authType": r.definition.get("authType"),
                    "instances": r.instance_count,
                    "id": str(r.uuid),
                    "updatedAt": r.updated_at,
                }
                for r in rows
            ]
        )
        return
    echo_table(
        ["ID", "NAME", "VERSION", "INSTANCES", "UPDATED"],
        [[r.id, r.name, r.version, r.instance_count, r.updated_at] for r in rows],
    )
