"""The maintenance flows as Prefect deployments, for a work pool or for ``serve``.

Two ways to run the three flows on their schedules, with different deployment names so
that one never takes over the other's deployments:

- **In a work pool** (`deploy`, `prefect-integrations deploy --pool NAME`, or
  ``prefect deploy --all`` with the repository's ``prefect.yaml``, which declares the same
  deployments): ``health-check``, ``refresh-tokens`` and ``rotate-credentials``, with
  module-path entrypoints (``prefect_integrations.maintenance.flows.health_check``) and
  no pull step. A worker needs the package installed and the settings in its own
  environment (``PREFECT_INTEGRATIONS_DATABASE_URL``, ``PREFECT_INTEGRATIONS_KEYS``),
  never a source checkout.
- **Served** (`prefect-integrations serve`): ``health-check-served``, ... Prefect's
  runner rewrites the entrypoint and pull steps of every deployment it serves and pauses
  them all when it stops, so `check_servable` refuses to serve a name that belongs to a
  work pool.

Job variables (``--env``) are stored in Prefect's database and shown in its UI, so
`job_env` refuses secrets there: the keyring, tokens, passwords, a URL with a password.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

from prefect_integrations.exceptions import (
    ConfigurationError,
    KeyringError,
    ValidationError,
    quote,
)
from prefect_integrations.prefect_api import require_api_url

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "LIVE_RUNNER_SECONDS",
    "TAGS",
    "Deployed",
    "check_servable",
    "deploy",
    "env_item_name",
    "job_env",
    "maintenance_flows",
    "pause_served",
    "served_deployments",
    "served_name",
    "unpooled_old_deployments",
    "work_pool_deployments",
]

#: Tags of every maintenance deployment.
TAGS = ("prefect-integrations", "maintenance")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_SUFFIX = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
#: A served deployment that is not paused and was polled this recently is being served by
#: a runner now: Prefect's runner polls every 10 s (``PREFECT_RUNNER_POLL_FREQUENCY``)
#: and pauses what it serves when it stops; the server marks a deployment not ready after
#: 60 s without a poll.
LIVE_RUNNER_SECONDS = 90
_ENV_NAME_START = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,59}")
#: ``password=`` of a libpq connection string (``host=db password=...``, ``sslpassword=``)
#: or a URL query.
_PASSWORD_WORD = re.compile(r"\w*password\s*=", re.IGNORECASE)
#: What Prefect accepts as a work pool name (no ``/ % & > <``), printable, not too long.
_POOL_NAME = re.compile(r"[^/%&><]{1,200}")
#: Parts of a variable name that say it holds a secret, anywhere in the upper-cased name
#: (``DB_PASS``, ``PGPASSWORD``, ``APIKEY``, ``AUTHTOKEN``, ``..._KEYRING``). Broad on
#: purpose: a refused harmless name (``MONKEY``) costs setting it on the worker instead.
_SECRET_PARTS = ("PASS", "PWD", "TOKEN", "KEY", "SECRET", "AUTH", "CRED", "PRIVATE")
#: Words (between ``_``) that say so only as a whole word: ``GITHUB_PAT`` but not ``PATH``.
_SECRET_WORDS = frozenset({"PAT", "PW", "PIN"})
#: Names that hold a secret whatever their words.
_SECRET_NAMES = frozenset(
    {"PGPASSWORD", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_INTEGRATIONS_KEYS"}
)


@dataclass(frozen=True)
class Deployed:
    """One deployment registered by `deploy`."""

    name: str  # "flow-name/deployment-name"
    entrypoint: str
    cron: str
    paused: bool


def maintenance_flows() -> list[tuple[str, Flow[..., Any]]]:
    """(deployment name, flow) of the three maintenance flows, in schedule order."""
    from prefect_integrations.maintenance.flows import (
        SCHEDULES,
        health_check,
        refresh_tokens,
        rotate_credentials,
    )

    flows: dict[str, Flow[..., Any]] = {
        "health-check": health_check,
        "refresh-tokens": refresh_tokens,
        "rotate-credentials": rotate_credentials,
    }
    return [(name, flows[name]) for name in SCHEDULES]


def served_name(name: str, suffix: str | None = None) -> str:
    """The name under which `serve` runs the deployment ``name`` (``serve --name-suffix``)."""
    if suffix is not None and not _NAME_SUFFIX.fullmatch(suffix):
        raise ValidationError(
            f"--name-suffix {quote(suffix, limit=60)}",
            [],
            "1-40 lower-case letters, digits and '-', starting with a letter or digit",
        )
    return f"{name}-served-{suffix}" if suffix else f"{name}-served"


def _holds_keyring_entry(value: str) -> bool:
    """True when an entry of ``value`` parses as a keyring entry (``kid:base64-of-32-bytes``)."""
    from prefect_integrations.keyring import parse_keyring

    for entry in re.split(r"[,\s]+", value):
        if ":" not in entry:
            continue
        try:
            parse_keyring(entry)
        except KeyringError:
            continue
        return True
    return False


def _secret_reason(name: str, value: str) -> str | None:
    upper = name.upper()
    if (
        upper in _SECRET_NAMES
        or any(part in upper for part in _SECRET_PARTS)
        or _SECRET_WORDS & set(upper.split("_"))
    ):
        return "its name says it holds a secret"
    if _holds_keyring_entry(value):
        return "it holds a keyring key"
    if _PASSWORD_WORD.search(value):
        return "it holds a password (name a password file instead: passfile=...)"
    try:
        parts = urlsplit(value)
        password = parts.password
        query = [k.lower() for k, _ in parse_qsl(parts.query)]
    except ValueError:
        return "it does not parse as a URL, so a password in it cannot be ruled out"
    if password or any("password" in k for k in query):
        return "it holds a password (name a password file instead: passfile=...)"
    return None


def _shown_name(name: str) -> str:
    """What an error may show of a malformed name: its leading valid-name part, no more.

    ``PREFECT_INTEGRATIONS_KEYS:k1:<key>=`` (``:`` typed for ``=``) shows as
    ``PREFECT_INTEGRATIONS_KEYS``: the rest may be the secret.
    """
    match = _ENV_NAME_START.match(name)
    return quote(match.group(0), limit=60) if match else "(an item not starting with a name)"


def env_item_name(item: str) -> str:
    """The name of a ``--env`` item as an error may show it (see `_shown_name`)."""
    return _shown_name(item)


def job_env(items: Mapping[str, str]) -> dict[str, str]:
    """Environment variables to store as job variables; secrets are refused.

    Job variables live in Prefect's database and show in its UI, so the keyring, tokens,
    passwords and URLs with a password belong in the worker's environment instead. The
    error names the variable, never its value.
    """
    for name, value in items.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValidationError(
                f"--env {_shown_name(name)}", [], "not an environment variable name"
            )
        reason = _secret_reason(name, value)
        if reason is not None:
            raise ValidationError(
                f"--env {name}",
                [],
                f"refused as a job variable: {reason}; job variables are stored in Prefect's "
                "database and shown in its UI, so set it in the worker's environment",
            )
    return dict(items)


def work_pool_deployments(
    pool: str, *, env: Mapping[str, str] | None = None
) -> list[RunnerDeployment]:
    """The three deployments for ``pool``, with module-path entrypoints and no pull step."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    from prefect_integrations.maintenance.flows import SCHEDULES

    variables = {"env": job_env(env)} if env else None
    return [
        RunnerDeployment.from_flow(
            flow,
            name=name,
            cron=SCHEDULES[name],
            tags=list(TAGS),
            work_pool_name=pool,
            job_variables=variables,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for name, flow in maintenance_flows()
    ]


def served_deployments(suffix: str | None = None) -> list[RunnerDeployment]:
    """The three deployments `serve` runs: the same flows and schedules, ``-served`` names.

    With ``suffix``, ``-served-<suffix>``: a second installation on the same Prefect server.
    """
    from prefect.deployments.runner import RunnerDeployment

    from prefect_integrations.maintenance.flows import SCHEDULES

    return [
        RunnerDeployment.from_flow(
            flow, name=served_name(name, suffix), cron=SCHEDULES[name], tags=list(TAGS)
        )
        for name, flow in maintenance_flows()
    ]


def deploy(pool: str, *, env: Mapping[str, str] | None = None) -> list[Deployed]:
    """Register the three maintenance deployments in work pool ``pool``; return them.

    Fails before registering anything when ``env`` holds a secret, PREFECT_API_URL is not
    set or does not answer, or the work pool does not exist. Deploying again updates the
    deployments in place (a paused one stays paused).
    """
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import DeploymentApplyError
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    if not (_POOL_NAME.fullmatch(pool) and pool.isprintable() and pool.strip()):
        raise ValidationError(f"--pool {quote(pool)}", [], "not a work pool name")
    deployments = work_pool_deployments(pool, env=env)
    url = require_api_url()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigurationError(
                f"Work pool {quote(pool)} does not exist on the Prefect server at {url}; "
                f"create it with `prefect work-pool create {pool} --type process`"
            ) from None
        except (PrefectHTTPStatusError, httpx.HTTPError) as exc:
            raise ConfigurationError(
                f"Reading work pool {quote(pool)} from the Prefect server at {url} failed: "
                f"{type(exc).__name__}"
            ) from None
        deployed = []
        for deployment in deployments:
            try:
                was_paused = bool(client.read_deployment_by_name(deployment.full_name).paused)
            except ObjectNotFound:
                was_paused = False
            try:
                deployment_id = cast(UUID, deployment.apply())  # sync: no event loop here
                if was_paused:  # apply() sends paused=False: an operator's pause stands
                    client.pause_deployment(deployment_id)
            except (DeploymentApplyError, PrefectHTTPStatusError, httpx.HTTPError) as exc:
                raise ConfigurationError(
                    f"Registering deployment '{deployment.full_name}' on the Prefect server "
                    f"at {url} failed: {type(exc).__name__}: {exc}"
                ) from None
            stored = client.read_deployment(deployment_id)
            deployed.append(
                Deployed(
                    name=deployment.full_name,
                    entrypoint=stored.entrypoint or "",
                    cron=_crons(stored.schedules),
                    paused=bool(stored.paused),
                )
            )
    return deployed


def _crons(schedules: Iterable[Any]) -> str:
    return ", ".join(str(getattr(s.schedule, "cron", s.schedule)) for s in schedules)


def pause_served(deployments: Sequence[RunnerDeployment]) -> None:
    """Pause the deployments ``serve`` served, as Prefect's runner does on SIGTERM."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            # a server already gone or a deployment deleted meanwhile: nothing to pause
            with contextlib.suppress(ObjectNotFound, PrefectHTTPStatusError, httpx.HTTPError):
                client.pause_deployment(client.read_deployment_by_name(deployment.full_name).id)


def check_servable(deployments: Sequence[RunnerDeployment]) -> None:
    """Refuse to serve a deployment that belongs to a work pool or is served elsewhere now.

    Serving a work pool's deployment would rewrite its entrypoint, drop its pull steps and
    pause it on exit. A deployment served now by another runner (another host, or another
    installation on the same Prefect server) would have its runs executed by both, and the
    first to stop would pause it under the other: one that is not paused and was polled
    in the last `LIVE_RUNNER_SECONDS` is refused (a runner that stopped paused it).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.types._datetime import now

    with get_client(sync_client=True) as client:
        for deployment in deployments:
            try:
                existing = client.read_deployment_by_name(deployment.full_name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                raise ConfigurationError(
                    f"Deployment '{deployment.full_name}' belongs to work pool "
                    f"{quote(existing.work_pool_name)}; `serve` will not take it over "
                    "(it would rewrite its entrypoint and pull steps and pause it on exit). "
                    "Delete or rename it, or let the pool's workers run it"
                )
            polled = existing.last_polled
            if existing.paused or polled is None:
                continue
            age = (now("UTC") - polled).total_seconds()
            if age < LIVE_RUNNER_SECONDS:
                raise ConfigurationError(
                    f"Deployment '{deployment.full_name}' is served by another running "
                    f"`serve` (polled {max(age, 0):.0f} s ago; another host, or another "
                    "installation using the same PREFECT_API_URL): both would run its flow "
                    "runs, and the first to stop would pause it under the other. Stop the "
                    "other `serve` (or wait "
                    f"{LIVE_RUNNER_SECONDS} s if it was killed), or serve under other names: "
                    "`serve --name-suffix NAME`"
                )


def unpooled_old_deployments() -> list[str]:
    """Deployments ``serve`` of earlier versions left: the work pool names, without a pool.

    Earlier versions served ``integration-health-check/health-check`` and the others
    without a work pool; today those names are the work pool deployments', and nothing
    runs a pool-less one (its runs stay scheduled, late).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for name, flow in maintenance_flows():
            full_name = f"{flow.name}/{name}"
            try:
                existing = client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            if not existing.work_pool_name:
                found.append(full_name)
    return found
