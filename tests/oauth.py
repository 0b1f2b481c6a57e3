"""A real OAuth 2.0 authorization server on loopback for tests: panva's ``oidc-provider``.

``tests/oauth_server/server.mjs`` configures the certified ``oidc-provider`` (npm, exact
version pinned in ``package-lock.json``) for tests: confidential clients, PKCE (S256)
required, refresh tokens always issued and rotated on every use, client credentials, and a
non-interactive ``/interaction/:uid`` that logs in ``alice`` and grants whatever was
requested (or answers ``access_denied``). Test hooks: ``/__stats``, ``/__reset``,
``/__faults`` and a protected resource ``/api/items``.

Usage::

    with start_oauth_server(redirect_uris=[cb], tmp_path=tmp_path) as server:
        callback_url = server.authorize(authorization_url)  # ...?code=...&state=...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

SERVER_DIR = Path(__file__).resolve().parent / "oauth_server"
SERVER_SCRIPT = SERVER_DIR / "server.mjs"

CLIENT_ID = "test-client"  # client_secret_post, authorization_code + refresh_token
CLIENT_SECRET = "test-client-secret"
BASIC_CLIENT_ID = "test-client-basic"  # client_secret_basic, authorization_code + refresh_token
BASIC_CLIENT_SECRET = "test-client-basic-secret"
M2M_CLIENT_ID = "m2m-client"  # client_secret_basic, client_credentials only
M2M_CLIENT_SECRET = "m2m-client-secret"
DEFAULT_SCOPES = ("openid", "offline_access", "items.read", "items.write")
ACCOUNT_ID = "alice"

_MAX_INTERACTION_HOPS = 10


class OAuthServerError(RuntimeError):
    """The test authorization server could not be installed, started or driven."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise OAuthServerError(
            f"`{tool}` was not found on PATH; the OAuth tests need Node.js (>= 20) and npm "
            f"to run the oidc-provider test server in {SERVER_DIR}"
        )
    return path


