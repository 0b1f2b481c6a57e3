"""`prefect-integrations keys ...`: encryption keys."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_integrations.keyring import generate_key, parse_keyring

app = typer.Typer(help="Encryption keys.", no_args_is_help=True)


@app.command()
def generate(
    kid: Annotated[str, typer.Option("--kid", help="Key id")] = "k1",
) -> None:
    """Print a new keyring entry 'KID:BASE64' (32 random bytes) for PREFECT_INTEGRATIONS_KEYS.

    Put the new entry first to make it the primary key; keep older keys after it until
    every row is re-encrypted.
    """
    entry = f"{kid}:{generate_key()}"
    parse_keyring(entry, source="--kid")  # checks the key id
    typer.echo(entry)
