"""Shared fixtures: a throwaway PostgreSQL cluster and one fresh database per test.

The cluster is the package's own embedded cluster (fsync off), started once per test
session in a temporary home and removed at the end with `embedded_files.destroy`, so
nothing stays behind, in the home or in the shared clusters folder. A migrated, granted
template database is made once; each test gets a copy of it (``CREATE DATABASE ...
TEMPLATE``), so tests never share rows.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT
from prefect.testing.utilities import prefect_test_harness
from psycopg import sql

from prefect_integrations import db as dbmod
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry, load_registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.embedded_files import destroy, find_orphans
from prefect_integrations.keyring import Keyring, generate_key, parse_keyring
from prefect_integrations.models import ADMIN_ROLE, RUNTIME_ROLE
from prefect_integrations.store.definitions import sync_definitions
from prefect_integrations.store.grants import apply_grants

from .definitions import write_echo_definitions
from .provider import FakeProvider, serve

TEMPLATE = "pi_template"

# Property tests talk to a real database: no per-example deadline, and no example
# database written into the work tree. Under CI (CI set) the examples are derandomized so
# a run is reproducible; locally every run explores new examples.
settings.register_profile(
    "project",
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("project")
_counter = itertools.count(1)


def remove_cluster(embedded: EmbeddedCluster) -> None:
    """Stop a cluster a test made and remove all its files, then its home."""
    try:
        destroy(embedded)
    finally:
        shutil.rmtree(embedded.home, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def no_cluster_left_behind() -> Iterator[None]:
    """Fail the session when it leaves a cluster folder whose home is gone (under root)."""
    if os.geteuid() != 0:
        yield
        return
    before = {orphan.folder for orphan in find_orphans()[0]}
    yield
    left = [orphan for orphan in find_orphans()[0] if orphan.folder not in before]
    assert not left, f"clusters left in the shared folder: {left}"


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    home = Path(tempfile.mkdtemp(prefix="pi-test-"))
    home.chmod(0o755)  # reachable by the unprivileged user the cluster runs as under root
    embedded = EmbeddedCluster(home, durable=False)
    try:
        url = embedded.ensure_running(database=TEMPLATE)
        template = Database.from_url(url)
        dbmod.upgrade(template)
        apply_grants(template)
        template.dispose()
        yield embedded
    finally:
        remove_cluster(embedded)


def _create_from_template(cluster: EmbeddedCluster, name: str) -> None:
    with psycopg.connect(cluster.dsn(database="postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )


@pytest.fixture
def database_name(cluster: EmbeddedCluster) -> Iterator[str]:
    name = f"pi_test_{os.getpid()}_{next(_counter)}"
    _create_from_template(cluster, name)
    yield name
    cluster.drop_database(name)


@pytest.fixture
def db(cluster: EmbeddedCluster, database_name: str) -> Iterator[Database]:
    """The test database, connected as the owner (superuser of the test cluster)."""
    database = Database.from_url(cluster.url(database=database_name))
    yield database
    database.dispose()


@pytest.fixture
def admin_db(cluster: EmbeddedCluster, database_name: str) -> Iterator[Database]:
    """The test database, connected as the admin role."""
    database = Database.from_url(cluster.url(database=database_name, user=ADMIN_ROLE))
    yield database
    database.dispose()


@pytest.fixture
def runtime_db(cluster: EmbeddedCluster, database_name: str) -> Iterator[Database]:
    """The test database, connected as the runtime role."""
    database = Database.from_url(cluster.url(database=database_name, user=RUNTIME_ROLE))
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="session")
def test_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Shipped definitions plus an apikey and a custom integration for tests."""
    folder = tmp_path_factory.mktemp("definitions")
    (folder / "acme.json").write_text(ACME_DEFINITION)
    (folder / "signer.json").write_text(SIGNER_DEFINITION)
    return load_registry([folder])


