"""The embedded cluster's files: where they are, removing them for good, and orphans.

A cluster's files are its folder (data, socket, log: ``<home>/postgres``, or under root
a folder of `SHARED_CLUSTERS` that ``<home>/postgres`` links to), its lock file and the
password files in ``<home>/passwords``. `cluster_files` lists them with their size;
`destroy` stops the server and removes exactly those, never following a link out of
them: a ``postgres`` link is followed only into a folder of `SHARED_CLUSTERS` that names
no other home. The keyring and the home itself stay.

`find_orphans` lists the folders of `SHARED_CLUSTERS` whose home no longer uses them
(its home was deleted), as named by their `HOME_RECORD`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prefect_integrations.embedded import ROLES, EmbeddedCluster
from prefect_integrations.embedded_host import HOME_RECORD, SHARED_CLUSTERS, shared_cluster_dir
from prefect_integrations.exceptions import ConfigurationError, PostgresNotFound

__all__ = [
    "ClusterFiles",
    "Orphan",
    "cluster_files",
    "destroy",
    "find_orphans",
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


def _shared_folder(target: Path, home: Path, link: Path) -> Path:
    """``target`` when it is a cluster folder of ``home`` in `SHARED_CLUSTERS`; else refuse."""
    shared = SHARED_CLUSTERS.resolve()
    if target.parent != shared or not _CLUSTER_NAME.fullmatch(target.name):
        raise ConfigurationError(
            f"{link} links to {target}, which is not a cluster folder in {SHARED_CLUSTERS}: "
            "nothing was deleted (remove the link and what it points to yourself)"
        )
    recorded = _recorded_home(target)
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
    the home was private). Refuses (`ConfigurationError`) when ``<home>/postgres`` links
    anywhere else.
    """
    home = cluster.home
    link = home / "postgres"
    folders: list[Path] = []
    if link.is_symlink():
        target = _shared_folder(link.resolve(), home, link)
        if target.is_dir():
            folders.append(target)
    elif link.is_dir():
        folders.append(link)
    shared = shared_cluster_dir(home)
    if shared.is_dir() and not shared.is_symlink() and shared.resolve() not in folders:
        folders.append(_shared_folder(shared.resolve(), home, shared))
    files: list[Path] = [link] if link.is_symlink() else []
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
    return ClusterFiles(folders=tuple(folders), files=tuple(files), size=size)


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
    if server_running(cluster):
        cluster.stop()
    with cluster.lock():
        if server_running(cluster):  # started again meanwhile
            raise ConfigurationError(
                f"The embedded PostgreSQL in {cluster.data_dir} is running again: "
                "nothing was deleted"
            )
        found = cluster_files(cluster)
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
    return found


def _in_use(folder: Path, home: Path) -> bool:
    link = home / "postgres"
    if link.is_symlink():
        return link.resolve() == folder.resolve()
    return home.is_dir() and not link.exists() and shared_cluster_dir(home) == folder


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
            orphans.append(Orphan(folder, home, _size(folder), running))
    return orphans, unknown


def remove_orphans(orphans: Iterable[Orphan]) -> list[Orphan]:
    """Remove the folders of ``orphans`` that do not run (checked again); return those."""
    removed: list[Orphan] = []
    for orphan in orphans:
        if orphan.running or (orphan.folder / "data" / "postmaster.pid").exists():
            continue
        if _recorded_home(orphan.folder) != orphan.home or _in_use(orphan.folder, orphan.home):
            continue
        _remove_tree(orphan.folder)
        removed.append(orphan)
    return removed
