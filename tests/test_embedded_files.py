"""`db destroy`: the embedded cluster's files are removed wherever they live, nothing else."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_integrations import embedded_files, embedded_host
from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.embedded import CLUSTER_MARKER, CONF_MARKER, ROLES, EmbeddedCluster
from prefect_integrations.embedded_host import HOME_RECORD, SHARED_CLUSTERS, shared_cluster_dir
from prefect_integrations.exceptions import ConfigurationError

from .conftest import remove_cluster

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the shared folder is used under root")


def _listing() -> set[str]:
    return set(os.listdir(SHARED_CLUSTERS)) if SHARED_CLUSTERS.is_dir() else set()


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it has ended)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_HOME", str(home))
    monkeypatch.delenv("PREFECT_INTEGRATIONS_DATABASE_URL", raising=False)
    reset_runtime()


@pytest.fixture
def private_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home only its owner may enter: under root the cluster goes to the shared
    folder. The home is the CLI's; whatever cluster it gets is removed at the end.
    """
    home = Path(tempfile.mkdtemp(prefix="pi-destroy-"))  # 0700
    _use_home(monkeypatch, home)
    try:
        yield home
    finally:
        reset_runtime()
        remove_cluster(EmbeddedCluster(home))


def test_destroy_stops_the_server_and_leaves_nothing_behind(
    private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _listing()
    assert run(["db", "start"]) == 0
    cluster = EmbeddedCluster(private_home)
    if os.geteuid() == 0:
        assert cluster.base_dir == shared_cluster_dir(private_home)
        assert cluster.base_dir.name in _listing() - before
        assert (cluster.base_dir / HOME_RECORD).read_text() == f"{private_home}\n"
    assert run(["db", "status"]) == 0
    assert f"data dir:    {cluster.data_dir}" in capsys.readouterr().out
    pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    (private_home / "keyring").write_text("k1:kept\n")
    (private_home / "passwords" / "notes.txt").write_text("not the package's\n")

    assert run(["db", "destroy", "--yes"]) == 0
    out = capsys.readouterr().out
    assert str(cluster.base_dir) in out and "MB in all, after stopping the server" in out
    assert not _alive(pid)
    for path in (cluster.base_dir, private_home / "postgres", private_home / ".postgres.lock"):
        assert not path.exists() and not path.is_symlink(), path
    assert not [role for role in ROLES if cluster.passfile(role).exists()]
    assert sorted(os.listdir(private_home)) == ["keyring", "passwords"]
    assert os.listdir(private_home / "passwords") == ["notes.txt"]
    assert SHARED_CLUSTERS.is_dir() or os.geteuid() != 0  # the folder itself stays
    assert cluster.base_dir.name not in _listing()
    ours = [name for name in _listing() - before if _record(SHARED_CLUSTERS / name) == private_home]
    assert ours == []

    reset_runtime()
    assert run(["db", "destroy"]) == 0  # idempotent
    assert "nothing to delete" in capsys.readouterr().out


def _record(folder: Path) -> Path | None:
    try:
        return Path((folder / HOME_RECORD).read_text().strip())
    except OSError:
        return None


class _Terminal(io.StringIO):
    """Standard input that is a terminal, with the answers typed in advance."""

    def isatty(self) -> bool:
        return True


def test_destroy_asks_first_and_refuses_without_a_terminal(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = EmbeddedCluster(private_home, durable=False)
    cluster.ensure_running()
    files = embedded_files.cluster_files(cluster)
    capsys.readouterr()
    assert run(["db", "destroy"]) == 1
    out, err = capsys.readouterr()
    assert "pass --yes. Nothing was deleted" in err
    assert all(str(path) in out for path in files.paths)  # said what it would delete
    assert cluster.is_running()
    assert embedded_files.cluster_files(cluster).paths == files.paths

    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert run(["db", "destroy"]) == 1
    assert "Delete these files?" in capsys.readouterr().out
    assert cluster.is_running()
    assert embedded_files.cluster_files(cluster).paths == files.paths
    monkeypatch.setattr("sys.stdin", _Terminal("y\n"))
    assert run(["db", "destroy"]) == 0
    assert "cluster deleted" in capsys.readouterr().out
    assert not cluster.data_dir.exists()


def test_destroy_refuses_an_external_database(
    cli_env: dict[str, str], cluster: EmbeddedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    home = Path(cli_env["PREFECT_INTEGRATIONS_HOME"])
    (home / "postgres").mkdir(parents=True)
    (home / "postgres" / "PG_VERSION").write_text("16\n")
    assert run(["db", "destroy", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "PREFECT_INTEGRATIONS_DATABASE_URL" in err and err.startswith("error[")
    assert (home / "postgres" / "PG_VERSION").is_file()
    assert cluster.is_running()


def test_destroy_with_nothing_there_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "never-used"
    _use_home(monkeypatch, home)
    assert run(["db", "destroy"]) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert not home.exists()


def test_destroy_never_follows_a_link_out_of_the_cluster_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me\n")
    (home / "postgres").symlink_to(victim)
    _use_home(monkeypatch, home)
    assert run(["db", "destroy", "--yes"]) == 1
    assert "not a cluster folder" in capsys.readouterr().err
    assert (victim / "data.txt").read_text() == "keep me\n"
    assert (home / "postgres").is_symlink()
    # A password folder that is a link is not entered either.
    (home / "postgres").unlink()
    (home / "passwords").symlink_to(victim)
    (victim / "prefect_integrations.pgpass").write_text("someone else's\n")
    assert embedded_files.cluster_files(EmbeddedCluster(home)).paths == ()
    assert run(["db", "destroy", "--yes"]) == 0
    assert (victim / "prefect_integrations.pgpass").is_file()


@as_root
def test_destroy_leaves_another_homes_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "clusters"
    monkeypatch.setattr(embedded_host, "SHARED_CLUSTERS", shared)
    monkeypatch.setattr(embedded_files, "SHARED_CLUSTERS", shared)
    other = embedded_host.shared_cluster_dir(tmp_path / "other-home")
    (other / "data").mkdir(parents=True)
    (other / HOME_RECORD).write_text(f"{tmp_path / 'other-home'}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "postgres").symlink_to(other)
    _use_home(monkeypatch, home)
    assert run(["db", "destroy", "--yes"]) == 1
    assert "the cluster of another home" in capsys.readouterr().err
    assert (other / "data").is_dir()


@as_root
def test_destroy_orphans_removes_clusters_whose_home_is_gone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared_root = Path(tempfile.mkdtemp(prefix="pi-shared-"))
    shared_root.chmod(0o755)  # the cluster's OS user enters the shared folder
    shared = shared_root / "clusters"
    shared.mkdir()
    monkeypatch.setattr(embedded_host, "SHARED_CLUSTERS", shared)
    monkeypatch.setattr(embedded_files, "SHARED_CLUSTERS", shared)
    (shared / "0123456789abcdef").mkdir()  # made before homes were recorded: kept
    kept_home = Path(tempfile.mkdtemp(prefix="pi-kept-"))
    gone_home = Path(tempfile.mkdtemp(prefix="pi-gone-"))
    kept = EmbeddedCluster(kept_home, durable=False)
    gone = EmbeddedCluster(gone_home, durable=False)
    try:
        for cluster in (kept, gone):
            cluster.ensure_running()
            assert cluster.base_dir.parent == shared
        kept.stop()
        remove_home = ["rm", "-rf", str(gone_home)]
        subprocess.run(remove_home, check=True)  # the user deletes the home, server running
        _use_home(monkeypatch, kept_home)

        assert run(["db", "destroy", "--orphans"]) == 0
        out = capsys.readouterr().out
        assert f"{gone.base_dir} (home {gone_home})" in out and "running, kept" in out
        assert "0123456789abcdef: made before homes were recorded; kept" in out
        assert str(kept.base_dir) not in out

        gone.stop()  # as an operator would, after reading the hint
        subprocess.run(remove_home, check=True)
        assert run(["db", "destroy", "--orphans"]) == 1  # not interactive, no --yes
        assert "pass --yes" in capsys.readouterr().err and gone.base_dir.is_dir()
        assert run(["db", "destroy", "--orphans", "--yes"]) == 0
        assert "Deleted 1 orphaned cluster(s)" in capsys.readouterr().out
        assert sorted(os.listdir(shared)) == sorted(["0123456789abcdef", kept.base_dir.name])
    finally:
        reset_runtime()
        remove_cluster(kept)
        remove_cluster(gone)
        shutil.rmtree(shared_root)


def test_destroy_keeps_a_postgres_folder_that_is_not_a_cluster_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A home's ``postgres`` folder without the package's marks is neither stopped nor deleted
    (a home of /var/lib would otherwise take the system server's data)."""
    home = tmp_path / "x"
    (home / "postgres" / "projects").mkdir(parents=True)
    (home / "postgres" / "projects" / "thesis.txt").write_text("years of work\n")
    system = tmp_path / "var-lib"
    (system / "postgres" / "data").mkdir(parents=True)
    (system / "postgres" / "data" / "PG_VERSION").write_text("16\n")
    (system / "postgres" / "data" / "postgresql.conf").write_text("port = 5432\n")
    (system / "postgres" / "data" / "postmaster.pid").write_text("1\n")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server not ours was asked about or stopped")

    monkeypatch.setattr(EmbeddedCluster, "stop", never)
    monkeypatch.setattr(EmbeddedCluster, "is_running", never)
    for where, kept in ((home, "projects/thesis.txt"), (system, "data/PG_VERSION")):
        _use_home(monkeypatch, where)
        assert run(["db", "destroy", "--yes"]) == 0
        out = capsys.readouterr().out
        assert f"{where / 'postgres'}: not ours, kept" in out and "nothing to delete" in out
        assert (where / "postgres" / kept).is_file()
        assert not (where / ".postgres.lock").exists()


def test_destroy_refuses_the_root_folder_as_home(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="is /"):
        embedded_files.cluster_files(EmbeddedCluster(Path("/")))


def test_destroy_removes_a_cluster_of_an_earlier_version_and_counts_what_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No marker file (made before it existed), but our settings in postgresql.conf: ours.
    The lock file that destroy itself makes is not counted."""
    home = tmp_path / "home"
    data = home / "postgres" / "data"
    data.mkdir(parents=True)
    (data / "postgresql.conf").write_text(f"port = 5432\n\n{CONF_MARKER}\nlisten_addresses = ''\n")
    (home / "passwords").mkdir()
    (home / "passwords" / "prefect_integrations.pgpass").write_text("*:*:*:u:p\n")
    _use_home(monkeypatch, home)
    assert run(["db", "destroy", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "not ours" not in out and "cluster deleted (2 paths)" in out
    assert sorted(os.listdir(home)) == []


def test_a_new_cluster_carries_the_marker(
    private_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = EmbeddedCluster(private_home, durable=False)
    cluster.ensure_running()
    assert (cluster.base_dir / CLUSTER_MARKER).is_file()
    assert cluster.base_dir in embedded_files.cluster_files(cluster).folders


@as_root
def test_destroy_refuses_a_shared_folder_that_does_not_record_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "clusters"
    monkeypatch.setattr(embedded_host, "SHARED_CLUSTERS", shared)
    monkeypatch.setattr(embedded_files, "SHARED_CLUSTERS", shared)
    other = embedded_host.shared_cluster_dir(tmp_path / "other-home")
    (other / "data").mkdir(parents=True)
    (other / CLUSTER_MARKER).write_text("another home's\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "postgres").symlink_to(other)
    _use_home(monkeypatch, home)
    for record in (None, "link", "dir"):
        if record == "link":
            (other / HOME_RECORD).symlink_to(tmp_path / "fake-record")
            (tmp_path / "fake-record").write_text(f"{home}\n")
        elif record == "dir":
            (other / HOME_RECORD).unlink()
            (other / HOME_RECORD).mkdir()
        assert run(["db", "destroy", "--yes"]) == 1
        assert "does not record its home" in capsys.readouterr().err
        assert (other / "data").is_dir() and (home / "postgres").is_symlink()


def test_orphans_on_an_unmounted_file_system_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "mnt"  # in fstab, not mounted now
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# comment\n/dev/sdb1 {mount} ext4 defaults 0 2\n")
    read = embedded_files._fstab_mount_points
    monkeypatch.setattr(embedded_files, "_fstab_mount_points", lambda: read(fstab))
    folder = tmp_path / "clusters" / "0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / HOME_RECORD).write_text(f"{mount / 'home'}\n")
    orphan = embedded_files.Orphan(folder, mount / "home", 0, running=False)
    assert embedded_files.remove_orphans([orphan]) == []
    assert folder.is_dir()


def test_destroy_deletes_nothing_when_the_cluster_appears_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that became a cluster after the listing (its server never checked) stays."""
    home = tmp_path / "home"
    (home / "postgres").mkdir(parents=True)
    (home / "passwords").mkdir()
    (home / "passwords" / "prefect_integrations.pgpass").write_text("*:*:*:u:p\n")
    cluster = EmbeddedCluster(home)
    cluster.base_dir = home / "postgres"  # under root too (tmp_path is private)
    real_lock = EmbeddedCluster.lock

    @contextlib.contextmanager
    def lock(self: EmbeddedCluster) -> Iterator[None]:
        (home / "postgres" / CLUSTER_MARKER).write_text("made meanwhile\n")
        with real_lock(self):
            yield

    monkeypatch.setattr(EmbeddedCluster, "lock", lock)
    with pytest.raises(ConfigurationError, match="changed meanwhile"):
        embedded_files.destroy(cluster)
    assert (home / "postgres" / CLUSTER_MARKER).is_file()
    assert (home / "passwords" / "prefect_integrations.pgpass").is_file()


def test_a_cluster_only_initialised_is_destroyed(private_home: Path) -> None:
    """The marker and (in the shared folder) the home record come with initdb, not later."""
    cluster = EmbeddedCluster(private_home, durable=False)
    with cluster.lock():
        cluster.initialize()
    if cluster.base_dir.parent == SHARED_CLUSTERS:
        assert _record(cluster.base_dir) == private_home
    assert embedded_files.destroy(cluster).folders == (cluster.base_dir,)
    assert not cluster.base_dir.exists()
