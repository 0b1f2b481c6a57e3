"""`prefect-integrations instances ...`: manage connected accounts."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer._click.exceptions import UsageError  # typer's own click

from prefect_integrations.cli._common import (
    caller_context,
    echo,
    echo_table,
    emit_json,
    parse_json_option,
    read_json_file,
    runtime,
    scope_option,
)
from prefect_integrations.cli._connection_tests import PASSED, check_many, echo_result, result_row
from prefect_integrations.cli._progress import progress
from prefect_integrations.credentials import NON_SECRET_FIELDS
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.resolve import explain
from prefect_integrations.store import instances as store
from prefect_integrations.store.documents import apply_documents

app = typer.Typer(help="Integration instances (connected accounts).", no_args_is_help=True)


class State(StrEnum):
    """Instance states."""

    active = "active"
    inactive = "inactive"
    error = "error"


CredentialsFile = Annotated[
    str | None,
    typer.Option(
        "--credentials-file",
        help="JSON file with the credentials ('-' reads standard input), one section named "
        'after the authType: {"oauth2": {...}}, {"apikey": {"key": ...}} or {"custom": {...}}. '
        "Credentials are never accepted as arguments.",
    ),
]


def _object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    value = parse_json_option(text, option=option)
    if not isinstance(value, dict):
        raise ValidationError(option, [], "must be a JSON object")
    return value


def _credentials(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    value = read_json_file(path, what="Credentials")
    if not isinstance(value, dict):
        raise ValidationError("Credentials", [], "must be a JSON object")
    return value


def _show(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        echo(f"{key.ljust(width)}  {value if value is not None else '-'}", one_line=True)


@app.command()
def create(
    instance_id: Annotated[str, typer.Argument(help="Unique id, e.g. xero_main")],
    integration: Annotated[str, typer.Option(help="Integration id, e.g. xero")],
    name: Annotated[str, typer.Option(help="Human-readable name")],
    context: Annotated[str, typer.Option(help="global | client:ID | user:ID")] = "global",
    description: Annotated[str | None, typer.Option(help="What the instance is for")] = None,
    config: Annotated[str | None, typer.Option(help="Config as a JSON object")] = None,
    credentials_file: CredentialsFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the instance document")] = False,
) -> None:
    """Create an instance; credentials are validated and stored encrypted."""
    rt = runtime()
    scope = scope_option(context)
    config_doc = _object(config, "--config") or {}
    creds = _credentials(credentials_file)
    registry = rt.registry
    keyring = rt.keyring if creds is not None else None
    with rt.transaction(f"create instance '{instance_id}'") as session:
        inst = store.create_instance(
            session,
            registry,
            keyring,
            instance_id=instance_id,
            integration_id=integration,
            name=name,
            description=description,
            scope=scope,
            config=config_doc,
            credentials=creds,
            actor=rt.actor,
        )
    if as_json:
        emit_json(inst.as_document())
    else:
        echo(
            f"Created instance '{inst.instance_id}' ({inst.integration_id}, "
            f"{inst.scope}, {inst.state})"
        )


@app.command("list")
def list_(
    integration: Annotated[str | None, typer.Option(help="Only this integration")] = None,
    context: Annotated[str | None, typer.Option(help="Only this scope")] = None,
    state: Annotated[State | None, typer.Option(help="Only instances in this state")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print instance documents")] = False,
) -> None:
    """List instances."""
    rt = runtime()
    scope = scope_option(context) if context else None
    with rt.transaction("list instances") as session:
        found = store.list_instances(
            session, integration_id=integration, scope=scope, state=state.value if state else None
        )
    if as_json:
        emit_json([i.as_document() for i in found])
        return
    echo_table(
        ["INSTANCE", "INTEGRATION", "CONTEXT", "STATE", "REASON", "LAST CHECK", "CREDENTIALS"],
        [
            [
                i.instance_id,
                i.integration_id,
                str(i.scope),
                i.state,
                _reason(i.status),
                i.status.get("lastChecked") or "",
                f"stored ({i.credentials.key_id})" if i.credentials else "none",
            ]
            for i in found
        ],
    )


def _reason(status: dict[str, Any]) -> str:
    """The reason of the last check or refresh kept in a status's details ('' if none)."""
    details = status.get("details")
    reason = details.get("reason") if isinstance(details, dict) else None
    return str(reason) if reason else ""


