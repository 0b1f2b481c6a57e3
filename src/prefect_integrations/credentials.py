"""Credential types: encrypted (as stored) and decrypted (held in `SecretStr`).

Plaintext exists only between decryption and the outgoing request. `Credentials` keeps
every string as a `SecretStr`, so printing, logging or pickling it never shows a secret;
`reveal()` is the one explicit way to get the plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

__all__ = [
    "MASK",
    "NON_SECRET_FIELDS",
    "Credentials",
    "EncryptedCredentials",
    "credentials_metadata",
    "mask_secrets",
    "secret_strings",
]

MASK = "********"
#: Credential fields that are not secret and may be shown and stored unencrypted as metadata.
NON_SECRET_FIELDS = frozenset({"token_type", "scope", "expires_at"})


def secret_strings(values: Mapping[str, Any], *, min_length: int) -> list[str]:
    """Every string of at least ``min_length`` characters in credential ``values``.

    Nested mappings and lists are walked; the top-level `NON_SECRET_FIELDS` are skipped.
    Used to mask secrets in text (shorter strings would garble unrelated text).
    """
    found: list[str] = []
    stack: list[Any] = [v for k, v in values.items() if k not in NON_SECRET_FIELDS]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if len(value) >= min_length:
                found.append(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by `MASK`.

    Longest first, so a secret that contains another is masked whole.
    """
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def _wrap(value: Any) -> Any:
    if isinstance(value, str):
        return SecretStr(value)
    if isinstance(value, Mapping):
        return {k: _wrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _mask(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _mask(v) for k, v in value.items()}
    return MASK


def credentials_metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Non-secret facts about credentials, stored beside the ciphertext.

    Field names, the token type, scope and expiry, whether a refresh token is present;
    never a secret value.
    """
    meta: dict[str, Any] = {"fields": sorted(values)}
    for name in sorted(NON_SECRET_FIELDS & values.keys()):
        meta[name] = values[name]
    if "refresh_token" in values:
        meta["has_refresh_token"] = True
    client = values.get("oauth2")
    if isinstance(client, Mapping):
        meta["oauth2_client"] = sorted(client)
    return meta


class Credentials:
    """Decrypted credentials of one instance; every string is a `SecretStr`."""

    __slots__ = ("_values", "instance_id", "key_id")

    def __init__(self, *, instance_id: str, key_id: str, values: Mapping[str, Any]) -> None:
        self.instance_id = instance_id
        self.key_id = key_id
        self._values: dict[str, Any] = _wrap(dict(values))

    def get(self, name: str) -> SecretStr | None:
        """The top-level secret string called ``name``, or None."""
        value = self._values.get(name)
        return value if isinstance(value, SecretStr) else None

    def section(self, name: str) -> Mapping[str, Any]:
        """A nested object (e.g. ``oauth2``) with its strings still wrapped."""
        value = self._values.get(name)
        return value if isinstance(value, Mapping) else {}

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def fields(self) -> list[str]:
        """The names of the top-level fields."""
        return sorted(self._values)

    def reveal(self) -> dict[str, Any]:
        """The plain values. Only for building the outgoing request; never log them."""
        result: dict[str, Any] = _unwrap(self._values)
        return result

    def masked(self) -> dict[str, Any]:
        """The structure with every value replaced by a mask."""
        result: dict[str, Any] = _mask(self._values)
        return result

    def __repr__(self) -> str:
        return (
            f"Credentials(instance_id={self.instance_id!r}, key_id={self.key_id!r}, "
            f"fields={self.fields()!r})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("Credentials cannot be pickled")


@dataclass(frozen=True, slots=True)
class EncryptedCredentials:
    """The stored envelope: format version, key id, pgp ciphertext (base64), metadata."""

    version: int
    key_id: str
    ciphertext: str = field(repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any]) -> EncryptedCredentials:
        """Read the JSONB envelope stored in ``integration_instances.credentials``."""
        return cls(
            version=int(envelope.get("v", 1)),
            key_id=str(envelope.get("kid", "")),
            ciphertext=str(envelope.get("ct", "")),
            metadata=dict(envelope.get("meta") or {}),
        )
