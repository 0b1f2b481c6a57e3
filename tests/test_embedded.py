from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.embedded import (
    DATABASE_NAME,
    DEDICATED_USER,
    ROLES,
    SUPERUSER,
    EmbeddedCluster,
    find_binaries,
)
from prefect_integrations.exceptions import (
    ConfigurationError,
    DatabaseUnavailable,
    PostgresNotFound,
)
from prefect_integrations.models import ADMIN_ROLE, RUNTIME_ROLE
from prefect_integrations.store import bootstrap

from .conftest import remove_cluster


def test_finds_binaries() -> None:
    found = find_binaries()
    assert (found.bindir / "initdb").is_file() and found.version >= 13


def test_missing_binaries_error_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(glob, "glob", lambda _pattern: [])
    with pytest.raises(PostgresNotFound, match="apt-get install postgresql postgresql-contrib"):
        find_binaries()


def test_cluster_is_private(cluster: EmbeddedCluster) -> None:
    with psycopg.connect(cluster.dsn(database="postgres")) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', "
                "'unix_socket_permissions', 'log_parameter_max_length', "
                "'log_parameter_max_length_on_error', 'data_directory')"
            ).fetchall()
        )
    assert settings["listen_addresses"] == ""
    assert settings["unix_socket_permissions"] == "0700"
    assert settings["log_parameter_max_length"] == "0"
    assert settings["log_parameter_max_length_on_error"] == "0"
    owner = Path(settings["data_directory"]).stat().st_uid
    if os.geteuid() == 0:
        assert owner != 0 and pwd.getpwuid(owner).pw_name in (DEDICATED_USER, "postgres", "nobody")
        assert cluster.status().run_as == pwd.getpwuid(owner).pw_name
    else:
        assert owner == os.geteuid()
    assert (cluster.socket_dir.stat().st_mode & 0o777) == 0o700


