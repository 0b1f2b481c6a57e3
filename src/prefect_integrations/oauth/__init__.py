"""OAuth2: the connect service, token endpoint access and the token lifecycle."""

from __future__ import annotations

__all__ = ["connect_link"]


def connect_link(instance_id: str, *, ttl: int = 600, reconnect: bool = False) -> str:
    """A single-use connect link for ``instance_id``, valid ``ttl`` seconds.

    See `prefect_integrations.oauth.links.connect_link`; ``reconnect`` allows replacing the
    tokens of an instance that is already ``active``.
    """
    from prefect_integrations.oauth.links import connect_link as mint

    return mint(instance_id, ttl=ttl, reconnect=reconnect)