def _installed() -> bool:
    return (SERVER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file()


def ensure_node_modules() -> None:
    """Install the server's npm dependencies (``npm ci``) unless already installed.

    Serialized with a file lock so parallel test processes don't install concurrently.
    """
    if _installed():
        return
    npm = _require("npm")
    _require("node")
    lock_path = Path(tempfile.gettempdir()) / "prefect-integrations-oauth-server-npm.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=SERVER_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0 or not _installed():
                raise OAuthServerError(
                    f"`npm ci` in {SERVER_DIR} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class OAuthServer:
    """A running test authorization server and the helpers to drive it."""

    issuer: str
    authorization_url: str
    token_url: str
    api_url: str
    redirect_uris: list[str]
    discovery: dict[str, Any]
    startup_seconds: float
    log_path: Path
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    basic_client_id: str = BASIC_CLIENT_ID
    basic_client_secret: str = BASIC_CLIENT_SECRET
    m2m_client_id: str = M2M_CLIENT_ID
    m2m_client_secret: str = M2M_CLIENT_SECRET
    account_id: str = ACCOUNT_ID
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    # -- test hooks ------------------------------------------------------------------------

    def _hook(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, f"{self.issuer}{path}", json=body, timeout=10)
        if response.status_code != 200:
            raise OAuthServerError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters: ``token_requests``, ``by_grant``, ``by_client``, ``by_status``, ...

        ``by_status`` keys are status codes as strings (``"closed"`` for dropped connections).
        """
        result: dict[str, Any] = self._hook("GET", "/__stats")
        return result

    def reset_stats(self) -> None:
        """Zero the counters (pending faults are kept; see :meth:`clear_faults`)."""
        self._hook("POST", "/__reset")

    def inject_token_fault(self, **fault: Any) -> None:
        """Make the next ``count`` (default 1) token requests misbehave.

        Keys: ``status`` (int), ``body`` (str sent verbatim, or JSON-encoded object; default
        an OAuth error object), ``headers`` (dict), ``content_type``, ``delay_ms`` (alone:
        delay, then the real endpoint answers), ``close`` (drop the connection), ``count``.
        Replaces any pending token faults.
        """
        self._hook("POST", "/__faults", {"token": fault})

    def inject_token_faults(self, faults: list[dict[str, Any]]) -> None:
        """Queue several token faults, served in order (each for its own ``count``)."""
        self._hook("POST", "/__faults", {"token": faults})

    def inject_api_fault(self, **fault: Any) -> None:
        """Like :meth:`inject_token_fault`, for ``GET /api/items``."""
        self._hook("POST", "/__faults", {"api": fault})

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._hook("DELETE", "/__faults")

    # -- authorization ---------------------------------------------------------------------

    def _is_server_step(self, url: str) -> bool:
        parts, issuer = urlsplit(url), urlsplit(self.issuer)
        if (parts.scheme, parts.netloc) != (issuer.scheme, issuer.netloc):
            return False
        auth_path = urlsplit(self.authorization_url).path
        return parts.path == auth_path or parts.path.startswith(("/interaction/", f"{auth_path}/"))

    def authorize(self, url: str, *, deny: bool = False, account: str | None = None) -> str:
        """Run the user-agent part of an authorization request; return the final redirect.

        ``url`` is the full authorization URL (client_id, redirect_uri, state, PKCE, ...).
        The login/consent interaction redirects are followed with a fresh cookie jar; the
        redirect back to the client is returned, not followed: the callback URL with
        ``code``/``state`` (and ``iss``), or with ``error=access_denied`` when ``deny`` (the
        user logs in, then refuses consent), or with another OAuth error the server chose.
        ``account`` logs in that account instead of ``alice``.
        """
        extra: dict[str, str] = {}
        if deny:
            extra["deny"] = "consent"
        if account is not None:
            extra["account"] = account
        current = url
        with httpx.Client(follow_redirects=False, timeout=10) as client:
            for _ in range(_MAX_INTERACTION_HOPS):
                target = current
                if extra and urlsplit(current).path.startswith("/interaction/"):
                    target = _with_query(current, extra)
                response = client.get(target)
                location = response.headers.get("location")
                if response.status_code not in (302, 303) or location is None:
                    raise OAuthServerError(
                        f"authorization step GET {target} answered {response.status_code} "
                        f"without a redirect: {response.text[:500]}"
                    )
                current = str(urljoin(target, location))
                if not self._is_server_step(current):
                    return current
        raise OAuthServerError(f"more than {_MAX_INTERACTION_HOPS} redirects from {url}")


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Forward the server's stdout lines (and keep draining it so the pipe never fills)."""
    with contextlib.suppress(ValueError, OSError):
        for raw in stream:
            lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
    lines.put(None)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@contextmanager
def start_oauth_server(
    *,
    redirect_uris: list[str],
    access_token_ttl: int = 3600,
    tmp_path: Path,
    config: Mapping[str, Any] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[OAuthServer]:
    """Start ``node server.mjs <config.json>`` on a free loopback port; stop it on exit.

    ``config`` adds/overrides server knobs (see ``DEFAULTS`` in server.mjs), e.g.
    ``refresh_token_ttl``, ``client_credentials_ttl``, ``authorization_code_ttl``,
    ``scopes``, ``account_id``, ``deny_consent``, ``api_required_scope``, ``items``,
    ``log_requests``.
    """
    ensure_node_modules()
    node = _require("node")
    clients: dict[str, dict[str, Any]] = {
        CLIENT_ID: {
            "client_secret": CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
        },
        BASIC_CLIENT_ID: {
            "client_secret": BASIC_CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
        },
        M2M_CLIENT_ID: {
            "client_secret": M2M_CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
        },
    }
    overrides = dict(config or {})
    for client_id, metadata in dict(overrides.pop("clients", None) or {}).items():
        clients[client_id] = {**clients.get(client_id, {}), **metadata}
    settings: dict[str, Any] = {
        "port": 0,
        "redirect_uris": list(redirect_uris),
        "access_token_ttl": access_token_ttl,
        "scopes": list(DEFAULT_SCOPES),
        **overrides,
        "clients": clients,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="oauth-server-", suffix=".json", dir=tmp_path)
    config_path = Path(name)
    with os.fdopen(fd, "w") as handle:
        json.dump(settings, handle, indent=2)
    log_path = config_path.with_suffix(".log")

    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [node, str(SERVER_SCRIPT), str(config_path)],
            cwd=SERVER_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    try:
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
        issuer = _wait_ready(process, lines, log_path, started + startup_timeout)
        startup_seconds = time.monotonic() - started
        discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
        discovery.raise_for_status()
        document: dict[str, Any] = discovery.json()
        yield OAuthServer(
            issuer=issuer,
            authorization_url=document["authorization_endpoint"],
            token_url=document["token_endpoint"],
            api_url=f"{issuer}/api/items",
            redirect_uris=list(redirect_uris),
            discovery=document,
            startup_seconds=startup_seconds,
            log_path=log_path,
            client_secret=str(settings["clients"][CLIENT_ID]["client_secret"]),
            basic_client_secret=str(settings["clients"][BASIC_CLIENT_ID]["client_secret"]),
            m2m_client_secret=str(settings["clients"][M2M_CLIENT_ID]["client_secret"]),
            account_id=str(settings.get("account_id", ACCOUNT_ID)),
            scopes=tuple(settings["scopes"]),
            _process=process,
        )
    finally:
        _stop(process)


def _wait_ready(
    process: subprocess.Popen[bytes],
    lines: queue.Queue[str | None],
    log_path: Path,
    deadline: float,
) -> str:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OAuthServerError(f"OAuth test server not ready in time; log:\n{_tail(log_path)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            process.wait(timeout=5)
            raise OAuthServerError(
                f"OAuth test server exited ({process.returncode}) before READY; log:\n"
                f"{_tail(log_path)}"
            )
        if line.startswith("READY "):
            return line.split(" ", 1)[1].strip()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text("utf-8", "replace")[-limit:]
    except OSError:
        return "<no log>"