@app.command()
def show(
    instance_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the instance document")] = False,
) -> None:
    """Show one instance; credentials only as field names and key id, never values."""
    rt = runtime()
    with rt.transaction(f"read instance '{instance_id}'") as session:
        inst = store.require_instance(session, instance_id)
    if as_json:
        emit_json(inst.as_document())
        return
    creds = None
    if inst.credentials is not None:
        meta = inst.credentials.metadata
        prefix = f"{meta['kind']}." if meta.get("kind") else ""
        # the non-secret facts kept beside the ciphertext (token type, scope, expiry) are
        # shown as they are, as `--json` shows them; every other field only by name
        fields = ", ".join(
            f"{prefix}{f}={meta[f]}"
            if f in NON_SECRET_FIELDS and f in meta
            else f"{prefix}{f}=********"
            for f in meta.get("fields", [])
        )
        creds = f"{fields} (key {inst.credentials.key_id})"
    _show(
        {
            "instance_id": inst.instance_id,
            "integration_id": inst.integration_id,
            "name": inst.name,
            "description": inst.description,
            "context": str(inst.scope),
            "state": inst.state,
            "reason": _reason(inst.status),
            "last_checked": inst.status.get("lastChecked"),
            "last_error": inst.status.get("error"),
            "status": json.dumps(inst.status),
            "config": json.dumps(inst.config),
            "credentials": creds,
            "credentials_version": inst.credentials_version,
            "token_expires_at": inst.token_expires_at,
            "created_at": inst.created_at,
            "updated_at": inst.updated_at,
            "last_used_at": inst.last_used_at,
        }
    )


@app.command()
def update(
    instance_id: str,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    description: Annotated[str | None, typer.Option(help="New description ('' clears it)")] = None,
    config: Annotated[str | None, typer.Option(help="New config (JSON object)")] = None,
    status: Annotated[str | None, typer.Option(help="New status (JSON object)")] = None,
    context: Annotated[str | None, typer.Option(help="New scope")] = None,
) -> None:
    """Change name, description, config, status or scope of an instance."""
    rt = runtime()
    scope = scope_option(context) if context else None
    config_doc = _object(config, "--config")
    status_doc = _object(status, "--status")
    registry = rt.registry
    with rt.transaction(f"update instance '{instance_id}'") as session:
        inst = store.update_instance(
            session,
            registry,
            instance_id,
            name=name,
            description=store.UNSET if description is None else (description or None),
            config=config_doc,
            status=status_doc,
            scope=scope,
            actor=rt.actor,
        )
    echo(f"Updated instance '{inst.instance_id}' ({inst.scope}, {inst.state})")


@app.command("set-credentials")
def set_credentials(instance_id: str, credentials_file: CredentialsFile = None) -> None:
    """Replace the credentials of an instance (encrypted with the primary key)."""
    rt = runtime()
    creds = _credentials(credentials_file or "-")
    assert creds is not None
    registry, keyring = rt.registry, rt.keyring
    with rt.transaction(f"set credentials of instance '{instance_id}'") as session:
        inst = store.set_credentials(session, registry, keyring, instance_id, creds, actor=rt.actor)
    echo(
        f"Stored credentials of '{inst.instance_id}' under key "
        f"'{keyring.primary_id}' (version {inst.credentials_version})"
    )