@pytest.fixture(scope="session")
def echo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of definitions of providers the tests serve (see tests/definitions.py)."""
    return write_echo_definitions(tmp_path_factory.mktemp("echo-definitions"))


@pytest.fixture(scope="session")
def echo_registry(echo_dir: Path) -> Registry:
    """Shipped definitions plus the echo definitions."""
    return load_registry([echo_dir])


@pytest.fixture
def echo_db(db: Database, echo_registry: Registry) -> Database:
    """The test database with shipped and echo definitions synced."""
    with db.transaction() as s:
        sync_definitions(s, echo_registry, actor="tests")
    return db


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    """A real HTTP server on loopback playing the provider."""
    with serve() as fake:
        yield fake


@pytest.fixture
def synced(db: Database, test_registry: Registry) -> Database:
    """The test database with every test definition synced."""
    with db.transaction() as session:
        sync_definitions(session, test_registry, actor="tests")
    return db


@pytest.fixture
def keyring() -> Keyring:
    return parse_keyring(f"k1:{generate_key()}")


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, db: Database, keyring: Keyring, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Environment for CLI runs against the test database."""
    key_text = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)
    env = {
        "PREFECT_INTEGRATIONS_DATABASE_URL": db.url,
        "PREFECT_INTEGRATIONS_KEYS": key_text,
        "PREFECT_INTEGRATIONS_HOME": str(tmp_path / "home"),
        "PREFECT_INTEGRATIONS_ACTOR": "cli-tests",
        "PREFECT_INTEGRATIONS_DEFINITIONS_PATH": "",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_runtime()
    yield env
    reset_runtime()


@pytest.fixture(scope="session")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Prefect test server (started once); yields the local result storage folder."""
    storage = tmp_path_factory.mktemp("prefect-results")
    from prefect.settings import temporary_settings

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(
            updates={PREFECT_LOCAL_STORAGE_PATH: storage, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}
        ),
    ):
        yield storage


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    echo_db: Database,
    keyring: Keyring,
    echo_dir: Path,
    tmp_path: Path,
) -> Iterator[None]:
    key_text = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DATABASE_URL", echo_db.url)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KEYS", key_text)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(echo_dir))
    monkeypatch.setenv("PREFECT_INTEGRATIONS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_INTEGRATIONS_ACTOR", "prefect-tests")
    reset_runtime()
    yield
    reset_runtime()


ACME_DEFINITION = """
{
  "integrationId": "acme",
  "name": "Acme API",
  "description": "An API-key integration used by the tests.",
  "version": "1.2.3",
  "authType": "apikey",
  "configSchema": {
    "type": "object",
    "properties": {
      "base_url": {"type": "string", "format": "uri"},
      "region": {"enum": ["eu", "us"]},
      "limits": {
        "type": "object",
        "properties": {"per_minute": {"type": "integer", "minimum": 1}}
      }
    },
    "additionalProperties": false
  },
  "baseUrl": "https://api.acme.example/v1",
  "methods": [
    {
      "id": "ping",
      "name": "Ping",
      "description": "Check the connection.",
      "inputSchema": {"type": "object", "properties": {}},
      "outputSchema": {"type": "object"},
      "http": {"method": "GET", "path": "/ping"}
    }
  ]
}
"""

SIGNER_DEFINITION = """
{
  "integrationId": "signer",
  "name": "Signer",
  "description": "A custom-auth integration used by the tests.",
  "version": "0.1.0",
  "authType": "custom",
  "auth": {"custom": {"scheme": "hmac_sha256"}},
  "configSchema": {"type": "object"},
  "baseUrl": "https://api.signer.example",
  "methods": [
    {
      "id": "sign",
      "name": "Sign",
      "description": "Sign something.",
      "inputSchema": {"type": "object"},
      "outputSchema": {"type": "object"},
      "http": {"method": "POST", "path": "/sign", "body": {"json": "{{ inputs }}"}}
    }
  ]
}
"""
