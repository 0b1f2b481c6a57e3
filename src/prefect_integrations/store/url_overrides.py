"""Checks of an instance's URL overrides: where its requests and tokens may be sent.

An instance's config may replace the definition's API and OAuth endpoints
(``base_url``, ``authorization_url``, ``token_url``). Whoever can write an instance's
config could otherwise send its credentials anywhere: to a plain-text endpoint, to a
cloud metadata service, or to a host the integration never uses. An override must be
``https`` (plain ``http`` only to a loopback host), may not point at a link-local,
unspecified or metadata address (IP literals in any form are checked; names are not
resolved), and must use one of the definition's ``allowedHosts`` when it declares them.
Overrides are not secrets: their old and new values go into the audit row.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final
from urllib.parse import urlsplit

from prefect_integrations.exceptions import ValidationError, quote

__all__ = ["URL_OVERRIDES", "check_url_overrides", "url_override_changes"]

URL_OVERRIDES: Final = ("base_url", "authorization_url", "token_url")
"""The config fields that replace a definition's endpoints."""

_METADATA_NAMES: Final = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_METADATA_ADDRESSES: Final = frozenset(
    {ip_address("169.254.169.254"), ip_address("fd00:ec2::254"), ip_address("100.100.100.200")}
)
_LOOPBACK_RULE: Final = "plain http only for loopback hosts: 127.0.0.0/8, ::1, localhost"

_Address = IPv4Address | IPv6Address


def _address(host: str) -> _Address | None:
    """The IP address ``host`` is, in any form a resolver accepts (``2852039166``...)."""
    try:
        found = ip_address(host.partition("%")[0])  # an IPv6 zone does not change the address
    except ValueError:
        try:
            found = IPv4Address(socket.inet_aton(host))  # 0xa9.254.0251.254, 2852039166, 127.1
        except OSError:
            return None
    if isinstance(found, IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    for pattern in allowed_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _problem(url: str, allowed_hosts: Sequence[str] | None) -> str | None:
    """Why ``url`` may not be an override, or None if it may."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return f"must be an https URL ({_LOOPBACK_RULE})"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "must name a host"
    address = _address(host)
    if host in _METADATA_NAMES or address in _METADATA_ADDRESSES:
        return f"points at a cloud metadata service ({quote(host)})"
    if address is not None and address.is_link_local:
        return f"points at a link-local address ({quote(host)})"
    if address is not None and address.is_unspecified:
        return f"points at an unspecified address ({quote(host)})"
    loopback = host == "localhost" or (address is not None and address.is_loopback)
    if scheme == "http" and not loopback:
        return f"must be https ({_LOOPBACK_RULE})"
    if allowed_hosts is not None and not _allowed(host, allowed_hosts):
        listed = ", ".join(allowed_hosts)
        return f"host {quote(host)} is not one of the definition's allowedHosts ({listed})"
    return None


def check_url_overrides(
    instance_id: str, config: Mapping[str, Any], allowed_hosts: Sequence[str] | None
) -> None:
    """Refuse a URL override of ``config`` that could send requests somewhere unsafe.

    Raises `ValidationError` naming the field (``$.config.base_url``) and the reason.
    """
    for name in URL_OVERRIDES:
        value = config.get(name)
        if value is None:
            continue
        reason = (
            _problem(value, allowed_hosts) if isinstance(value, str) else "must be a URL string"
        )
        if reason is not None:
            raise ValidationError(f"Instance {quote(instance_id)}", ["config", name], reason)


def url_override_changes(
    old: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each URL override that ``new`` sets or changes: ``{name: {"old": ..., "new": ...}}``.

    ``old`` is None for a new instance. For the audit row: overrides are not secrets.
    """
    before = old or {}
    return {
        name: {"old": before.get(name), "new": new.get(name)}
        for name in URL_OVERRIDES
        if before.get(name) != new.get(name)
    }
