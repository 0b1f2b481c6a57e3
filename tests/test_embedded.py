from __future__ import annotations

import glob
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.embedded import EmbeddedCluster, find_binaries
from prefect_integrations.exceptions import DatabaseUnavailable, PostgresNotFound
from prefect_integrations.store import bootstrap


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
        assert owner != 0 and pwd.getpwuid(owner).pw_name in ("postgres", "nobody")
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
        reset_runtime()
        assert run(["up"]) == 0  # idempotent
        assert "unchanged 3" in capsys.readouterr().out
        reset_runtime()
        assert run(["db", "status"]) == 0
        assert "running:     True" in capsys.readouterr().out
        assert run(["db", "url", "--role", "runtime"]) == 0
        assert "prefect_integrations_runtime@" in capsys.readouterr().out
        assert run(["db", "stop"]) == 0
        assert "stopped" in capsys.readouterr().out
        reset_runtime()
        with pytest.raises(DatabaseUnavailable):
            from prefect_integrations.db import Database

            with Database.from_url(cluster.url()).transaction("check") as s:
                s.connection()
    finally:
        reset_runtime()
        cluster.stop()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
