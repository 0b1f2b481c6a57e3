"""`prefect-integrations deploy`: the maintenance flows as deployments of a work pool."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_integrations.cli._common import echo
from prefect_integrations.exceptions import ValidationError, quote
from prefect_integrations.maintenance.deployments import env_item_name

__all__ = ["deploy"]


def _env_options(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            # the rest may be the secret (':' typed for '='): show only the leading name
            raise ValidationError(f"--env {env_item_name(item)}", [], "not KEY=VALUE")
        env[name] = value
    return env


def deploy(
    pool: Annotated[str, typer.Option("--pool", help="The work pool (it must exist)")],
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            metavar="KEY=VALUE",
            help="A non-secret environment variable for the flow runs (repeatable), "
            "e.g. PREFECT_INTEGRATIONS_DEFINITIONS_PATH; secrets are refused",
        ),
    ] = None,
) -> None:
    """Register the maintenance flows as deployments of a work pool, on their schedules.

    health-check, refresh-tokens and rotate-credentials get module-path entrypoints
    (prefect_integrations.maintenance.flows.*): a worker needs the package installed, no
    checkout. The worker's own environment must hold PREFECT_INTEGRATIONS_DATABASE_URL and
    PREFECT_INTEGRATIONS_KEYS; --env never carries secrets (job variables are stored in
    Prefect and shown in its UI). Needs PREFECT_API_URL.
    """
    from prefect_integrations.maintenance.deployments import deploy as register

    deployed = register(pool, env=_env_options(env or []))
    for d in deployed:
        note = "  (paused: resume it in the Prefect UI)" if d.paused else ""
        # name, cron and entrypoint as the Prefect server stored them: one line each
        echo(f"deployed: {d.name:<50} cron '{d.cron}' (UTC)  {d.entrypoint}{note}", one_line=True)
    echo(
        f"work pool {quote(pool)}: start a worker with `prefect worker start --pool {pool}` "
        "where the package is installed and PREFECT_INTEGRATIONS_DATABASE_URL and "
        "PREFECT_INTEGRATIONS_KEYS are set"
    )
