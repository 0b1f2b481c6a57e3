"""The maintenance flows as deployments: `deploy`, `prefect deploy --all`, and `serve` beside them.

The first tests run the command line in-process against the Prefect test server. The
others install the built wheel into a fresh virtualenv (uv, from its cache), start a local
Prefect server and real process workers from that virtualenv, and run the deployments on
them against a migrated test database: what an operator does after `pip install`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.workers.process import ProcessWorker

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.embedded import EmbeddedCluster
from prefect_integrations.keyring import Keyring
from prefect_integrations.maintenance.deployments import (
    deploy,
    served_name,
    work_pool_deployments,
)
from prefect_integrations.maintenance.flows import SCHEDULES
from prefect_integrations.maintenance.service import local_prefect_server
from prefect_integrations.models import RUNTIME_ROLE
from prefect_integrations.store.definitions import sync_definitions

from .clirunner import Cli, assert_one_error

ROOT = Path(__file__).parents[1]
FLOWS = {
    "health-check": "integration-health-check",
    "refresh-tokens": "integration-refresh-tokens",
    "rotate-credentials": "integration-rotate-credentials",
}
MODULE = "prefect_integrations.maintenance.flows"
ENTRYPOINTS = {
    "health-check": f"{MODULE}.health_check",
    "refresh-tokens": f"{MODULE}.refresh_tokens",
    "rotate-credentials": f"{MODULE}.rotate_credentials",
}


def _create_pool(name: str) -> None:
    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )


def _stored(full_name: str) -> dict[str, Any]:
    """What the server holds of a deployment, as compared before and after `serve`."""
    with get_client(sync_client=True) as client:
        d = client.read_deployment_by_name(full_name)
    return {
        "entrypoint": d.entrypoint,
        "pull_steps": d.pull_steps,
        "path": d.path,
        "paused": d.paused,
        "work_pool_name": d.work_pool_name,
        "job_variables": d.job_variables,
        "schedules": [(s.schedule.model_dump(mode="json"), s.active) for s in d.schedules],
    }


# --------------------------------------------------------------------------------------
# In-process, against the Prefect test server
# --------------------------------------------------------------------------------------


def test_prefect_yaml_declares_the_work_pool_deployments() -> None:
    """`prefect deploy --all` and `prefect-integrations deploy` register the same three."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["pull"] == []  # nothing to pull: the worker imports the installed package
    declared = {
        d["name"]: (d["entrypoint"], d["schedules"][0]["cron"], tuple(d["tags"]))
        for d in config["deployments"]
    }
    built = {
        d.name: (d.entrypoint, SCHEDULES[d.name], tuple(d.tags))
        for d in work_pool_deployments("integrations")
    }
    assert declared == built
    assert {name: e for name, (e, _, _) in declared.items()} == ENTRYPOINTS
    assert not (ROOT / "flows").exists()  # no entrypoint files left to keep in step


