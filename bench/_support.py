"""A throwaway, migrated database for the benchmarks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect_integrations import db as dbmod
from prefect_integrations.db import Database
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.embedded_files import destroy

__all__ = ["throwaway_database"]


@contextmanager
def throwaway_database(*, durable: bool = False, **engine: Any) -> Iterator[tuple[Database, Path]]:
    """A fresh embedded cluster (fsync off unless ``durable``) with a migrated database.

    Yields the database and a scratch folder; both are removed on exit.
    """
    home = Path(tempfile.mkdtemp(prefix="pi-bench-"))
    home.chmod(0o755)  # reachable by the unprivileged user the cluster runs as under root
    cluster = EmbeddedCluster(home, durable=durable)
    database: Database | None = None
    try:
        database = Database.from_url(cluster.ensure_running(database="bench"), **engine)
        dbmod.upgrade(database)
        yield database, home
    finally:
        if database is not None:
            database.dispose()
        try:
            destroy(cluster)  # its files too when they live in the shared clusters folder
        finally:
            shutil.rmtree(home, ignore_errors=True)
