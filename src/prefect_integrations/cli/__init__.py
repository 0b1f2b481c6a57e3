"""The ``prefect-integrations`` command line (typer).

Every command fails with one clear line ``error[code]: message`` and exit code 1 for
errors of the package (``error[usage]: ...`` and exit code 2 for a usage error), never a
traceback, and never prints a secret.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer's own click

from prefect_integrations import logfilter
from prefect_integrations.cli import (
    audit_commands,
    call_commands,
    db_commands,
    definitions_commands,
    deploy_commands,
    instances_commands,
    keys_commands,
    oauth_commands,
    openapi_commands,
    stubs_commands,
)
from prefect_integrations.cli._common import echo, emit_json, runtime
from prefect_integrations.cli._output import safe_text
from prefect_integrations.exceptions import DefinitionError, IntegrationError, ValidationError
from prefect_integrations.store.grants import apply_grants

__all__ = ["PROG_NAME", "app", "main", "run"]

#: The command's name in usage lines and hints, however it was started.
PROG_NAME = "prefect-integrations"

app = typer.Typer(
    name="prefect-integrations",
    help="Standardized, secure connections to external services for Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        echo(f"{PROG_NAME} {version('prefect-integrations')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version and exit",
    ),
) -> None:
    """Standardized, secure connections to external services for Prefect."""


app.add_typer(db_commands.app, name="db")
app.add_typer(definitions_commands.app, name="definitions")
openapi_commands.register(definitions_commands.app)
app.add_typer(instances_commands.app, name="instances")
app.add_typer(keys_commands.app, name="keys")
app.add_typer(audit_commands.app, name="audit")
app.add_typer(call_commands.blocks_app, name="blocks")
app.add_typer(oauth_commands.app, name="oauth")
app.command("call")(call_commands.call)
app.command("deploy")(deploy_commands.deploy)
app.command("stubs")(stubs_commands.stubs)


#: What `up` suggests when there is no instance yet: create one, connect it, test it.
NEXT_STEPS = (
    "next: create, connect and test an instance (README: Connecting an account):",
    f"  {PROG_NAME} instances apply FILE   create it (or `instances create ID ...`)",
    f"  {PROG_NAME} oauth connect ID       a link for the account owner (OAuth2)",
    f"  {PROG_NAME} instances test ID      check its connection",
)


@app.command()
def up() -> None:
    """Bring the store up and print a summary of definitions and instances.

    Starts the embedded database when no URL is set, migrates, grants roles, syncs the
    definitions, seals the audit log.
    """
    from prefect_integrations import db as dbmod
    from prefect_integrations.audit_seals import cut_is_authentic
    from prefect_integrations.cli._common import echo_table
    from prefect_integrations.store import audit
    from prefect_integrations.store.audit_seal import SealWaitTimeout, seal_pending
    from prefect_integrations.store.definitions import list_definitions, sync_definitions
    from prefect_integrations.store.instances import list_instances

    rt = runtime()
    database = rt.db
    echo(f"database: {dbmod.redact_url(database.url)}")
    dbmod.upgrade(database)
    echo(f"schema:   revision {dbmod.current_revision(database)}")
    if rt.settings.embedded:
        apply_grants(database)
    keyring = rt.keyring
    echo(f"keyring:  {len(keyring.ids)} key(s), primary '{keyring.primary_id}'")
    registry = rt.registry
    with rt.transaction("sync definitions") as session:
        report = sync_definitions(session, registry, actor=rt.actor)
    echo(f"definitions: {report.counts()}")
    for warning in report.warnings():
        echo(f"warning: {warning}", err=True)
    try:
        seal_pending(database)
    except SealWaitTimeout as exc:
        echo(f"warning: {exc}", err=True)
    with rt.transaction("summarise the store") as session:
        stored = list_definitions(session)
        found = list_instances(session)
        chain = audit.verify(
            session, cut_check=lambda n, details: cut_is_authentic(keyring, n, details)
        )
    echo("")
    echo_table(
        ["INTEGRATION", "VERSION", "AUTH", "METHODS", "INSTANCES"],
        [
            [
                d.id,
                d.version,
                d.definition.get("authType"),
                len(d.definition.get("methods", [])),
                d.instance_count,
            ]
            for d in stored
        ],
    )
    echo("")
    by_state: dict[str, int] = {}
    for inst in found:
        by_state[inst.state] = by_state.get(inst.state, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "none yet"
    echo(f"instances: {len(found)} ({states})")
    waiting = f", {chain.unsealed} not sealed yet" if chain.unsealed else ""
    state = "intact" if chain.ok else "BROKEN (see `prefect-integrations audit verify`)"
    echo(f"audit log: {chain.rows} rows, chain {state}{waiting}")
    if not found:
        echo("")
        for line in NEXT_STEPS:
            echo(line)


@app.command()
def serve(
    once: bool = typer.Option(False, "--once", help="Run each maintenance flow once and exit"),
    oauth: bool = typer.Option(True, help="Also run the OAuth connect service"),
    prefect_port: int = typer.Option(
        4200, min=1, max=65535, help="Port of the local Prefect server, if started"
    ),
    oauth_host: str | None = typer.Option(
        None, help="Connect service host (default: the redirect URI's)"
    ),
    oauth_port: int | None = typer.Option(
        None, min=0, max=65535, help="Connect service port (default: the redirect URI's)"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="With --once: print the summaries as JSON (the rest on stderr)"
    ),
    name_suffix: str | None = typer.Option(
        None,
        "--name-suffix",
        help="Serve as health-check-served-SUFFIX, ...: a second installation on the same "
        "Prefect server (e.g. staging)",
    ),
) -> None:
    """Run the maintenance flows on their schedules (and the OAuth connect service).

    Without PREFECT_API_URL a local Prefect server is started first. Ctrl-C stops all.
    Refuses deployments another serve runs now (see --name-suffix).
    """
    from prefect_integrations.maintenance.deployments import served_name
    from prefect_integrations.maintenance.service import serve as run_service

    if as_json and not once:
        raise typer.BadParameter("only with --once", param_hint="--json")
    if name_suffix is not None:
        if once:
            raise typer.BadParameter("not with --once", param_hint="--name-suffix")
        served_name("health-check", name_suffix)  # checks the suffix before anything starts
    rt = runtime()
    # Read here, before any flow run starts: a development keyring's warning comes once,
    # and the flow runs (processes of this command) inherit that it was given.
    rt.keyring  # noqa: B018
    summaries = run_service(
        rt,
        once=once,
        oauth=oauth,
        prefect_port=prefect_port,
        oauth_host=oauth_host,
        oauth_port=oauth_port,
        # summaries name instances and reasons: one line each, whatever they hold
        echo=lambda line: echo(line, err=as_json, one_line=True),
        name_suffix=name_suffix,
    )
    if as_json:
        emit_json(summaries)


def _check_encodable(args: Sequence[str]) -> None:
    """Refuse arguments that are not text (undecodable bytes arrive as lone surrogates).

    Nothing could store, compare or even print them, so they are refused before anything
    else, with the position of the argument.
    """
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(
                "Command line",
                [position],
                f"not UTF-8 text (undecodable byte at character {exc.start + 1})",
            ) from None


def _error_text(exc: IntegrationError) -> str:
    """``error[code]: message``, one line; each problem of a definition error on its own.

    A message may carry a provider's text or a caller's name: only the line breaks of the
    problem list are kept, every other control character is escaped.
    """
    if isinstance(exc, DefinitionError) and len(exc.problems) > 1:
        head = f"error[{exc.code}]: {len(exc.problems)} problems in definitions:"
        lines = [f"  - {safe_text(str(p), one_line=True)}" for p in exc.problems]
        return "\n".join([head, *lines])
    return f"error[{exc.code}]: {safe_text(str(exc), one_line=True)}"


def _usage_text(exc: UsageError) -> str:
    """``error[usage]: message (see `... --help`)``, one line, like the package's errors."""
    message = safe_text(exc.format_message(), one_line=True).rstrip(".")
    if exc.ctx is not None:
        message += f" (see `{exc.ctx.command_path} --help`)"
    return f"error[usage]: {message}"


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv``; return the exit code (errors become one clear line).

    Usage errors (an unknown option, a missing argument, a bad value) are one line
    ``error[usage]: message`` with exit 2; errors of the package are one line
    ``error[code]: message`` with exit 1.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    logfilter.install()  # decrypted credentials never reach a log record
    try:
        _check_encodable(args)
        result = app(args=args, prog_name=PROG_NAME, standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except NoArgsIsHelpError as exc:  # a group without its command: its help
        text = exc.ctx.get_help() if exc.ctx is not None else ""
        if text:  # typer's rich help prints itself and returns nothing
            echo(text)
        return 2
    except UsageError as exc:
        echo(_usage_text(exc), err=True)
        return exc.exit_code
    except typer.TyperException as exc:  # typer's other errors (an unreadable file option)
        echo(f"error[usage]: {safe_text(exc.format_message(), one_line=True)}", err=True)
        return exc.exit_code
    except typer.Abort:
        echo("Aborted.", err=True)
        return 1
    except IntegrationError as exc:
        echo(_error_text(exc), err=True)
        return 1
    except Exception as exc:
        if os.environ.get("PREFECT_INTEGRATIONS_DEBUG"):
            raise
        echo(
            f"error[unexpected]: {type(exc).__name__} "
            "(set PREFECT_INTEGRATIONS_DEBUG=1 to see the traceback)",
            err=True,
        )
        return 1
    return result if isinstance(result, int) else 0  # typer.Exit(n) returns n here


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
