"""`prefect-integrations oauth ...`: connect accounts and manage tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_integrations.cli._common import echo, runtime

app = typer.Typer(help="OAuth2: connect accounts, refresh tokens.", no_args_is_help=True)


@app.command()
def connect(
    instance_id: str,
    ttl: Annotated[
        int, typer.Option(help="Seconds the link works (it works once)", min=1, max=604800)
    ] = 600,
    reconnect: Annotated[
        bool,
        typer.Option(help="Allow replacing the tokens of an instance that is already active"),
    ] = False,
) -> None:
    """Print a single-use link that connects INSTANCE_ID (hand it to the account owner).

    The connect service (`oauth serve`) must be reachable at the redirect URI's host. The
    link is signed and works once, for --ttl seconds; anyone who has it can connect their
    account, so send it only to that person.
    """
    from prefect_integrations.oauth.links import connect_link

    echo(connect_link(instance_id, ttl=ttl, reconnect=reconnect))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: the redirect URI's host")] = None,
    port: Annotated[int | None, typer.Option(help="Default: the redirect URI's port")] = None,
) -> None:
    """Run the connect service (authorization-code flow with PKCE)."""
    import uvicorn

    from prefect_integrations.oauth.service import bind_address, runtime_app

    rt = runtime()
    app = runtime_app(rt)
    bind_host, bind_port = bind_address(rt.settings.oauth_redirect_uri, host=host, port=port)
    echo(
        f"connect service on http://{bind_host}:{bind_port} (links from "
        f"`prefect-integrations oauth connect ID`); callback {rt.settings.oauth_redirect_uri}"
    )
    uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning")


@app.command()
def refresh(
    instance_id: str,
    force: Annotated[bool, typer.Option(help="Refresh even if the token is fresh")] = False,
) -> None:
    """Refresh INSTANCE_ID's token now if it needs it (or with --force)."""
    from prefect_integrations.oauth.lifecycle import TokenLifecycle

    rt = runtime()
    outcome = TokenLifecycle(rt.db, rt.registry, rt.keyring, actor=rt.actor).refresh(
        instance_id, force=force
    )
    echo(
        f"{instance_id}: {outcome.result} ({outcome.reason}), "
        f"credentials version {outcome.credentials_version}"
    )
