"""The maintenance service: the three flows on their schedules, plus the connect service.

`serve` runs the ``health-check-served``, ``refresh-tokens-served`` and
``rotate-credentials-served`` deployments with Prefect's ``serve`` (no work pool needed)
and the OAuth connect service in a background thread. Their names differ from the work
pool deployments' (`deployments`), and a name that belongs to a work pool is refused, so
serving never rewrites, nor pauses on exit, a deployment it did not create. With no
``PREFECT_API_URL``, it first starts a local Prefect server (its own SQLite database
under the home folder) and stops it on exit. ``once=True`` runs each flow once and
returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from prefect_integrations.exceptions import ConfigurationError
from prefect_integrations.runtime import Runtime

__all__ = ["local_prefect_server", "serve"]


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def local_prefect_server(home: Path, *, port: int = 4200, timeout: float = 180.0) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1 with its own SQLite under ``home``."""
    prefect_bin = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which(
        "prefect"
    )
    if prefect_bin is None:
        raise ConfigurationError("The `prefect` command is not installed next to Python")
    port = _free_port(port)
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    log_path = prefect_home / "server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ConfigurationError(
                    f"The local Prefect server exited (code {process.returncode}); see {log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"The local Prefect server did not answer within {timeout:.0f} s; "
                    f"see {log_path}"
                )
            time.sleep(0.5)
        yield api_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _ConnectThread:
    """The OAuth connect service (uvicorn) in a daemon thread."""

    def __init__(self, rt: Runtime, *, host: str | None = None, port: int | None = None) -> None:
        import uvicorn

        from prefect_integrations.oauth.listener import listen, runtime_app

        listener = listen(rt, host=host, port=port)  # a port in use is an error at start
        self.url = listener.url
        self.redirect_uri = listener.redirect_uri
        self._socket = listener.socket
        config = uvicorn.Config(runtime_app(rt, listener.redirect_uri), log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="oauth-connect",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the service (if it started) and close its socket."""
        self._server.should_exit = True
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)
        self._socket.close()


def serve(
    rt: Runtime,
    *,
    once: bool = False,
    oauth: bool = True,
    prefect_port: int = 4200,
    oauth_host: str | None = None,
    oauth_port: int | None = None,
    echo: Callable[[str], None] = print,
    name_suffix: str | None = None,
) -> dict[str, Any]:
    """Run the maintenance service (or each flow once); returns the summaries of ``once``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with contextlib.ExitStack() as stack:
        connect = None
        if oauth and not once:  # a port in use is an error before anything starts
            connect = _ConnectThread(rt, host=oauth_host, port=oauth_port)
            stack.callback(connect.stop)
        api_url = PREFECT_API_URL.value()
        if not api_url:
            echo("starting a local Prefect server ...")
            api_url = stack.enter_context(local_prefect_server(rt.settings.home, port=prefect_port))
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
            stack.callback(_drain_prefect_workers)  # runs before the server stops
        ui_url = api_url.removesuffix("/api")
        echo(f"Prefect UI: {ui_url}")
        if once:
            return _run_once(echo)
        return _serve_forever(connect, echo=echo, name_suffix=name_suffix)
    return {}  # pragma: no cover - the with block always returns


def _drain_prefect_workers() -> None:
    """Send queued logs and events while the local Prefect server still runs."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=10)


def _run_once(echo: Callable[[str], None]) -> dict[str, Any]:
    from prefect_integrations.maintenance.flows import (
        health_check,
        refresh_tokens,
        rotate_credentials,
    )
    from prefect_integrations.maintenance.summaries import summary_text

    summaries: dict[str, Any] = {
        "health-check": asyncio.run(health_check()),
        "refresh-tokens": refresh_tokens(),
        "rotate-credentials": rotate_credentials(),
    }
    for name, summary in summaries.items():
        echo(f"{name}: {summary_text(name, summary)}")
    return summaries


def _serve_forever(
    connect: _ConnectThread | None,
    *,
    echo: Callable[[str], None],
    name_suffix: str | None = None,
) -> dict[str, Any]:
    from prefect import serve as prefect_serve

    from prefect_integrations.maintenance.deployments import (
        check_servable,
        pause_served,
        served_deployments,
        unpooled_old_deployments,
    )
    from prefect_integrations.maintenance.flows import SCHEDULES

    for old in unpooled_old_deployments():
        echo(
            f"warning: deployment '{old}' (served by an earlier version) has no work pool and "
            f"nothing runs it: `prefect deployment delete '{old}'`, or give it a pool with "
            "`prefect-integrations deploy --pool NAME`"
        )
    deployments = served_deployments(name_suffix)
    # never take over (and pause) a work pool's deployment, nor one another serve runs
    check_servable(deployments)
    if connect is not None:
        connect.start()
        echo(
            f"OAuth connect service: {connect.url}, callback {connect.redirect_uri} "
            "(links from `prefect-integrations oauth connect ID`)"
        )
    for deployment, cron in zip(deployments, SCHEDULES.values(), strict=True):
        echo(f"schedule: {deployment.name:<26} cron '{cron}' (UTC)")
    echo("serving; press Ctrl-C to stop")
    try:
        prefect_serve(*deployments, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        # Prefect's runner pauses what it served on SIGTERM but not on Ctrl-C: pause
        # these (and only these) here, so no schedule is left that nothing runs.
        pause_served(deployments)
        if connect is not None:
            connect.stop()
        echo("stopped")
    return {}
