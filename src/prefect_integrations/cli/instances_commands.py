"""`prefect-integrations instances ...`: manage connected accounts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from prefect_integrations.cli._common import (
    echo_table,
    emit_json,
    parse_json_option,
    read_json_file,
    runtime,
)
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.resolve import explain
from prefect_integrations.scope import Context, parse_scope
from prefect_integrations.store import instances as store

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
        typer.echo(f"{key.ljust(width)}  {value if value is not None else '-'}")


@app.command()
def create(
    instance_id: Annotated[str, typer.Argument(help="Unique id, e.g. xero_main")],
    integration: Annotated[str, typer.Option(help="Integration id, e.g. xero")],
    name: Annotated[str, typer.Option(help="Human-readable name")],
    context: Annotated[str, typer.Option(help="global | client:ID | user:ID")] = "global",
    config: Annotated[str | None, typer.Option(help="Config as a JSON object")] = None,
    credentials_file: CredentialsFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Create an instance; credentials are validated and stored encrypted."""
    rt = runtime()
    scope = parse_scope(context)
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
            scope=scope,
            config=config_doc,
            credentials=creds,
            actor=rt.actor,
        )
    if as_json:
        emit_json(inst.as_dict())
    else:
        typer.echo(
            f"Created instance '{inst.instance_id}' ({inst.integration_id}, "
            f"{inst.scope}, {inst.state})"
        )


@app.command("list")
def list_(
    integration: Annotated[str | None, typer.Option(help="Only this integration")] = None,
    context: Annotated[str | None, typer.Option(help="Only this scope")] = None,
    state: Annotated[State | None, typer.Option(help="Only instances in this state")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List instances."""
    rt = runtime()
    scope = parse_scope(context) if context else None
    with rt.transaction("list instances") as session:
        found = store.list_instances(
            session, integration_id=integration, scope=scope, state=state.value if state else None
        )
    if as_json:
        emit_json([i.as_dict() for i in found])
        return
    echo_table(
        ["INSTANCE", "INTEGRATION", "CONTEXT", "STATE", "CREDENTIALS", "LAST USED"],
        [
            [
                i.instance_id,
                i.integration_id,
                str(i.scope),
                i.state,
                f"stored ({i.credentials.key_id})" if i.credentials else "none",
                i.last_used_at,
            ]
            for i in found
        ],
    )


@app.command()
def show(
    instance_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show one instance; credentials only as field names and key id, never values."""
    rt = runtime()
    with rt.transaction(f"read instance '{instance_id}'") as session:
        inst = store.require_instance(session, instance_id)
    data = inst.as_dict()
    if as_json:
        emit_json(data)
        return
    creds = data.pop("credentials")
    if creds:
        prefix = f"{creds['kind']}." if creds.get("kind") else ""
        fields = ", ".join(f"{prefix}{f}=********" for f in creds.get("fields", []))
        data["credentials"] = f"{fields} (key {creds['key_id']})"
    else:
        data["credentials"] = None
    _show(data)


@app.command()
def update(
    instance_id: str,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    config: Annotated[str | None, typer.Option(help="New config (JSON object)")] = None,
    status: Annotated[str | None, typer.Option(help="New status (JSON object)")] = None,
    context: Annotated[str | None, typer.Option(help="New scope")] = None,
) -> None:
    """Change name, config, status or scope of an instance."""
    rt = runtime()
    scope = parse_scope(context) if context else None
    config_doc = _object(config, "--config")
    status_doc = _object(status, "--status")
    registry = rt.registry
    with rt.transaction(f"update instance '{instance_id}'") as session:
        inst = store.update_instance(
            session,
            registry,
            instance_id,
            name=name,
            config=config_doc,
            status=status_doc,
            scope=scope,
            actor=rt.actor,
        )
    typer.echo(f"Updated instance '{inst.instance_id}' ({inst.scope}, {inst.state})")


@app.command("set-credentials")
def set_credentials(instance_id: str, credentials_file: CredentialsFile = None) -> None:
    """Replace the credentials of an instance (encrypted with the primary key)."""
    rt = runtime()
    creds = _credentials(credentials_file or "-")
    assert creds is not None
    registry, keyring = rt.registry, rt.keyring
    with rt.transaction(f"set credentials of instance '{instance_id}'") as session:
        inst = store.set_credentials(session, registry, keyring, instance_id, creds, actor=rt.actor)
    typer.echo(
        f"Stored credentials of '{inst.instance_id}' under key "
        f"'{keyring.primary_id}' (version {inst.credentials_version})"
    )


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
    typer.echo(f"Deleted instance '{instance_id}'")


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
    rt.registry.get(integration)
    with rt.transaction(f"resolve an instance of '{integration}'") as session:
        result = explain(
            session, integration, Context(client_id=client, user_id=user), instance_id=instance
        )
    if as_json:
        emit_json(result.as_dict())
    else:
        for cand in result.candidates:
            typer.echo(f"  {cand.instance_id:<30} {cand.scope:<24} {cand.state:<9} {cand.verdict}")
        typer.echo(f"rule: {result.rule}")
        if result.chosen:
            typer.echo(f"chosen: {result.chosen.instance_id}")
    if result.error is not None:
        if not as_json:
            typer.echo(f"error[{result.error.code}]: {result.error}", err=True)
        raise typer.Exit(1)