def test_ensure_database_creates_once_and_drop_is_idempotent(cluster: EmbeddedCluster) -> None:
    admin = cluster.dsn(database="postgres")
    name = f"bootstrap_{os.getpid()}"
    try:
        assert bootstrap.ensure_database(admin, name) is True
        assert bootstrap.ensure_database(admin, name) is False
        with psycopg.connect(cluster.dsn(database=name)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        bootstrap.drop_database(admin, name)
    bootstrap.drop_database(admin, name)
    with psycopg.connect(admin) as conn:
        gone = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert gone is None


def test_cli_lifecycle_in_a_fresh_home(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(tempfile.mkdtemp(prefix="pi-home-"))  # 0700: under root the fallback is used
    monkeypatch.setenv("PREFECT_INTEGRATIONS_HOME", str(home))
    monkeypatch.delenv("PREFECT_INTEGRATIONS_DATABASE_URL", raising=False)
    monkeypatch.delenv("PREFECT_INTEGRATIONS_KEYS", raising=False)
    reset_runtime()
    cluster = EmbeddedCluster(home)
    try:
        assert run(["db", "status"]) == 3
        assert run(["up"]) == 0
        out = capsys.readouterr().out
        assert "definitions: created 3," in out and "audit log: 3 rows, chain intact" in out
        keyring_file = home / "keyring"
        assert (keyring_file.stat().st_mode & 0o777) == 0o600
        assert ((home / "passwords").stat().st_mode & 0o777) == 0o700
        passwords = [cluster.passfile(role).read_text().split(":")[-1].strip() for role in ROLES]
        assert not [p for p in passwords if p in out]
        reset_runtime()
        assert run(["up"]) == 0  # idempotent
        assert "unchanged 3" in capsys.readouterr().out
        reset_runtime()
        assert run(["db", "status"]) == 0
        assert "running:     True" in capsys.readouterr().out
        assert run(["db", "url", "--role", "runtime"]) == 0
        out = capsys.readouterr().out
        assert "prefect_integrations_runtime@" in out
        assert f"passfile={cluster.passfile(RUNTIME_ROLE)}" in out
        assert not [p for p in passwords if p in out]
        with psycopg.connect(cluster.dsn(user=RUNTIME_ROLE)) as conn:
            assert conn.execute("SELECT count(*) FROM integration_definitions").fetchone() == (3,)
        assert run(["db", "stop"]) == 0
        assert "stopped" in capsys.readouterr().out
        reset_runtime()
        with pytest.raises(DatabaseUnavailable):
            from prefect_integrations.db import Database

            with Database.from_url(cluster.url()).transaction("check") as s:
                s.connection()
    finally:
        reset_runtime()
        remove_cluster(cluster)


def _refused(conninfo: str, **kwargs: str) -> str:
    """Connect and expect the server to refuse; return its message."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(make_conninfo(conninfo, **kwargs)).close()
    return str(info.value)


def test_every_role_needs_its_own_password(
    cluster: EmbeddedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    no_passfile = str(tmp_path / "absent.pgpass")
    hba = (cluster.data_dir / "pg_hba.conf").read_text()
    methods = {line.split()[-1] for line in hba.splitlines() if line and line[0] != "#"}
    assert methods == {"scram-sha-256", "reject"}
    # The runtime role logs in with its own password file...
    with psycopg.connect(cluster.dsn(database="postgres", user=RUNTIME_ROLE)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (RUNTIME_ROLE,)
        for other in (SUPERUSER, ADMIN_ROLE):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(other)))
            conn.rollback()
    # ...which opens no other role, and no role opens without a password.
    runtime_password = cluster.passfile(RUNTIME_ROLE).read_text().strip().split(":")[-1]
    for role in (SUPERUSER, ADMIN_ROLE):
        base = cluster.dsn(database="postgres", user=role)
        assert "password authentication failed" in _refused(base, password=runtime_password)
        assert "password authentication failed" in _refused(base, password="guess")
        assert "no password supplied" in _refused(base, passfile=no_passfile)
    base = cluster.dsn(database="postgres", user=RUNTIME_ROLE)
    assert "no password supplied" in _refused(base, passfile=no_passfile)


def test_passwords_stay_in_private_files(cluster: EmbeddedCluster) -> None:
    assert (cluster.password_dir.stat().st_mode & 0o777) == 0o700
    passwords = {}
    for role in ROLES:
        path = cluster.passfile(role)
        st = path.stat()
        assert (st.st_mode & 0o777) == 0o600 and st.st_uid == os.geteuid()
        host, port, database, user, password = path.read_text().strip().split(":")
        assert (host, port, database, user) == ("*", "*", "*", role) and len(password) >= 40
        passwords[role] = password
        for text in (cluster.url(user=role), cluster.dsn(user=role)):
            assert f"passfile={path}" in text.replace("'", "") and password not in text
    assert len(set(passwords.values())) == len(ROLES)
    log = cluster.log_file.read_text(errors="replace")
    assert not [role for role, password in passwords.items() if password in log]
    if os.geteuid() == 0:  # the OS user the server runs as cannot read them
        run_as = pwd.getpwuid(cluster.data_dir.stat().st_uid)
        denied = subprocess.run(
            ["cat", str(cluster.passfile(SUPERUSER))],
            user=run_as.pw_uid,
            group=run_as.pw_gid,
            extra_groups=[],
            capture_output=True,
            check=False,
        )
        assert denied.returncode != 0 and not denied.stdout
        assert (cluster.data_dir.stat().st_mode & 0o777) == 0o700


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _legacy_cluster(home: Path) -> EmbeddedCluster:
    """A cluster made the way versions before passwords made it: ``--auth=trust``, run by
    root as the shared ``postgres`` account.
    """
    shared = "postgres" if os.geteuid() == 0 and _user_exists("postgres") else None
    cluster = EmbeddedCluster(home, durable=False, pg_user=shared)
    cluster._prepare_dirs()
    cluster._run(
        [
            cluster.binaries.tool("initdb"),
            *("-D", str(cluster.data_dir), "-U", SUPERUSER),
            *("--auth=trust", "--encoding=UTF8", "--locale=C"),
        ]
    )
    with (cluster.data_dir / "postgresql.conf").open("a") as handle:
        handle.write(
            f"listen_addresses = ''\nport = 5432\nunix_socket_permissions = 0700\n"
            f"unix_socket_directories = '{cluster.socket_dir}'\nfsync = off\n"
            "log_statement = all\n"  # so the test sees what setting the passwords sends
        )
    return cluster


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_trust_cluster_of_an_older_version_is_secured_in_place(
    running: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    home = Path(tempfile.mkdtemp(prefix="pi-legacy-"))
    home.chmod(0o755)
    cluster = _legacy_cluster(home)
    try:
        cluster.start()

        def trusted(role: str, database: str = "postgres") -> str:
            return f"host={cluster.socket_dir} port=5432 dbname={database} user={role}"

        with psycopg.connect(trusted(SUPERUSER), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE_NAME}")
            conn.execute(f"CREATE ROLE {RUNTIME_ROLE} LOGIN")
        with psycopg.connect(trusted(SUPERUSER, DATABASE_NAME)) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('from the old version')")
        # The flaw: under trust the runtime role's connection string, with the user
        # changed, opens the superuser.
        psycopg.connect(trusted(SUPERUSER)).close()
        if not running:
            cluster.stop()

        upgraded = EmbeddedCluster(home, durable=False)
        assert upgraded.status().run_as == cluster.status().run_as  # the owner of its files
        url = upgraded.ensure_running()

        assert "passfile=" in url
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("from the old version",)]
        with psycopg.connect(cluster.dsn(database="postgres", user=RUNTIME_ROLE)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (RUNTIME_ROLE,)
        for role in ROLES:
            assert "no password supplied" in _refused(
                trusted(role), passfile=str(tmp_path / "absent")
            )
            assert (cluster.passfile(role).stat().st_mode & 0o777) == 0o600
        assert "trust" not in (cluster.data_dir / "pg_hba.conf").read_text()
        log = cluster.log_file.read_text(errors="replace")
        assert "ALTER ROLE" in log and "SCRAM-SHA-256$" in log  # verifiers only
        for role in ROLES:
            assert cluster.passfile(role).read_text().split(":")[-1].strip() not in log
        # Once converted, a start keeps the passwords it has.
        before = {role: cluster.passfile(role).read_text() for role in ROLES}
        cluster.ensure_running()
        assert {role: cluster.passfile(role).read_text() for role in ROLES} == before
        # Without the superuser's password file the cluster cannot be entered: said so.
        cluster.passfile(SUPERUSER).rename(home / "kept-aside")
        with pytest.raises(ConfigurationError, match=r"superuser.*is missing"):
            cluster.ensure_running()
        cluster.passfile(SUPERUSER).write_text(f"*:*:*:{SUPERUSER}:not-the-password\n")
        cluster.passfile(SUPERUSER).chmod(0o600)
        with pytest.raises(ConfigurationError, match="password authentication failed") as info:
            cluster.ensure_running()
        assert "not-the-password" not in str(info.value)
    finally:
        remove_cluster(cluster)
