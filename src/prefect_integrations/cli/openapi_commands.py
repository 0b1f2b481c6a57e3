"""``definitions import-openapi`` and ``definitions diff``: from a description, between versions.

Registered on the ``definitions`` command group by `register`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_integrations.cli._common import check_output_file, echo, emit_json, read_json_file
from prefect_integrations.definitions.diff import actual_bump, diff_documents, required_bump
from prefect_integrations.exceptions import ValidationError, format_json_path

__all__ = ["diff", "import_openapi", "register"]


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def import_openapi(
    spec: Annotated[Path, typer.Argument(help="OpenAPI 3.x or Swagger 2.0 file (JSON or YAML)")],
    integration_id: Annotated[str, typer.Option("--integration-id", help="Id of the definition")],
    operations: Annotated[
        str | None, typer.Option("--operations", help="Operation ids to import, comma-separated")
    ] = None,
    tags: Annotated[
        str | None, typer.Option("--tags", help="Import the operations with these tags too")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the definition here (default: stdout)")
    ] = None,
    version: Annotated[str, typer.Option("--version", help="Version of the definition")] = "1.0.0",
    omit_header: Annotated[
        list[str] | None,
        typer.Option("--omit-header", help="A header parameter the definition sends itself"),
    ] = None,
    omit_parameter: Annotated[
        list[str] | None,
        typer.Option("--omit-parameter", help="A parameter that is not an input (e.g. a token)"),
    ] = None,
    max_depth: Annotated[
        int | None,
        typer.Option("--max-depth", min=1, help="References inlined inside each other [4]"),
    ] = None,
    cycle_depth: Annotated[
        int | None,
        typer.Option("--cycle-depth", min=1, help="Times a cyclic reference is inlined [1]"),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option("--overlay", help="Hand-written changes merged into the import (JSON)"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out file (a re-import)")
    ] = False,
) -> None:
    """Turn an OpenAPI description into a definition; report what could not be converted.

    The report (one line per note: JSON path in the description, what was lost) goes to
    standard error. ``--overlay`` merges hand-written changes (and import settings the
    options do not give) so that a re-import keeps them. Exit code 0 with a valid
    definition, 1 when the description is malformed or unsupported (the error names the
    JSON path). An existing ``--out`` file is replaced only with ``--force``, and never
    when it is the description itself.
    """
    from prefect_integrations.openapi import Overlay, load_overlay

    if out is not None:
        if out.resolve() == spec.resolve():
            raise ValidationError("--out", [], f"{out} is the description being imported")
        check_output_file(
            out, subject=f"--out {str(out)!r}", force=force, hint="use --force to replace it"
        )
    from prefect_integrations.openapi import import_openapi as run_import

    extra = load_overlay(overlay) if overlay is not None else Overlay()
    settings = extra.settings
    result = run_import(
        spec,
        integration_id=integration_id,
        operations=_split(operations) or settings.get("operations"),
        tags=_split(tags) or settings.get("tags"),
        version=version,
        max_depth=max_depth or settings.get("maxDepth", 4),
        cycle_depth=cycle_depth or settings.get("cycleDepth", 1),
        omit_headers=[*(omit_header or ()), *settings.get("omitHeaders", ())],
        omit_parameters=[*(omit_parameter or ()), *settings.get("omitParameters", ())],
        overlay=extra,
    )
    text = json.dumps(result.document, indent=2, ensure_ascii=False) + "\n"
    for note in result.report.notes:
        echo(
            f"not converted: {format_json_path(note.path)}: {note.message}", err=True, one_line=True
        )
    methods = len(result.document["methods"])
    summary = f"{methods} method(s), {len(result.report.notes)} note(s)"
    if out is None:
        typer.echo(text, nl=False)
        echo(summary, err=True)
        return
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ValidationError("--out", [], f"cannot write {out}: {exc.strerror or exc}") from None
    echo(f"wrote {out}: {summary}", err=True)


def _document(path: str) -> dict[str, Any]:
    document = read_json_file(path, what="definition")
    if not isinstance(document, dict):
        raise ValidationError(f"Definition {path!r}", [], "top level must be an object")
    return document


def diff(
    old: Annotated[str, typer.Argument(help="The definition file before")],
    new: Annotated[str, typer.Argument(help="The definition file after")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print what changes for callers from OLD to NEW and the semver bump it needs.

    Exit code: 0 when NEW's version is bumped at least as much as its changes need, 3 when
    it is not (e.g. a method removed under a minor bump), 1 for an unreadable file.
    """
    before, after = _document(old), _document(new)
    changes = diff_documents(before, after)
    needed = required_bump(changes)
    old_version, new_version = str(before.get("version")), str(after.get("version"))
    done = actual_bump(old_version, new_version)
    enough = done is not None and _rank(done) >= _rank(needed)
    if as_json:
        emit_json(
            {
                "changes": [
                    {"bump": c.bump, "path": c.path, "message": c.message} for c in changes
                ],
                "requiredBump": needed,
                "versions": [old_version, new_version],
                "versionBump": done,
                "enough": enough,
            }
        )
    else:
        for change in changes:
            echo(str(change), one_line=True)
        echo(f"{len(changes)} change(s); minimum version bump: {needed}")
        verdict = "enough" if enough else "NOT enough"
        echo(f"version {old_version} -> {new_version} ({done or 'not a step forward'}): {verdict}")
    if not enough:
        raise typer.Exit(3)


def _rank(bump: str) -> int:
    return ("none", "patch", "minor", "major").index(bump)


def register(app: typer.Typer) -> None:
    """Add ``import-openapi`` and ``diff`` to the ``definitions`` command group."""
    app.command("import-openapi")(import_openapi)
    app.command("diff")(diff)
