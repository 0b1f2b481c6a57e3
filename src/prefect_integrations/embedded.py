"""The embedded PostgreSQL cluster: a private cluster under the home folder.

Started on demand from the machine's PostgreSQL binaries when no database URL is
configured. It listens on a unix socket only (no TCP), in a folder only its owner can
enter. PostgreSQL refuses to run as root, so when the caller is root the cluster runs as
an unprivileged user (``PREFECT_INTEGRATIONS_PG_USER``, default ``postgres`` when that
user exists, else ``nobody``). When that user cannot reach the home folder (``/root`` is
0700), the cluster files live under ``/var/lib/prefect-integrations/`` and the home holds
a symlink to them.
"""

from __future__ import annotations

import fcntl
import glob
import grp
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect_integrations.exceptions import ConfigurationError, PostgresNotFound
from prefect_integrations.store import bootstrap

__all__ = [
    "DATABASE_NAME",
    "SUPERUSER",
    "ClusterStatus",
    "EmbeddedCluster",
    "PostgresBinaries",
    "ShutdownMode",
    "find_binaries",
]

SUPERUSER = "prefect_integrations"
DATABASE_NAME = "prefect_integrations"
PORT = 5432

#: How `EmbeddedCluster.stop` shuts the server down (``pg_ctl -m``).
ShutdownMode = Literal["smart", "fast", "immediate"]
_ROOT_FALLBACK = Path("/var/lib/prefect-integrations/clusters")
_INSTALL_HINT = (
    "Install the PostgreSQL server and its contrib modules "
    "(Debian/Ubuntu: `apt-get install postgresql postgresql-contrib`; "
    "macOS: `brew install postgresql`), or set PREFECT_INTEGRATIONS_DATABASE_URL "
    "to an existing PostgreSQL database"
)

# Settings that keep secrets out of the server log: bind parameters (keys, plaintext)
# are never written, even with log_statement=all or on error.
_SERVER_SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "unix_socket_permissions": "0700",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "max_connections": "100",
}
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """A folder of PostgreSQL server binaries and its major version."""

    bindir: Path
    version: int

    def tool(self, name: str) -> str:
        """Return the path of one binary (``initdb``, ``pg_ctl``, ...)."""
        return str(self.bindir / name)


def _major_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"(\d+)", out)
    return int(match.group(1)) if match else None


def _candidate_bindirs() -> Iterator[Path]:
    on_path = shutil.which("pg_ctl")
    if on_path:
        yield Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            out = ""
        if out:
            yield Path(out)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0),
        reverse=True,
    )
    for found in versions:
        yield Path(found)


