"""The embedded cluster's files: where they are, removing them for good, and orphans.

A cluster's files are its folder (data, socket, log: ``<home>/postgres``, or under root
a folder of `SHARED_CLUSTERS` that ``<home>/postgres`` links to), its lock file and the
password files in ``<home>/passwords``. `cluster_files` lists them with their size;
`destroy` stops the server and removes exactly those, never following a link out of
them: a ``postgres`` link is followed only into a folder of `SHARED_CLUSTERS` whose
`HOME_RECORD` names this home. A cluster folder is removed (and its server stopped) only
when it positively is the package's: it carries `CLUSTER_MARKER` (written by
`EmbeddedCluster.initialize`), or, made by an earlier version, its ``postgresql.conf``
holds `CONF_MARKER`, or it is a folder of `SHARED_CLUSTERS` recording this home. Any
other folder (``<home>/postgres`` of a home that is not the package's, e.g. a system
server's data under ``/var/lib``) is listed as kept and nothing is stopped. The keyring
and the home itself stay; the home ``/`` is refused.

`find_orphans` lists the folders of `SHARED_CLUSTERS` whose home no longer uses them
(its home was deleted), as named by their `HOME_RECORD`. A home under a mount point of
``/etc/fstab`` that is not mounted now is not taken for deleted (its folder is kept); a
home on a file system mounted otherwise (autofs, a manual mount) cannot be told apart
from a deleted one: mount it before ``db destroy --orphans``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from prefect_integrations.embedded import CLUSTER_MARKER, CONF_MARKER, ROLES, EmbeddedCluster
from prefect_integrations.embedded_host import HOME_RECORD, SHARED_CLUSTERS, shared_cluster_dir
from prefect_integrations.exceptions import ConfigurationError, PostgresNotFound

__all__ = [
    "ClusterFiles",
    "Orphan",
    "cluster_files",
    "destroy",
    "find_orphans",
    "owns_server",
    "remove_orphans",
    "server_running",
]

_CLUSTER_NAME = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class ClusterFiles:
    """What `destroy` removes for one home, and how many bytes that is."""

    folders: tuple[Path, ...]
    """The cluster's folders (data, socket, log), in the home or in `SHARED_CLUSTERS`."""
    files: tuple[Path, ...]
    """The ``<home>/postgres`` link to a shared folder, the lock file, the password files."""
    size: int
    kept: tuple[Path, ...] = ()
    """Folders where a cluster could be that are not the package's: never touched."""

    @property
    def paths(self) -> tuple[Path, ...]:
        """Everything that is removed, the cluster's folders first."""
        return (*self.folders, *self.files)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A folder of `SHARED_CLUSTERS` whose home no longer uses it."""

    folder: Path
    home: Path
    size: int
    running: bool
    unmounted: bool = False
    """Its home is under a mount point of ``/etc/fstab`` not mounted now: kept."""


def _exists(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _size(path: Path) -> int:
    """Bytes under ``path``, links not followed."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if _exists(path) else 0
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _recorded_home(folder: Path) -> Path | None:
    record = folder / HOME_RECORD
    try:
        if record.is_symlink() or not record.is_file():
            return None
        text = record.read_text().strip()
    except OSError:
        return None
    return Path(text) if text.startswith("/") and "\n" not in text else None


