"""`prefect-integrations oauth ...`: connect accounts and manage tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_integrations.cli._common import echo, runtime
from prefect_integrations.exceptions import OAuthError

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
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Default: the redirect URI's port")
    ] = None,
) -> None:
    """Run the connect service (authorization-code flow with PKCE).

    The callback follows --host/--port unless PREFECT_INTEGRATIONS_OAUTH_REDIRECT_URI is
    set; links (`oauth connect`) use that setting, so set it when serving elsewhere.
    """
    import uvicorn

    from prefect_integrations.oauth.listener import listen, runtime_app

    rt = runtime()
    listener = listen(rt, host=host, port=port)  # a port in use is an error here
    echo(
        f"connect service on {listener.url} (links from "
        f"`prefect-integrations oauth connect ID`); callback {listener.redirect_uri}"
    )
    config = uvicorn.Config(runtime_app(rt, listener.redirect_uri), log_level="warning")
    uvicorn.Server(config).run(sockets=[listener.socket])


@app.command()
def refresh(
    instance_id: str,
    force: Annotated[bool, typer.Option(help="Refresh even if the token is fresh")] = False,
) -> None:
    """Refresh INSTANCE_ID's token now if it needs it (or with --force).

    Exits 1 when it cannot be refreshed (no refresh token: the account is connected again
    with `oauth connect ID --reconnect`).
    """
    from prefect_integrations.oauth.lifecycle import TokenLifecycle

    rt = runtime()
    outcome = TokenLifecycle(rt.db, rt.registry, rt.keyring, actor=rt.actor).refresh(
        instance_id, force=force
    )
    if outcome.result == "cannot_refresh":
        raise OAuthError(
            f"Instance '{instance_id}' cannot be refreshed: it has no refresh token "
            f"({outcome.reason}); connect the account again with "
            f"`prefect-integrations oauth connect {instance_id} --reconnect`",
            reason=outcome.reason,
        )
    echo(
        f"{instance_id}: {outcome.result} ({outcome.reason}), "
        f"credentials version {outcome.credentials_version}"
    )