def find_binaries() -> PostgresBinaries:
    """Find initdb/pg_ctl/postgres via PATH, ``pg_config --bindir`` or /usr/lib/postgresql."""
    for bindir in _candidate_bindirs():
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            version = _major_version(bindir)
            if version is not None:
                return PostgresBinaries(bindir=bindir, version=version)
    raise PostgresNotFound(f"No PostgreSQL server binaries found. {_INSTALL_HINT}")


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What `EmbeddedCluster.status` reports."""

    initialized: bool
    running: bool
    data_dir: Path
    socket_dir: Path
    log_file: Path
    run_as: str | None


@dataclass(frozen=True, slots=True)
class _ServiceUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def _service_user(name: str | None) -> _ServiceUser:
    candidates = [name] if name else ["postgres", "nobody"]
    for candidate in candidates:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        groups = {g.gr_gid for g in grp.getgrall() if candidate in g.gr_mem}
        groups.add(entry.pw_gid)
        return _ServiceUser(candidate, entry.pw_uid, entry.pw_gid, frozenset(groups))
    raise ConfigurationError(
        f"The embedded PostgreSQL cannot run as root and the user "
        f"{' or '.join(repr(c) for c in candidates)} does not exist; create an unprivileged "
        "user and set PREFECT_INTEGRATIONS_PG_USER to it"
    )


def _can_traverse(path: Path, user: _ServiceUser) -> bool:
    """True when ``user`` may enter every folder from / down to ``path``."""
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            return True  # created by us for the user
        st = folder.stat()
        mode = st.st_mode
        if st.st_uid == user.uid:
            allowed = bool(mode & stat.S_IXUSR)
        elif st.st_gid in user.groups:
            allowed = bool(mode & stat.S_IXGRP)
        else:
            allowed = bool(mode & stat.S_IXOTH)
        if not allowed:
            return False
    return True


class EmbeddedCluster:
    """A private PostgreSQL cluster kept in ``<home>/postgres``.

    ``durable=False`` turns off fsync for throwaway clusters (tests, benchmarks).
    """

    def __init__(
        self,
        home: Path,
        *,
        pg_user: str | None = None,
        durable: bool = True,
        binaries: PostgresBinaries | None = None,
    ) -> None:
        self.home = home
        self.durable = durable
        self._binaries = binaries
        self._user = _service_user(pg_user) if os.geteuid() == 0 else None
        self.base_dir = self._base_dir()

    @property
    def data_dir(self) -> Path:
        """The PostgreSQL data directory."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The folder holding the server's unix socket."""
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.base_dir / "log" / "postgresql.log"

    @property
    def binaries(self) -> PostgresBinaries:
        """The PostgreSQL binaries used (found on first use)."""
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    def _base_dir(self) -> Path:
        link = self.home / "postgres"
        if link.is_symlink():
            return link.resolve()
        if self._user is None:
            return link
        if self.home.is_dir() and _can_traverse(link, self._user):
            return link
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        return _ROOT_FALLBACK / digest

    # -- process helpers ---------------------------------------------------------------

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PG", "PREFECT_INTEGRATIONS"))
        }
        env["LC_ALL"] = "C"
        return subprocess.run(
            args,
            cwd=self.base_dir,
            env=env,
            capture_output=True,
            text=True,
            check=check,
            **kwargs,
        )

    def _prepare_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        link = self.home / "postgres"
        if self.base_dir != link:
            self.base_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not link.is_symlink():
                link.symlink_to(self.base_dir)
        for folder in (self.base_dir, self.socket_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self._user is not None:
                os.chown(folder, self._user.uid, self._user.gid)
            folder.chmod(0o700)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.home / ".postgres.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- lifecycle ------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        """True when the data directory holds a cluster."""
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """True when the server of this cluster is running."""
        if not self.is_initialized():
            return False
        result = self._run(
            [self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "status"], check=False
        )
        return result.returncode == 0

    def initialize(self) -> None:
        """Create the cluster (initdb) with settings that keep it private."""
        self._prepare_dirs()
        try:
            self._run(
                [
                    self.binaries.tool("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise ConfigurationError(
                f"initdb failed for {self.data_dir}: {exc.stderr.strip()[-500:]}"
            ) from None
        settings = dict(_SERVER_SETTINGS)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        if not self.durable:
            settings.update(_FAST_SETTINGS)
        conf = self.data_dir / "postgresql.conf"
        lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with conf.open("a") as handle:
            handle.write("\n# prefect-integrations embedded cluster\n" + lines)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        try:
            self._run(
                [
                    self.binaries.tool("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            tail = ""
            if self.log_file.exists():
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-10:])
            raise ConfigurationError(
                f"The embedded PostgreSQL in {self.data_dir} did not start: "
                f"{exc.stderr.strip() or exc.stdout.strip()}\n{tail}"
            ) from None

    def stop(self, *, mode: ShutdownMode = "fast") -> bool:
        """Stop the server. Returns False when it was not running.

        ``fast`` (default) ends sessions and shuts down cleanly; ``immediate`` aborts like a
        crash, so the next start replays the WAL.
        """
        with self._lock():
            if not self.is_running():
                return False
            self._run(
                [self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )
            return True

    def restart(self, *, mode: ShutdownMode = "fast") -> None:
        """Stop the server (see `stop` for ``mode``) and start it again; waits until ready."""
        self.stop(mode=mode)
        with self._lock():
            self.start()

    def ensure_running(self, *, database: str = DATABASE_NAME) -> str:
        """Initialise and start the cluster as needed, create ``database``; return its URL."""
        with self._lock():
            if not self.is_initialized():
                self.initialize()
            if not self.is_running():
                self.start()
            bootstrap.ensure_database(self.dsn(database="postgres"), database)
        return self.url(database=database)

    def drop_database(self, database: str) -> None:
        """Drop one database of the cluster, if it exists."""
        bootstrap.drop_database(self.dsn(database="postgres"), database)

    def status(self) -> ClusterStatus:
        """Report where the cluster lives and whether it runs."""
        return ClusterStatus(
            initialized=self.is_initialized(),
            running=self.is_running(),
            data_dir=self.data_dir,
            socket_dir=self.socket_dir,
            log_file=self.log_file,
            run_as=self._user.name if self._user else None,
        )

    def dsn(self, *, database: str = DATABASE_NAME, user: str = SUPERUSER) -> str:
        """A libpq connection string for ``database`` as ``user``."""
        return f"host={self.socket_dir} port={PORT} dbname={database} user={user}"

    def url(self, *, database: str = DATABASE_NAME, user: str = SUPERUSER) -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database`` as ``user``."""
        return f"postgresql+psycopg://{user}@/{database}?host={self.socket_dir}&port={PORT}"