def _is_ours(folder: Path) -> bool:
    """True when ``folder`` positively is a cluster folder made by this package."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    marker = folder / CLUSTER_MARKER
    if marker.is_file() and not marker.is_symlink():
        return True
    conf = folder / "data" / "postgresql.conf"  # made by an earlier version: our settings
    try:
        if conf.is_symlink() or not conf.is_file():
            return False
        with conf.open("rb") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return False
    return f"\n{CONF_MARKER}\n".encode() in text


def _shared_folder(target: Path, home: Path, link: Path) -> Path:
    """``target`` when it is a cluster folder of ``home`` in `SHARED_CLUSTERS`; else refuse.

    Its `HOME_RECORD` must be there and name ``home``: a missing or unreadable record
    never lets a link lead into another home's cluster.
    """
    shared = SHARED_CLUSTERS.resolve()
    if target.parent != shared or not _CLUSTER_NAME.fullmatch(target.name):
        raise ConfigurationError(
            f"{link} links to {target}, which is not a cluster folder in {SHARED_CLUSTERS}: "
            "nothing was deleted (remove the link and what it points to yourself)"
        )
    recorded = _recorded_home(target)
    if recorded is None and target.is_dir():
        raise ConfigurationError(
            f"{link} leads to {target}, which does not record its home ({HOME_RECORD}): "
            "nothing was deleted (`db start` records it when the cluster is this home's; "
            "then run `db destroy` again)"
        )
    if recorded is not None and recorded != home:
        raise ConfigurationError(
            f"{link} links to {target}, the cluster of another home ({recorded}): "
            "nothing was deleted"
        )
    return target


def cluster_files(cluster: EmbeddedCluster) -> ClusterFiles:
    """The files of ``cluster`` that exist now: its folders, link, lock and password files.

    The folders are ``<home>/postgres`` (or the folder of `SHARED_CLUSTERS` it links to)
    and this home's folder in `SHARED_CLUSTERS` when it is there too (left by a start when
    the home was private), each only when it is the package's (`_is_ours`); others are
    listed in ``kept``. Refuses (`ConfigurationError`) the home ``/``, and a
    ``<home>/postgres`` that links anywhere else.
    """
    home = cluster.home
    if home.resolve() == Path("/"):
        raise ConfigurationError(
            "PREFECT_INTEGRATIONS_HOME is /: `db destroy` will not look for a cluster there"
        )
    link = home / "postgres"
    candidates: list[Path] = []
    if link.is_symlink():
        target = _shared_folder(link.resolve(), home, link)
        if target.is_dir():
            candidates.append(target)
    elif link.is_dir():
        candidates.append(link)
    shared = shared_cluster_dir(home)
    if shared.is_dir() and not shared.is_symlink() and shared.resolve() not in candidates:
        candidates.append(_shared_folder(shared.resolve(), home, shared))
    folders: list[Path] = []
    kept: list[Path] = []
    for folder in candidates:
        recorded = folder.parent == SHARED_CLUSTERS.resolve() and _recorded_home(folder) == home
        (folders if recorded or _is_ours(folder) else kept).append(folder)
    # a link into SHARED_CLUSTERS (checked above) goes with its folder, or when dangling
    gone = link.is_symlink() and not link.resolve().exists()
    files: list[Path] = [link] if gone or (link.is_symlink() and link.resolve() in folders) else []
    lock = home / ".postgres.lock"
    if _exists(lock):
        files.append(lock)
    if cluster.password_dir.is_dir() and not cluster.password_dir.is_symlink():
        for role in ROLES:
            passfile = cluster.passfile(role)
            for path in (passfile, passfile.with_name(passfile.name + ".new")):
                if _exists(path):
                    files.append(path)
    size = sum(_size(p) for p in (*folders, *files))
    return ClusterFiles(folders=tuple(folders), files=tuple(files), size=size, kept=tuple(kept))


def owns_server(cluster: EmbeddedCluster, listed: ClusterFiles) -> bool:
    """True when the folder of ``cluster``'s server is among those ``listed`` to remove."""
    return cluster.base_dir in listed.folders or cluster.base_dir.resolve() in listed.folders


def server_running(cluster: EmbeddedCluster) -> bool:
    """True when the server of ``cluster`` runs (without binaries: when it may run, refuse)."""
    try:
        return cluster.is_running()
    except PostgresNotFound:
        if (cluster.data_dir / "postmaster.pid").exists():
            raise ConfigurationError(
                f"The embedded PostgreSQL in {cluster.data_dir} may be running and no "
                "PostgreSQL binaries are found to stop it: nothing was deleted"
            ) from None
        return False


def _remove_tree(folder: Path) -> None:
    if folder.is_symlink():  # replaced since it was listed: remove the link only
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)  # never follows links inside (rmtree.avoids_symlink_attacks)


