"""The Prefect server this process reports to, when one must be configured."""

from __future__ import annotations

from prefect_integrations.exceptions import ConfigurationError

__all__ = ["require_api_url"]


def require_api_url(purpose: str = "deployments are registered on a Prefect server") -> str:
    """The configured Prefect API; an error when none is set or it does not answer.

    The error says ``purpose``: what needs the server.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigurationError(
            f"PREFECT_API_URL is not set: {purpose} "
            "(`export PREFECT_API_URL=http://HOST:4200/api`, or `prefect config set ...`)"
        )
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise ConfigurationError(
            f"The Prefect API at {url} (PREFECT_API_URL) does not answer: {type(failure).__name__}"
        )
    return str(url)
