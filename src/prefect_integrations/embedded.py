"""The embedded PostgreSQL cluster: a private cluster under the home folder.

Started on demand from the machine's PostgreSQL binaries when no database URL is
configured. It listens on a unix socket only (no TCP), in a folder only its owner can
enter. PostgreSQL refuses to run as root, so when the caller is root the cluster runs as
an unprivileged user: ``PREFECT_INTEGRATIONS_PG_USER``, else the owner of an existing
cluster, else the dedicated system account ``prefect-integrations`` (created with
``useradd`` when missing; ``postgres`` or ``nobody`` when that fails). When that user
cannot reach the home folder (``/root`` is 0700), the cluster files live under
``/var/lib/prefect-integrations/clusters/`` (a folder that names its home) and the home
holds a symlink to them; `prefect_integrations.embedded_files` finds and removes them.

Every role logs in with its own password (SCRAM-SHA-256): ``pg_hba.conf`` has no
``trust`` or ``peer`` line, so a connection as one role (or from the OS user the server
runs as) cannot enter as another without that role's password. The passwords are
generated on first start and kept in libpq password files, one per role, in
``<home>/passwords/<role>.pgpass`` (folder 0700, files 0600, owned by the caller, so the
OS user the server runs as cannot read them). URLs and connection strings name the file
(``passfile=``), never the password. A cluster created with ``trust`` by an older version
is converted in place on its next start, data kept.

The module is over 450 lines because initialising, securing, starting and stopping the
cluster are one state machine over one lock and one set of paths; what the machine
provides (binaries, the OS account) is in `prefect_integrations.embedded_host`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import psycopg
from psycopg.conninfo import make_conninfo

from prefect_integrations.embedded_host import (
    DEDICATED_USER,
    PostgresBinaries,
    ServiceUser,
    can_traverse,
    find_binaries,
    record_home,
    service_user,
    shared_cluster_dir,
    user_entry,
)
from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.models import ADMIN_ROLE, RUNTIME_ROLE
from prefect_integrations.store import bootstrap

__all__ = [
    "CLUSTER_MARKER",
    "CONF_MARKER",
    "DATABASE_NAME",
    "DEDICATED_USER",
    "ROLES",
    "SUPERUSER",
    "ClusterStatus",
    "EmbeddedCluster",
    "PostgresBinaries",
    "ShutdownMode",
    "find_binaries",
]

SUPERUSER = "prefect_integrations"
#: The file `EmbeddedCluster.initialize` writes in the cluster's folder: `db destroy`
#: removes only a folder that carries it (or, made before it existed, `CONF_MARKER`).
CLUSTER_MARKER = ".prefect-integrations-cluster"
#: The comment line `EmbeddedCluster.initialize` appends to ``postgresql.conf`` (every
#: version has), before the settings that keep the cluster private.
CONF_MARKER = "# prefect-integrations embedded cluster"
DATABASE_NAME = "prefect_integrations"
PORT = 5432
_logger = logging.getLogger(__name__)
#: The roles of the embedded cluster that have a generated password (and a password file).
ROLES = (SUPERUSER, ADMIN_ROLE, RUNTIME_ROLE)

#: How `EmbeddedCluster.stop` shuts the server down (``pg_ctl -m``).
ShutdownMode = Literal["smart", "fast", "immediate"]

# Settings that keep secrets out of the server log: bind parameters (keys, plaintext)
# are never written, even with log_statement=all or on error.
_SERVER_SETTINGS = {
    "listen_addresses": "''",
    "port": str(PORT),
    "unix_socket_permissions": "0700",
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "max_connections": "100",
    "password_encryption": "'scram-sha-256'",
}
#: The whole ``pg_hba.conf``: a password for every role, on the unix socket only.
_HBA = (
    "# prefect-integrations embedded cluster: every role logs in with its own password\n"
    "# (SCRAM-SHA-256), on the unix socket only. Rewritten on start if it differs.\n"
    "local all all scram-sha-256\n"
    "host all all all reject\n"
)
_RELOAD_TIMEOUT = 30.0
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What `EmbeddedCluster.status` reports."""

    initialized: bool
    running: bool
    data_dir: Path
    socket_dir: Path
    log_file: Path
    run_as: str | None
    password_dir: Path


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
        self._user = self._choose_user(pg_user) if os.geteuid() == 0 else None
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
    def password_dir(self) -> Path:
        """The folder of the roles' password files (0700, owned by the caller)."""
        return self.home / "passwords"

    def passfile(self, role: str = SUPERUSER) -> Path:
        """The libpq password file of ``role`` (0600): ``*:*:*:<role>:<password>``."""
        return self.password_dir / f"{role}.pgpass"

    @property
    def binaries(self) -> PostgresBinaries:
        """The PostgreSQL binaries used (found on first use)."""
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    def _choose_user(self, pg_user: str | None) -> ServiceUser:
        """The OS user the server runs as under root.

        ``pg_user`` when given; else the owner of an existing cluster (one made by an
        older version runs on as ``postgres``); else `DEDICATED_USER`.
        """
        if pg_user is None:
            data = (self.home / "postgres").resolve() / "data"
            try:
                owner = data.stat().st_uid if (data / "PG_VERSION").is_file() else 0
            except OSError:
                owner = 0
            if owner != 0:
                try:
                    return user_entry(pwd.getpwuid(owner))
                except KeyError:
                    pass
        return service_user(pg_user)

    def _base_dir(self) -> Path:
        link = self.home / "postgres"
        if link.is_symlink():
            return link.resolve()
        if self._user is None:
            return link
        if self.home.is_dir() and can_traverse(link, self._user):
            return link
        return shared_cluster_dir(self.home)

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
    def lock(self) -> Iterator[None]:
        """Hold the cluster's lock (``<home>/.postgres.lock``): one start, stop or removal."""
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
        """Create the cluster (initdb) with settings that keep it private.

        The superuser gets its generated password from the start (``--pwfile``, a
        short-lived file in the cluster's own 0700 folder).
        """
        self._prepare_dirs()
        # what `db destroy` requires before it deletes this folder (see embedded_files)
        marker = self.base_dir / CLUSTER_MARKER
        if not marker.is_symlink():
            marker.write_text(f"prefect-integrations embedded cluster of {self.home}\n")
        record_home(self.base_dir, self.home)
        password, _ = self._password(SUPERUSER)
        pwfile = self.base_dir / ".initdb-password"
        pwfile.unlink(missing_ok=True)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.uid, self._user.gid)
        try:
            self._run(
                [
                    self.binaries.tool("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=scram-sha-256",
                    "--auth-host=reject",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise ConfigurationError(
                f"initdb failed for {self.data_dir}: {exc.stderr.strip()[-500:]}"
            ) from None
        finally:
            pwfile.unlink(missing_ok=True)
        settings = dict(_SERVER_SETTINGS)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        if not self.durable:
            settings.update(_FAST_SETTINGS)
        conf = self.data_dir / "postgresql.conf"
        lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
        with conf.open("a") as handle:
            handle.write(f"\n{CONF_MARKER}\n" + lines)
        self._write_hba()

    # -- authentication -------------------------------------------------------------------

    def _password(self, role: str) -> tuple[str, bool]:
        """The password of ``role`` from its file, made on first use; True when new."""
        path = self.passfile(role)
        self.password_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.password_dir.chmod(0o700)
        try:
            fields = path.read_text().strip().split(":")
        except FileNotFoundError:
            fields = []
        if len(fields) == 5 and fields[3] == role and fields[4]:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # libpq ignores a password file others may read
            return fields[4], False
        password = secrets.token_urlsafe(32)  # no ':' or '\\': nothing to escape
        staging = path.with_name(path.name + ".new")
        staging.unlink(missing_ok=True)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"*:*:*:{role}:{password}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
        return password, True

    def _hba_is_current(self) -> bool:
        try:
            return (self.data_dir / "pg_hba.conf").read_text() == _HBA
        except FileNotFoundError:
            return False

    def _write_hba(self) -> None:
        path = self.data_dir / "pg_hba.conf"
        staging = self.data_dir / "pg_hba.conf.new"
        staging.unlink(missing_ok=True)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_HBA)
        if self._user is not None:
            os.chown(staging, self._user.uid, self._user.gid)
        os.replace(staging, path)

    def _secure(self, *, legacy: bool) -> None:
        """Give every role of `ROLES` its password; then require them (``legacy``).

        ``legacy``: the cluster still trusts every local connection (made by an older
        version). The passwords are set over that trust first, then ``pg_hba.conf`` is
        rewritten and the server reloads it; the data stays as it is.
        """
        if not legacy and not self.passfile(SUPERUSER).is_file():
            raise ConfigurationError(
                f"The password file of the embedded cluster's superuser, "
                f"{self.passfile(SUPERUSER)}, is missing: restore it from a backup "
                f"(or remove {self.base_dir} to start over with an empty cluster)"
            )
        passwords: dict[str, str] = {}
        reset: set[str] = set()
        for role in ROLES:
            passwords[role], created = self._password(role)
            if created or legacy:
                reset.add(role)
        conninfo = self.dsn(database="postgres")
        bootstrap.ensure_login_roles(conninfo, passwords, reset=reset)
        if not legacy:
            return
        loaded = bootstrap.config_loaded_at(conninfo)
        self._write_hba()
        self._run([self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "reload"])
        deadline = time.monotonic() + _RELOAD_TIMEOUT
        while bootstrap.config_loaded_at(conninfo) == loaded:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"The embedded PostgreSQL in {self.data_dir} did not reload pg_hba.conf"
                )
            time.sleep(0.05)

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
        with self.lock():
            if not self.is_running():
                return False
            self._run(
                [self.binaries.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )
            return True

    def restart(self, *, mode: ShutdownMode = "fast") -> None:
        """Stop the server (see `stop` for ``mode``) and start it again; waits until ready."""
        self.stop(mode=mode)
        with self.lock():
            self.start()

    def ensure_running(self, *, database: str = DATABASE_NAME) -> str:
        """Initialise and start the cluster as needed, create ``database``; return its URL.

        Also creates the admin and runtime roles (`ROLES`) when missing, each with its
        generated password, and converts a cluster that trusts local connections.
        """
        with self.lock():
            if not self.is_initialized():
                self.initialize()
            record_home(self.base_dir, self.home)
            legacy = not self._hba_is_current()
            if not self.is_running():
                self.start()
            try:
                self._secure(legacy=legacy)
                bootstrap.ensure_database(self.dsn(database="postgres"), database)
            except psycopg.OperationalError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
                raise ConfigurationError(
                    f"Cannot use the embedded PostgreSQL as {SUPERUSER!r} (password file "
                    f"{self.passfile(SUPERUSER)}): {reason}"
                ) from None
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
            password_dir=self.password_dir,
        )

    def dsn(self, *, database: str = DATABASE_NAME, user: str = SUPERUSER) -> str:
        """A libpq connection string for ``database`` as ``user``.

        For a role of `ROLES` it names the role's password file (``passfile``), never
        the password.
        """
        params: dict[str, str | int] = {
            "host": str(self.socket_dir),
            "port": PORT,
            "dbname": database,
            "user": user,
        }
        if user in ROLES:
            params["passfile"] = str(self.passfile(user))
        return make_conninfo("", **params)

    def url(self, *, database: str = DATABASE_NAME, user: str = SUPERUSER) -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database`` as ``user``.

        For a role of `ROLES` it names the role's password file (``passfile``), never
        the password.
        """
        url = f"postgresql+psycopg://{user}@/{database}?host={self.socket_dir}&port={PORT}"
        if user in ROLES:
            url += f"&passfile={quote(str(self.passfile(user)), safe='/')}"
        return url