@app.command()
def apply(
    path: Annotated[
        str,
        typer.Argument(
            help="JSON file with one instance document or an array of them ('-' reads "
            "standard input)"
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print what was done as JSON")] = False,
) -> None:
    """Create or update instances from specification documents (idempotent, all or nothing).

    Every document is checked before anything is written; one bad document writes none.
    Credentials in a document are stored encrypted; `{}` or none keeps the stored ones.
    On a terminal, a progress bar on standard error counts the documents written.
    """
    rt = runtime()
    value = read_json_file(path, what="Instance documents")
    registry = rt.registry
    needs_key = any(
        isinstance(d, dict) and d.get("credentials")
        for d in (value if isinstance(value, list) else [value])
    )
    keyring = rt.keyring if needs_key else None
    total = len(value) if isinstance(value, list) else 1
    with (
        progress("applying", total=total, enabled=not as_json and total > 1) as advance,
        rt.transaction("apply instance documents") as session,
    ):
        results = apply_documents(
            session, registry, keyring, value, actor=rt.actor, on_applied=lambda _: advance(1)
        )
    if as_json:
        emit_json(
            [
                {"instanceId": r.instance_id, "action": r.action, "fields": list(r.fields)}
                for r in results
            ]
        )
        return
    for r in results:
        detail = f" ({', '.join(r.fields)})" if r.fields else ""
        echo(f"{r.action:<9} {r.instance_id}{detail}")
    counts = {a: sum(r.action == a for r in results) for a in ("created", "updated", "unchanged")}
    echo(", ".join(f"{a} {n}" for a, n in counts.items()))


@app.command()
def export(
    instance_ids: Annotated[
        list[str] | None, typer.Argument(help="Instances to export (default: all)")
    ] = None,
) -> None:
    """Print instance documents without secrets, ready for `instances apply`.

    One document for one id, an array otherwise. `credentials` is always `{}`: applying
    the output keeps the stored credentials.
    """
    rt = runtime()
    with rt.transaction("export instances") as session:
        if instance_ids:
            found = [store.require_instance(session, i) for i in instance_ids]
        else:
            found = store.list_instances(session)
    documents = [i.as_document(secrets_metadata=False) for i in found]
    emit_json(documents[0] if instance_ids and len(instance_ids) == 1 else documents)


@app.command()
def delete(
    instance_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
) -> None:
    """Delete an instance and its credentials."""
    rt = runtime()
    if not yes:
        typer.confirm(f"Delete instance '{instance_id}' and its credentials?", abort=True)
    with rt.transaction(f"delete instance '{instance_id}'") as session:
        store.delete_instance(session, instance_id, actor=rt.actor)
    echo(f"Deleted instance '{instance_id}'")


@app.command()
def resolve(
    integration: Annotated[str, typer.Argument(help="Integration id")],
    client: Annotated[str | None, typer.Option(help="Caller's client id")] = None,
    user: Annotated[str | None, typer.Option(help="Caller's user id")] = None,
    instance: Annotated[str | None, typer.Option(help="Explicit instance id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show which instance a call would use in a context, and why."""
    rt = runtime()
    caller = caller_context(client, user)
    rt.registry.get(integration)
    with rt.transaction(f"resolve an instance of '{integration}'") as session:
        result = explain(session, integration, caller, instance_id=instance)
    if as_json:
        emit_json(result.as_dict())
    else:
        for cand in result.candidates:
            echo(f"  {cand.instance_id:<30} {cand.scope:<24} {cand.state:<9} {cand.verdict}")
        echo(f"rule: {result.rule}")
        if result.chosen:
            echo(f"chosen: {result.chosen.instance_id}")
    if result.error is not None:
        if not as_json:
            echo(f"error[{result.error.code}]: {result.error}", err=True)
        raise typer.Exit(1)


@app.command("test")
def test_(
    instance_ids: Annotated[
        list[str] | None, typer.Argument(help="Instances to test", show_default=False)
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Test every instance that is not inactive")
    ] = False,
    integration: Annotated[
        list[str] | None,
        typer.Option("--integration", help="With --all: only instances of this integration"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Check connections now with their health checks, and record the statuses.

    One INSTANCE_ID, several, or --all. An instance that works again becomes active at
    once. Exits 1 when a check fails.
    """
    from prefect_integrations.maintenance.connection_check import check_connection

    if bool(instance_ids) == all_ or (integration and not all_):
        raise UsageError("give INSTANCE_ID(s), or --all (optionally with --integration)")
    rt = runtime()
    if instance_ids and len(instance_ids) == 1:
        result = check_connection(rt.db, rt.registry, rt.keyring, instance_ids[0], actor=rt.actor)
        results = [result]
        if as_json:
            emit_json(result_row(result))
        else:
            echo_result(result)
    else:
        results = check_many(instance_ids, integration, as_json=as_json)
    if not all(r.reason in PASSED for r in results):
        raise typer.Exit(1)
