"""Database access: engines, sessions, migrations and error translation.

Store functions take a `Session` and leave the transaction to their caller;
`Database.transaction()` is the usual way to get one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import errors as pg_errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from prefect_integrations._resources import bundled_path
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.exceptions import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    PermissionDenied,
)
from prefect_integrations.settings import Settings, get_settings

__all__ = [
    "VERSION_TABLE",
    "Database",
    "current_revision",
    "downgrade",
    "embedded_cluster",
    "head_revision",
    "make_engine",
    "redact_url",
    "translate_errors",
    "upgrade",
]

VERSION_TABLE = "prefect_integrations_alembic_version"


def redact_url(url: str) -> str:
    """Render a database URL with its password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparseable database URL>"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine that never renders bind parameters (keys, plaintext) in errors."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    options: dict[str, Any] = {
        "hide_parameters": True,
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": 10, "application_name": "prefect-integrations"},
    }
    options.update(kwargs)
    return sa.create_engine(url, **options)


def embedded_cluster(settings: Settings) -> EmbeddedCluster:
    """The embedded cluster described by the settings."""
    return EmbeddedCluster(settings.home, pg_user=settings.pg_user)


def _is_connection_failure(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, psycopg.OperationalError):
        sqlstate = getattr(orig, "sqlstate", None)
        return sqlstate is None or sqlstate.startswith(("08", "57P"))
    return False


@contextmanager
def translate_errors(operation: str, *, url: str | None = None) -> Iterator[None]:
    """Turn driver errors into package errors that name ``operation`` (never parameters)."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        orig = exc.orig
        if _is_connection_failure(exc):
            where = f" at {redact_url(url)}" if url else ""
            reason = str(orig).strip().splitlines()[0] if orig is not None else "no answer"
            raise DatabaseUnavailable(
                f"Cannot {operation}: PostgreSQL{where} is unavailable ({reason})"
            ) from None
        if isinstance(orig, pg_errors.InsufficientPrivilege):
            role = _diag(orig)
            raise PermissionDenied(f"Database role is not allowed to {operation}: {role}") from None
        if isinstance(orig, psycopg.DataError):
            raise DatabaseError(f"Cannot {operation}: {_diag(orig)}") from None
        if isinstance(orig, pg_errors.UndefinedTable):
            raise DatabaseError(
                f"Cannot {operation}: the schema is missing; run `prefect-integrations db upgrade`"
            ) from None
        raise


def _diag(orig: BaseException) -> str:
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    return str(primary or orig).strip().splitlines()[0]


@dataclass
class Database:
    """An engine plus a session factory for one database URL."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> Database:
        """Connect to ``url`` (lazily: nothing is opened until first use)."""
        engine = make_engine(url, **engine_kwargs)
        return cls(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, start: bool = True) -> Database:
        """Connect to the configured URL, or to the embedded cluster (started if ``start``)."""
        settings = settings or get_settings()
        if settings.database_url is not None:
            return cls.from_url(settings.database_url.get_secret_value())
        cluster = embedded_cluster(settings)
        url = cluster.ensure_running() if start else cluster.url()
        return cls.from_url(url)

    @contextmanager
    def transaction(self, operation: str = "use the database") -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with translate_errors(operation, url=self.url), self.sessions.begin() as session:
            yield session

    @contextmanager
    def connect(self, operation: str = "use the database") -> Iterator[Connection]:
        """A connection in one transaction."""
        with translate_errors(operation, url=self.url), self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(bundled_path("migrations")))
    config.attributes["connection"] = connection
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    with db.connect("migrate the database") as connection:
        command.upgrade(_alembic_config(connection), revision)


def downgrade(db: Database, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` removes every table)."""
    with db.connect("migrate the database") as connection:
        command.downgrade(_alembic_config(connection), revision)


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    with db.connect("read the schema revision") as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with the package."""
    config = Config()
    config.set_main_option("script_location", str(bundled_path("migrations")))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise ConfigurationError("No migrations are shipped with prefect-integrations")
    return head
