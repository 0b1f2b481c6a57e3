"""`prefect-integrations call` and `prefect-integrations blocks ...`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prefect_integrations.cli._common import (
    caller_context,
    echo,
    emit_json,
    parse_json_option,
    read_json_file,
    runtime,
)
from prefect_integrations.cli._output import json_text
from prefect_integrations.exceptions import ValidationError

blocks_app = typer.Typer(help="Prefect blocks of the stored instances.", no_args_is_help=True)


def call(
    target: Annotated[str, typer.Argument(help="integration.method, e.g. xero.create_invoice")],
    instance: Annotated[str | None, typer.Option(help="Explicit instance id")] = None,
    input_: Annotated[
        str | None, typer.Option("--input", help="Method input as a JSON object")
    ] = None,
    input_file: Annotated[
        str | None, typer.Option(help="Method input from a JSON file ('-': standard input)")
    ] = None,
    client: Annotated[str | None, typer.Option(help="Caller's client id")] = None,
    user: Annotated[str | None, typer.Option(help="Caller's user id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the output as JSON")] = False,
) -> None:
    """Call a method of an integration and print its output."""
    from prefect_integrations.context import integration_context
    from prefect_integrations.tasks import call_method

    integration_id, dot, method_id = target.partition(".")
    if not dot or not integration_id or not method_id:
        raise ValidationError("Call target", [], f"{target!r} is not 'integration.method'")
    if input_ is not None and input_file is not None:
        raise ValidationError("Call input", [], "give --input or --input-file, not both")
    inputs: Any = {}
    if input_ is not None:
        inputs = parse_json_option(input_, option="--input")
    elif input_file is not None:
        inputs = read_json_file(input_file, what="Input")
    if not isinstance(inputs, dict):
        raise ValidationError("Call input", [], "must be a JSON object")
    rt = runtime()
    rt.registry.get(integration_id).method(method_id)
    context = caller_context(client, user)
    try:
        with integration_context(client_id=context.client_id, user_id=context.user_id):
            output = call_method(integration_id, method_id, inputs, instance)
    finally:
        rt.recorder.flush()
    if as_json:
        emit_json(output)
    else:
        echo(output if isinstance(output, str) else _pretty(output))


def _pretty(value: Any) -> str:
    return json_text(value)


@blocks_app.command("sync")
def sync_blocks(
    overwrite: Annotated[bool, typer.Option(help="Replace existing block documents")] = True,
) -> None:
    """Save one IntegrationInstance block document per stored instance (no secrets)."""
    from prefect_integrations.blocks import IntegrationInstance, block_name
    from prefect_integrations.store.instances import list_instances

    rt = runtime()
    with rt.transaction("list instances") as session:
        found = list_instances(session)
    names: dict[str, str] = {}
    for inst in found:
        name = block_name(inst.instance_id)
        if name in names:
            raise ValidationError(
                "Block names",
                [],
                f"instances '{names[name]}' and '{inst.instance_id}' both "
                f"map to block name '{name}'",
            )
        names[name] = inst.instance_id
    for name, instance_id in names.items():
        integration_id = next(i.integration_id for i in found if i.instance_id == instance_id)
        IntegrationInstance(instance_id=instance_id, integration_id=integration_id).save(
            name, overwrite=overwrite
        )
        echo(f"saved block integration-instance/{name} -> {instance_id}")
    echo(f"{len(names)} block(s) saved")