def destroy(cluster: EmbeddedCluster) -> ClusterFiles:
    """Stop ``cluster`` if it runs and remove its files (see `cluster_files`); return them.

    Finding nothing is not an error: the result then lists no paths.
    """
    listed = cluster_files(cluster)  # refuses a foreign link before any stop
    if not listed.paths:
        return listed
    shared = SHARED_CLUSTERS.resolve()
    if os.geteuid() != 0 and any(folder.parent == shared for folder in listed.folders):
        raise ConfigurationError(
            f"The embedded cluster of {cluster.home} is in {SHARED_CLUSTERS}, where root "
            "started it: run `db destroy` as root. Nothing was deleted"
        )
    ours = owns_server(cluster, listed)  # a folder not ours is never stopped
    if ours and server_running(cluster):
        cluster.stop()
    lock = cluster.home / ".postgres.lock"
    made_lock = lock not in listed.files  # made by the lock below: not reported
    with cluster.lock():
        if ours and server_running(cluster):  # started again meanwhile
            raise ConfigurationError(
                f"The embedded PostgreSQL in {cluster.data_dir} is running again: "
                "nothing was deleted"
            )
        found = cluster_files(cluster)
        if owns_server(cluster, found) != ours:  # a server never checked or stopped
            raise ConfigurationError(
                f"The embedded cluster of {cluster.home} changed meanwhile: nothing was deleted"
            )
        for path in found.paths:
            try:
                if path in found.folders:
                    _remove_tree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"Cannot delete {path}: {exc.strerror or exc}; what is listed after it "
                    "was not deleted"
                ) from None
    password_dir = cluster.password_dir
    if password_dir.is_dir() and not password_dir.is_symlink() and not any(password_dir.iterdir()):
        password_dir.rmdir()
    if made_lock:
        found = replace(found, files=tuple(p for p in found.files if p != lock))
    return found


def _in_use(folder: Path, home: Path) -> bool:
    link = home / "postgres"
    if link.is_symlink():
        return link.resolve() == folder.resolve()
    return home.is_dir() and not link.exists() and shared_cluster_dir(home) == folder


def _fstab_mount_points(fstab: Path = Path("/etc/fstab")) -> list[Path]:
    points: list[Path] = []
    try:
        lines = fstab.read_text(errors="replace").splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1].startswith("/"):
            points.append(Path(fields[1].replace("\\040", " ")))
    return points


def _may_be_unmounted(home: Path) -> bool:
    """True when ``home`` is under a mount point of ``/etc/fstab`` that is not mounted now."""
    return any(
        point != Path("/") and home.is_relative_to(point) and not os.path.ismount(point)
        for point in _fstab_mount_points()
    )


def find_orphans() -> tuple[list[Orphan], list[Path]]:
    """Orphaned folders of `SHARED_CLUSTERS`, and those whose home is not recorded.

    An orphan names a home (`HOME_RECORD`) that no longer uses it: the home was deleted,
    or its ``postgres`` link points elsewhere. Folders made before homes were recorded
    are listed apart, never removed. Reading them needs root (they belong to the
    cluster's OS user).
    """
    if os.geteuid() != 0:
        raise ConfigurationError(
            f"Only clusters started by root live in {SHARED_CLUSTERS}: "
            "run `db destroy --orphans` as root"
        )
    orphans: list[Orphan] = []
    unknown: list[Path] = []
    if not SHARED_CLUSTERS.is_dir():
        return orphans, unknown
    for folder in sorted(SHARED_CLUSTERS.iterdir()):
        if folder.is_symlink() or not folder.is_dir() or not _CLUSTER_NAME.fullmatch(folder.name):
            continue
        home = _recorded_home(folder)
        if home is None:
            unknown.append(folder)
        elif not _in_use(folder, home):
            running = (folder / "data" / "postmaster.pid").exists()
            unmounted = not home.exists() and _may_be_unmounted(home)
            orphans.append(Orphan(folder, home, _size(folder), running, unmounted))
    return orphans, unknown


def remove_orphans(orphans: Iterable[Orphan]) -> list[Orphan]:
    """Remove the folders of ``orphans`` that do not run (checked again); return those."""
    removed: list[Orphan] = []
    for orphan in orphans:
        if orphan.running or (orphan.folder / "data" / "postmaster.pid").exists():
            continue
        if orphan.unmounted or _may_be_unmounted(orphan.home):
            continue
        if _recorded_home(orphan.folder) != orphan.home or _in_use(orphan.folder, orphan.home):
            continue
        _remove_tree(orphan.folder)
        removed.append(orphan)
    return removed
