"""`prefect-integrations db ...`: the embedded cluster, migrations and grants."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from prefect_integrations import db as dbmod
from prefect_integrations import embedded_files
from prefect_integrations.cli._common import echo, runtime
from prefect_integrations.embedded_host import SHARED_CLUSTERS
from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.models import ADMIN_ROLE, RUNTIME_ROLE
from prefect_integrations.store.grants import apply_grants

app = typer.Typer(help="The database: embedded cluster, migrations, roles.", no_args_is_help=True)


@app.command()
def start() -> None:
    """Initialise (first time) and start the embedded PostgreSQL cluster."""
    rt = runtime()
    rt.require_embedded("db start")
    cluster = dbmod.embedded_cluster(rt.settings)
    url = cluster.ensure_running()
    echo(f"Embedded PostgreSQL running: {url}")


@app.command()
def stop() -> None:
    """Stop the embedded PostgreSQL cluster."""
    rt = runtime()
    rt.require_embedded("db stop")
    stopped = dbmod.embedded_cluster(rt.settings).stop()
    echo("Embedded PostgreSQL stopped" if stopped else "Embedded PostgreSQL was not running")


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _confirm(question: str, *, yes: bool, command: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"`{command}` deletes files for good and standard input is not a terminal to "
            "confirm it: pass --yes. Nothing was deleted"
        )
    typer.confirm(question, abort=True)


@app.command()
def destroy(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    orphans: Annotated[
        bool,
        typer.Option(
            "--orphans",
            help="Instead: remove root's shared cluster folders whose home was deleted",
        ),
    ] = False,
) -> None:
    """Stop the embedded cluster and delete its files for good (databases, log, passwords).

    The keyring and the home folder stay. Refused when PREFECT_INTEGRATIONS_DATABASE_URL
    is set: an external database is never deleted.
    """
    rt = runtime()
    rt.require_embedded("db destroy")
    if orphans:
        _destroy_orphans(yes=yes)
        return
    cluster = dbmod.embedded_cluster(rt.settings)
    found = embedded_files.cluster_files(cluster)
    for folder in found.kept:
        echo(f"  {folder}: not ours, kept (no prefect-integrations cluster marker)")
    if not found.paths:
        echo(f"No embedded PostgreSQL cluster for {cluster.home}: nothing to delete")
        return
    ours = embedded_files.owns_server(cluster, found)
    running = embedded_files.server_running(cluster) if ours else False
    echo(f"This deletes the embedded PostgreSQL cluster of {cluster.home}, every database in it:")
    for path in found.paths:
        echo(f"  {path}")
    echo(f"  {_size_text(found.size)} in all" + (", after stopping the server" if running else ""))
    _confirm("Delete these files?", yes=yes, command="db destroy")
    removed = embedded_files.destroy(cluster)
    kept = "; the folders not ours were kept" if removed.kept else ""
    echo(f"Embedded PostgreSQL cluster deleted ({len(removed.paths)} paths){kept}")


def _destroy_orphans(*, yes: bool) -> None:
    found, unknown = embedded_files.find_orphans()
    for folder in unknown:
        echo(f"  {folder}: made before homes were recorded; kept (its home is unknown)")
    if not found:
        echo(f"No orphaned cluster in {SHARED_CLUSTERS}")
        return
    echo("Clusters whose home no longer uses them:")
    for orphan in found:
        note = ""
        if orphan.running:
            note = (
                f"; running, kept (stop it: pg_ctl -D {orphan.folder / 'data'} stop, as its owner)"
            )
        elif orphan.unmounted:
            note = "; its home's file system is not mounted, kept (mount it, then check again)"
        echo(f"  {orphan.folder} (home {orphan.home}), {_size_text(orphan.size)}{note}")
    if all(orphan.running or orphan.unmounted for orphan in found):
        return
    _confirm("Delete the clusters that are not running?", yes=yes, command="db destroy --orphans")
    removed = embedded_files.remove_orphans(found)
    echo(f"Deleted {len(removed)} orphaned cluster(s)")


@app.command()
def status() -> None:
    """Show where the database is and whether it runs."""
    rt = runtime()
    if not rt.settings.embedded:
        assert rt.settings.database_url is not None
        echo(f"External database: {dbmod.redact_url(rt.settings.database_url.get_secret_value())}")
        return
    st = dbmod.embedded_cluster(rt.settings).status()
    echo(f"initialized: {st.initialized}")
    echo(f"running:     {st.running}")
    echo(f"data dir:    {st.data_dir}")
    echo(f"socket dir:  {st.socket_dir}")
    echo(f"log file:    {st.log_file}")
    echo(f"passwords:   {st.password_dir}")
    if st.run_as:
        echo(f"runs as:     {st.run_as}")
    if not st.running:
        raise typer.Exit(3)


@app.command()
def url(
    role: Annotated[
        str, typer.Option(help="owner | admin | runtime: the role the URL connects as")
    ] = "owner",
) -> None:
    """Print the database URL (password hidden)."""
    rt = runtime()
    if not rt.settings.embedded:
        assert rt.settings.database_url is not None
        echo(dbmod.redact_url(rt.settings.database_url.get_secret_value()))
        return
    users = {"admin": ADMIN_ROLE, "runtime": RUNTIME_ROLE}
    cluster = dbmod.embedded_cluster(rt.settings)
    if role == "owner":
        echo(cluster.url())
    elif role in users:
        echo(cluster.url(user=users[role]))
    else:
        raise typer.BadParameter("use owner, admin or runtime", param_hint="--role")


@app.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations (default: to the newest)."""
    rt = runtime()
    dbmod.upgrade(rt.db, revision)
    echo(f"Database at revision {dbmod.current_revision(rt.db)}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, '-1', or 'base'")],
) -> None:
    """Revert migrations down to REVISION ('base' removes every table of the package)."""
    rt = runtime()
    dbmod.downgrade(rt.db, revision)
    echo(f"Database at revision {dbmod.current_revision(rt.db) or 'base'}")


@app.command()
def current() -> None:
    """Print the revision the database is at and the newest shipped one."""
    rt = runtime()
    revision = dbmod.current_revision(rt.db)
    head = dbmod.head_revision()
    echo(f"current: {revision or 'base (no migrations applied)'}")
    echo(f"head:    {head}")
    if revision != head:
        raise typer.Exit(3)


@app.command()
def grant(
    admin_role: Annotated[str, typer.Option(help="Role that manages instances")] = ADMIN_ROLE,
    runtime_role: Annotated[str, typer.Option(help="Role flows run as")] = RUNTIME_ROLE,
    login: Annotated[bool, typer.Option(help="Create missing roles with LOGIN")] = True,
) -> None:
    """Create the admin and runtime roles if missing and grant their privileges."""
    rt = runtime()
    apply_grants(rt.db, admin_role=admin_role, runtime_role=runtime_role, login=login)
    echo(f"Granted: admin role '{admin_role}', runtime role '{runtime_role}'")
