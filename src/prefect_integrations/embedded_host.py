"""What the machine provides to the embedded cluster: PostgreSQL's binaries and an OS user.

`find_binaries` looks for the newest PostgreSQL server on the machine (``pg_config``, the
Debian and Homebrew layouts, ``PATH``). PostgreSQL refuses to run as root, so a cluster
started by root runs as an unprivileged account: `DEDICATED_USER`, created as a system
account when missing. When that account cannot reach the home folder, the cluster's files
live in `SHARED_CLUSTERS`, one folder per home, each naming its home in `HOME_RECORD`.
"""

from __future__ import annotations

import glob
import grp
import hashlib
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect_integrations.exceptions import ConfigurationError, PostgresNotFound

__all__ = [
    "DEDICATED_USER",
    "HOME_RECORD",
    "SHARED_CLUSTERS",
    "PostgresBinaries",
    "ServiceUser",
    "can_traverse",
    "find_binaries",
    "record_home",
    "service_user",
    "shared_cluster_dir",
    "user_entry",
]

_logger = logging.getLogger(__name__)
#: The OS account the server runs as when started by root (created when missing).
DEDICATED_USER = "prefect-integrations"
#: Where root's clusters live when their OS user cannot reach the home: one folder per home.
SHARED_CLUSTERS = Path("/var/lib/prefect-integrations/clusters")
#: The file in a folder of `SHARED_CLUSTERS` that names the home the cluster belongs to.
HOME_RECORD = "home"
_INSTALL_HINT = (
    "Install the PostgreSQL server and its contrib modules "
    "(Debian/Ubuntu: `apt-get install postgresql postgresql-contrib`; "
    "macOS: `brew install postgresql`), or set PREFECT_INTEGRATIONS_DATABASE_URL "
    "to an existing PostgreSQL database"
)


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
class ServiceUser:
    """An OS account the server can run as: its name, ids and groups."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def user_entry(entry: pwd.struct_passwd) -> ServiceUser:
    """The `ServiceUser` of a password-database entry, with its supplementary groups."""
    groups = {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
    groups.add(entry.pw_gid)
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset(groups))


def service_user(name: str | None) -> ServiceUser:
    """The named user, or else the dedicated account (created when missing).

    When the dedicated account cannot be had, a shared unprivileged one: ``postgres``,
    else ``nobody``.
    """
    if name is None:
        dedicated = _dedicated_user()
        if dedicated is not None:
            return dedicated
    candidates = [name] if name else ["postgres", "nobody"]
    for candidate in candidates:
        try:
            return user_entry(pwd.getpwnam(candidate))
        except KeyError:
            continue
    raise ConfigurationError(
        f"The embedded PostgreSQL cannot run as root and the user "
        f"{' or '.join(repr(c) for c in candidates)} does not exist; create an unprivileged "
        "user and set PREFECT_INTEGRATIONS_PG_USER to it"
    )


def _dedicated_user() -> ServiceUser | None:
    """`DEDICATED_USER`, created as a system account without login when missing.

    None when it cannot be created (no ``useradd``, a read-only ``/etc/passwd``).
    """
    try:
        return user_entry(pwd.getpwnam(DEDICATED_USER))
    except KeyError:
        pass
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is not None:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                *("--home-dir", "/nonexistent", "--shell", shell),
                *("--comment", "prefect-integrations embedded PostgreSQL"),
                DEDICATED_USER,
            ],
            capture_output=True,
            check=False,
        )
    try:  # created now, or by a concurrent start
        return user_entry(pwd.getpwnam(DEDICATED_USER))
    except KeyError:
        _logger.warning(
            "Could not create the OS user %r for the embedded PostgreSQL; running it as a "
            "shared unprivileged user (set PREFECT_INTEGRATIONS_PG_USER to a dedicated one)",
            DEDICATED_USER,
        )
        return None


def can_traverse(path: Path, user: ServiceUser) -> bool:
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


def shared_cluster_dir(home: Path) -> Path:
    """The folder of ``home``'s cluster in `SHARED_CLUSTERS` (named by a digest of the path)."""
    return SHARED_CLUSTERS / hashlib.sha256(str(home).encode()).hexdigest()[:16]


def record_home(base_dir: Path, home: Path) -> None:
    """Name ``home`` in `HOME_RECORD` of a cluster folder in `SHARED_CLUSTERS`.

    So an operator (and ``db destroy --orphans``) can tell whose cluster a folder holds,
    and whether that home still exists. Nothing is written for a cluster inside its home.
    """
    if base_dir.parent != SHARED_CLUSTERS or not base_dir.is_dir() or base_dir.is_symlink():
        return
    record = base_dir / HOME_RECORD
    text = f"{home}\n"
    try:
        if not record.is_symlink() and record.read_text() == text:
            return
    except OSError:
        pass
    staging = base_dir / f".{HOME_RECORD}.new"
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staging, record)