def test_deploy_registers_module_entrypoints_without_pull_steps(
    harness: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _create_pool("deploy-pool")
    cli = Cli(capsys, monkeypatch)
    out = cli.ok(
        "deploy", "--pool", "deploy-pool", "--env", "PREFECT_INTEGRATIONS_DEFINITIONS_PATH=/defs"
    ).out
    for name, entrypoint in ENTRYPOINTS.items():
        assert f"{FLOWS[name]}/{name}" in out and entrypoint in out
        stored = _stored(f"{FLOWS[name]}/{name}")
        assert stored["entrypoint"] == entrypoint
        assert not stored["pull_steps"] and stored["path"] is None
        assert stored["work_pool_name"] == "deploy-pool" and stored["paused"] is False
        assert stored["job_variables"] == {
            "env": {"PREFECT_INTEGRATIONS_DEFINITIONS_PATH": "/defs"}
        }
        assert stored["schedules"][0][0]["cron"] == SCHEDULES[name]
    # deploying again updates in place, and a deployment the operator paused stays paused
    paused = again_paused = "integration-refresh-tokens/refresh-tokens"
    with get_client(sync_client=True) as client:
        client.pause_deployment(client.read_deployment_by_name(paused).id)
    again = deploy("deploy-pool")
    assert [d.entrypoint for d in again] == list(ENTRYPOINTS.values())
    assert {d.name: d.paused for d in again} == {
        f"{FLOWS[name]}/{name}": f"{FLOWS[name]}/{name}" == again_paused for name in ENTRYPOINTS
    }
    assert _stored(paused)["paused"] is True


def test_deploy_fails_clearly_without_the_work_pool(
    harness: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = Cli(capsys, monkeypatch)("deploy", "--pool", "no-such-pool")
    assert_one_error(
        result, "configuration_error", "Work pool 'no-such-pool' does not exist", "work-pool create"
    )
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_deployment_by_name("integration-health-check/no-such-pool")


def test_deploy_fails_clearly_without_a_prefect_api(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = Cli(capsys, monkeypatch)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert_one_error(cli("deploy", "--pool", "p"), "configuration_error", "PREFECT_API_URL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: closed}):
        assert_one_error(
            cli("deploy", "--pool", "p"), "configuration_error", closed, "does not answer"
        )


#: A well-formed keyring key (32 bytes, base64): "c2VjcmV0" is "secret".
_KEY = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0YWI="


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("PREFECT_INTEGRATIONS_KEYS=k1:c2VjcmV0", "PREFECT_INTEGRATIONS_KEYS"),
        ("PREFECT_INTEGRATIONS_DATABASE_URL=postgresql://u:s3cr3t@db/x", "holds a password"),
        ("DATABASE_URL=postgresql://u@db/x?password=s3cr3t", "holds a password"),
        ("PGCONN=host=db user=u password=s3cr3t", "holds a password"),
        ("PREFECT_API_KEY=s3cr3t", "PREFECT_API_KEY"),
        ("SLACK_TOKEN=s3cr3t", "SLACK_TOKEN"),
        ("PGPASSWORD=s3cr3t", "PGPASSWORD"),
        ("DB_PASS=s3cr3t", "DB_PASS"),
        ("DB_PWD=s3cr3t", "DB_PWD"),
        ("APIKEY=s3cr3t", "APIKEY"),
        ("AUTHTOKEN=s3cr3t", "AUTHTOKEN"),
        ("GITHUB_PAT=s3cr3t", "GITHUB_PAT"),
        ("PREFECT_API_AUTH_STRING=admin:s3cr3t", "PREFECT_API_AUTH_STRING"),
        (f"PREFECT_INTEGRATIONS_KEYRING=k1:{_KEY}", "PREFECT_INTEGRATIONS_KEYRING"),
        (f"SOMETHING=k1:{_KEY}", "holds a keyring key"),
        (f"SOMETHING=old:x, k1:{_KEY}", "holds a keyring key"),
        ("X_DSN=host=db sslpassword=s3cr3t", "holds a password"),
        ("X_URL=postgresql://u:s3cr3t@[::1/db password=x", "holds a password"),
        ("X_URL=postgresql://u:s3cr3t@[::1/db", "does not parse as a URL"),
        ("X_URL=https://h/?db_password=s3cr3t", "holds a password"),
        ("NOVALUE", "not KEY=VALUE"),
        ("PREFECT_INTEGRATIONS_KEYS:k1:c2VjcmV0", "--env 'PREFECT_INTEGRATIONS_KEYS' is"),
        (f"PREFECT_INTEGRATIONS_KEYS:k1:{_KEY}", "not an environment variable name"),
        (f":k1:{_KEY}", "not an environment variable name"),
        (":k1:c2VjcmV0", "not KEY=VALUE"),
        ("1BAD=x", "not an environment variable name"),
    ],
)
def test_deploy_refuses_secrets_in_job_variables(
    item: str, fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # refused before any Prefect server is asked: none is configured here
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = Cli(capsys, monkeypatch)("deploy", "--pool", "p", "--env", item)
    line = assert_one_error(result, "validation_error", fragment)
    assert "s3cr3t" not in line and "c2VjcmV0" not in line and _KEY[:8] not in line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", "/srv/definitions"),
        ("PREFECT_INTEGRATIONS_ACTOR", "maintenance"),
        ("HTTP_PROXY", "http://proxy.internal:3128"),
        ("HTTPS_PROXY", "http://user@proxy.internal:3128"),
        ("PREFECT_LOGGING_LEVEL", "DEBUG"),
        ("PATH", "/usr/bin:/bin"),
        (
            "PREFECT_INTEGRATIONS_DATABASE_URL",
            "postgresql+psycopg://runtime@db/pi?passfile=/etc/pi/pgpass&sslmode=require",
        ),
    ],
)
def test_deploy_accepts_ordinary_settings(name: str, value: str) -> None:
    from prefect_integrations.maintenance.deployments import job_env

    assert job_env({name: value}) == {name: value}


@pytest.mark.parametrize("pool", ["", " ", "a/b", "x\x00", "p" * 201])
def test_deploy_refuses_what_cannot_be_a_work_pool_name(
    pool: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = Cli(capsys, monkeypatch)("deploy", "--pool", pool)
    assert_one_error(result, "validation_error", "--pool", "not a work pool name")


def test_deploy_accepts_a_url_naming_a_password_file() -> None:
    from prefect_integrations.maintenance.deployments import job_env

    url = "postgresql+psycopg://prefect_integrations_runtime@/pi?host=/s&passfile=/p.pgpass"
    assert job_env({"PREFECT_INTEGRATIONS_DATABASE_URL": url}) == {
        "PREFECT_INTEGRATIONS_DATABASE_URL": url
    }


@pytest.mark.usefixtures("env")
def test_serve_refuses_a_name_that_belongs_to_a_work_pool(
    harness: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.deployments.runner import RunnerDeployment

    from prefect_integrations.maintenance.flows import health_check

    _create_pool("taken-pool")
    taken = RunnerDeployment.from_flow(
        health_check, name=served_name("health-check"), work_pool_name="taken-pool"
    )
    taken.apply()
    full_name = f"integration-health-check/{served_name('health-check')}"
    before = _stored(full_name)
    result = Cli(capsys, monkeypatch)("serve", "--no-oauth")
    assert_one_error(result, "configuration_error", full_name, "'taken-pool'", "will not")
    assert _stored(full_name) == before
    with get_client(sync_client=True) as client:  # the session's server serves other tests
        client.delete_deployment(client.read_deployment_by_name(full_name).id)


def _delete(full_name: str) -> None:
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_deployment(client.read_deployment_by_name(full_name).id)


def _polled_by_a_runner(deployment_id: Any) -> None:
    """Poll ``deployment_id`` as Prefect's runner does, until the server records it."""
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            client.get_scheduled_flow_runs_for_deployments(deployment_ids=[deployment_id])
            if client.read_deployment(deployment_id).last_polled is not None:
                return
            time.sleep(0.5)
    raise AssertionError("the Prefect server did not record the poll")


@pytest.mark.usefixtures("env")
def test_serve_refuses_deployments_another_serve_runs_now(
    harness: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two serves of one name would both run its flow runs; the first to stop would pause
    the other's. A served deployment polled recently and not paused is refused; a
    distinct --name-suffix is the way to run a second installation."""
    from prefect_integrations.maintenance.deployments import check_servable, served_deployments

    names = [d.full_name for d in served_deployments()]
    try:
        served = served_deployments()[0]
        deployment_id = cast(UUID, served.apply())  # sync: no event loop here
        _polled_by_a_runner(deployment_id)
        result = Cli(capsys, monkeypatch)("serve", "--no-oauth")
        assert_one_error(
            result, "configuration_error", served.full_name, "another running", "--name-suffix"
        )
        assert _stored(served.full_name)["paused"] is False  # the other one is left alone
        check_servable(served_deployments("staging"))  # other names: servable
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)  # what a runner does when it stops
        check_servable(served_deployments())
        bad = Cli(capsys, monkeypatch)("serve", "--no-oauth", "--name-suffix", "Bad Name")
        assert_one_error(bad, "validation_error", "--name-suffix")
    finally:
        for name in names:
            _delete(name)


@pytest.mark.usefixtures("env")
def test_serve_warns_about_pool_less_deployments_of_earlier_versions(
    harness: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.deployments.runner import RunnerDeployment

    from prefect_integrations.maintenance.flows import health_check

    old = "integration-health-check/health-check"
    _create_pool("warn-pool")
    taken = RunnerDeployment.from_flow(
        health_check, name=served_name("health-check"), work_pool_name="warn-pool"
    )
    try:
        _delete(old)  # an earlier test's, in a pool: applying again would keep its pool
        RunnerDeployment.from_flow(health_check, name="health-check").apply()  # no pool
        taken.apply()  # so that serve stops before serving
        result = Cli(capsys, monkeypatch)("serve", "--no-oauth")
        assert_one_error(result, "configuration_error", "'warn-pool'")
        warnings = [line for line in result.out.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"'{old}'" in warnings[0]
        assert f"prefect deployment delete '{old}'" in warnings[0] and "--pool" in warnings[0]
    finally:
        _delete(old)
        _delete(taken.full_name)


# --------------------------------------------------------------------------------------
# The installed wheel, a local Prefect server and real workers
# --------------------------------------------------------------------------------------


def _uv() -> str | None:
    candidates = [ROOT / ".tools/bin/uv", Path(sys.prefix).parent / ".tools/bin/uv"]
    found = [str(c) for c in candidates if c.is_file()]
    return found[0] if found else shutil.which("uv")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the built wheel and the locked dependencies; its bin/."""
    uv = _uv()
    if uv is None:
        if os.environ.get("CI"):
            pytest.fail("uv is needed to build the test virtualenv (scripts/test installs it)")
        pytest.skip("uv is not installed (scripts/test installs it in .tools)")
    work = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    requirements = work / "requirements.txt"

    def uv_run(*args: str | Path, **extra: str) -> None:
        subprocess.run([uv, *map(str, args)], check=True, env={**env, **extra}, timeout=600)

    uv_run("export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "-q",
           "--project", ROOT, "-o", requirements)  # fmt: skip
    uv_run("build", "-q", "--wheel", "--out-dir", work / "dist", ROOT)
    uv_run("venv", "-q", "--python", sys.executable, work / "venv")
    wheels = list((work / "dist").glob("prefect_integrations-*.whl"))
    uv_run("pip", "install", "-q", "-r", requirements, *wheels, VIRTUAL_ENV=str(work / "venv"))
    return work / "venv" / "bin"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Prefect server (``prefect server start``) of its own; its API URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with local_prefect_server(tmp_path_factory.mktemp("prefect-server"), port=port) as url:
        yield url


class _Patient(httpx.HTTPTransport):
    """Sends again after a 503, as Prefect's own client does.

    A local Prefect server on SQLite answers 503 while a busy worker holds its database.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(5):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(0.5 * (attempt + 1))
        return super().handle_request(request)


class Api:
    """The Prefect REST API of the local server, as a test reads and drives it."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url + "/", timeout=30, transport=_Patient())

    def deployment(self, full_name: str) -> dict[str, Any]:
        response = self.client.get(f"deployments/name/{full_name}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def state(self, full_name: str) -> dict[str, Any]:
        d = self.deployment(full_name)
        keys = ("entrypoint", "pull_steps", "path", "paused", "work_pool_name", "job_variables")
        return {k: d[k] for k in keys} | {"schedules": [s["schedule"] for s in d["schedules"]]}

    def create_pool(self, name: str) -> None:
        template = ProcessWorker.get_default_base_job_template()
        self.client.post(
            "work_pools/", json={"name": name, "type": "process", "base_job_template": template}
        ).raise_for_status()

    def delete_deployments(self) -> None:
        found = self.client.post("deployments/filter", json={}).json()
        for d in found:
            self.client.delete(f"deployments/{d['id']}").raise_for_status()

    def run(self, full_name: str) -> str:
        deployment_id = self.deployment(full_name)["id"]
        response = self.client.post(f"deployments/{deployment_id}/create_flow_run", json={})
        response.raise_for_status()
        return str(response.json()["id"])

    def wait(self, run_ids: list[str], *, timeout: float, log: Path) -> dict[str, str]:
        """Wait until every run is final; return run id -> state type."""
        deadline = time.monotonic() + timeout
        while True:
            states = {i: self.client.get(f"flow_runs/{i}").json()["state"]["type"] for i in run_ids}
            final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
            if all(s in final for s in states.values()):
                return states
            assert time.monotonic() < deadline, f"runs not final: {states}\n{_tail(log)}"
            time.sleep(1)


def _tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def api(server: str) -> Iterator[Api]:
    prefect_api = Api(server)
    prefect_api.delete_deployments()  # each test starts from no deployments
    yield prefect_api
    prefect_api.client.close()


@pytest.fixture
def worker_env(
    cluster: EmbeddedCluster,
    database_name: str,
    db: Database,
    registry: Registry,
    keyring: Keyring,
    server: str,
    tmp_path: Path,
) -> dict[str, str]:
    """What a worker's environment holds: the Prefect API, the database and the keyring.

    Nothing else of the test process (no PYTHONPATH): the virtualenv's own package runs.
    """
    with db.transaction() as session:
        sync_definitions(session, registry, actor="tests")
    keys = ",".join(f"{kid}:{key.get_secret_value()}" for kid, key in keyring)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PREFECT_API_URL": server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_INTEGRATIONS_DATABASE_URL": cluster.url(database=database_name, user=RUNTIME_ROLE),
        "PREFECT_INTEGRATIONS_KEYS": keys,
        "PREFECT_INTEGRATIONS_HOME": str(tmp_path / "home"),
        "PREFECT_INTEGRATIONS_ACTOR": "worker-tests",
    }


@contextlib.contextmanager
def _process(args: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Iterator[Any]:
    """A long-running command (a worker, `serve`) with its output in ``log``; stopped after."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _run_cli(
    venv: Path, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / args[0]), *args[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _deploy_env(worker_env: dict[str, str]) -> dict[str, str]:
    """What `deploy` needs: only the Prefect API (the settings belong to the worker)."""
    keep = ("PATH", "HOME", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")
    return {k: worker_env[k] for k in keep}


@pytest.mark.timeout(600)
def test_installed_package_deploys_and_runs_on_a_worker(
    venv: Path, api: Api, worker_env: dict[str, str], tmp_path: Path
) -> None:
    api.create_pool("pip-pool")
    deployed = _run_cli(
        venv,
        "prefect-integrations",
        "deploy",
        "--pool",
        "pip-pool",
        "--env",
        "PREFECT_INTEGRATIONS_ACTOR=deployed-flows",
        env=_deploy_env(worker_env),
        cwd=tmp_path,  # no checkout anywhere near
    )
    assert deployed.returncode == 0, deployed.stderr
    for name, entrypoint in ENTRYPOINTS.items():
        state = api.state(f"{FLOWS[name]}/{name}")
        assert state["entrypoint"] == entrypoint and not state["pull_steps"]
        assert state["job_variables"] == {"env": {"PREFECT_INTEGRATIONS_ACTOR": "deployed-flows"}}
    missing = _run_cli(
        venv,
        "prefect-integrations",
        "deploy",
        "--pool",
        "missing-pool",
        env=_deploy_env(worker_env),
        cwd=tmp_path,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("error[configuration_error]: Work pool 'missing-pool'")

    log = tmp_path / "worker.log"
    worker = [str(venv / "prefect"), "worker", "start", "--pool", "pip-pool"]
    with _process(worker, env=worker_env, cwd=tmp_path, log=log):
        runs = [api.run(f"{FLOWS[name]}/{name}") for name in FLOWS]
        states = api.wait(runs, timeout=300, log=log)
    assert list(states.values()) == ["COMPLETED"] * 3, _tail(log)


@pytest.mark.timeout(600)
def test_prefect_deploy_all_from_the_checkout(
    venv: Path, api: Api, worker_env: dict[str, str], tmp_path: Path
) -> None:
    api.create_pool("integrations")  # the pool prefect.yaml names
    assert "PREFECT_INTEGRATIONS_PROJECT_DIR" not in worker_env
    deployed = _run_cli(
        venv, "prefect", "--no-prompt", "deploy", "--all", env=_deploy_env(worker_env), cwd=ROOT
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for name, entrypoint in ENTRYPOINTS.items():
        state = api.state(f"{FLOWS[name]}/{name}")
        assert state["entrypoint"] == entrypoint and state["pull_steps"] == []
        assert state["work_pool_name"] == "integrations"

    log = tmp_path / "worker.log"
    worker = [str(venv / "prefect"), "worker", "start", "--pool", "integrations"]
    with _process(worker, env=worker_env, cwd=tmp_path, log=log):
        runs = [api.run("integration-health-check/health-check")]
        states = api.wait(runs, timeout=300, log=log)
    assert list(states.values()) == ["COMPLETED"], _tail(log)


@pytest.mark.timeout(600)
def test_serve_beside_deployed_flows_leaves_them_untouched(
    venv: Path, api: Api, worker_env: dict[str, str], tmp_path: Path, server: str
) -> None:
    api.create_pool("served-beside")
    with temporary_settings(updates={PREFECT_API_URL: server}):
        deploy("served-beside")
    names = [f"{FLOWS[name]}/{name}" for name in FLOWS]
    before = {n: api.state(n) for n in names}

    log = tmp_path / "serve.log"
    serve = [str(venv / "prefect-integrations"), "serve", "--no-oauth"]
    with _process(serve, env=worker_env, cwd=tmp_path, log=log) as process:
        served = [f"{FLOWS[name]}/{served_name(name)}" for name in FLOWS]
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, _tail(log)
            with contextlib.suppress(httpx.HTTPStatusError):
                if all(api.state(n)["paused"] is False for n in served):
                    break
            assert time.monotonic() < deadline, _tail(log)
            time.sleep(1)
        time.sleep(2)  # the runner is polling its deployments
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=120) == 0, _tail(log)

    assert {n: api.state(n) for n in names} == before
    # Prefect pauses what it served when it stops: only those
    assert [api.state(n)["paused"] for n in served] == [True] * 3
    assert [api.state(n)["work_pool_name"] for n in served] == [None] * 3
