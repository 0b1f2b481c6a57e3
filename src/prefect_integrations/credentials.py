"""Credential types and shape: encrypted (as stored) and decrypted (held in `SecretStr`).

Plaintext exists only between decryption and the outgoing request. `Credentials` keeps
every string as a `SecretStr`, so printing, logging or pickling it never shows a secret;
`reveal()` is the one explicit way to get the plain values.

This module also owns the shape of a credential document, the specification's
credentials schema: one section per authType, ``{"oauth2": {...}}``, ``{"apikey":
{...}}`` or ``{"custom": {...}}``. Times inside the ``oauth2`` section (``expires_at``,
``obtained_at``) are ISO 8601 UTC strings; epoch seconds are accepted on input and
converted (`normalize_times`). Documents written before the specification's shape (a flat
object) are converted by `to_spec_shape`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import SecretStr

__all__ = [
    "CLIENT_FIELDS",
    "MASK",
    "NON_SECRET_FIELDS",
    "SECTIONS",
    "TIME_FIELDS",
    "Credentials",
    "EncryptedCredentials",
    "credentials_metadata",
    "epoch_or_none",
    "field_paths",
    "is_spec_shape",
    "normalize_times",
    "oauth2_section",
    "spec_example",
    "to_epoch",
    "to_iso",
    "to_spec_shape",
]

MASK = "********"
#: The sections of a credential document, one per authType.
SECTIONS: Final = ("oauth2", "apikey", "custom")
#: Fields of the ``oauth2`` section that hold a time (ISO 8601 UTC when stored).
TIME_FIELDS: Final = frozenset({"expires_at", "obtained_at"})
#: Fields of the ``oauth2`` section that name the OAuth client registered with the provider.
CLIENT_FIELDS: Final = ("client_id", "client_secret")
#: Credential fields that are not secret and may be shown and stored unencrypted as metadata.
NON_SECRET_FIELDS = frozenset({"token_type", "scope", "expires_at", "obtained_at"})
#: Fields of the pre-specification flat oauth2 document (besides its nested client).
_OLD_OAUTH2_FIELDS = frozenset(
    {
        "access_token",
        "refresh_token",
        "token_type",
        "scope",
        "expires_at",
        "obtained_at",
        "id_token",
    }
)
#: Latest time representable as ISO 8601 with a four-digit year (9999-12-31T23:59:59Z).
_MAX_EPOCH = 253402300799


# --------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------


def to_iso(value: float | int | str) -> str:
    """``value`` (epoch seconds or ISO 8601) as ISO 8601 UTC, e.g. ``2030-01-01T00:00:00Z``.

    Whole seconds print without a fraction, others with microseconds. Raises `ValueError`
    for a string that is not an ISO 8601 date-time, a time without a timezone, or a number
    outside 0 .. 9999-12-31T23:59:59Z.
    """
    return _format(to_epoch(value))


def to_epoch(value: float | int | str) -> float:
    """``value`` (epoch seconds or an ISO 8601 string with a timezone) as epoch seconds.

    Raises `ValueError` as `to_iso` does.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or not 0 <= seconds <= _MAX_EPOCH:
            raise ValueError("epoch seconds must be between 0 and 253402300799 (9999-12-31)")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"a {type(value).__name__} is not a time")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO 8601 date-time (expected e.g. 2030-01-01T00:00:00Z)") from None
    if parsed.tzinfo is None or "T" not in text.upper():
        raise ValueError("an ISO 8601 date-time with a timezone is required (e.g. ...Z)")
    return parsed.timestamp()


def _format(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    spec = "%Y-%m-%dT%H:%M:%S.%f" if moment.microsecond else "%Y-%m-%dT%H:%M:%S"
    return moment.strftime(spec) + "Z"


def epoch_or_none(value: object) -> float | None:
    """``value`` (epoch seconds or ISO 8601) in epoch seconds; None if it is neither."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return to_epoch(value)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------
# Shape
# --------------------------------------------------------------------------------------


def is_spec_shape(values: Mapping[str, Any]) -> bool:
    """True when every top-level key of ``values`` is a section (oauth2, apikey, custom).

    The pre-specification flat documents always had some other key (``api_key``,
    ``access_token``, a custom field...), except a bare OAuth client ``{"oauth2": {...}}``,
    which reads the same in both shapes.
    """
    return all(key in SECTIONS for key in values)


def oauth2_section(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``oauth2`` section of plain (revealed) credential ``values``; empty without one."""
    section = values.get("oauth2")
    return section if isinstance(section, Mapping) else {}


def normalize_times(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of spec-shaped ``values`` with the ``oauth2`` times as ISO 8601 UTC strings.

    Epoch seconds become ISO strings; ISO strings are rewritten in UTC. A value that is
    not a time is left as is (validation reports it). Other sections are unchanged.
    """
    result = dict(values)
    section = values.get("oauth2")
    if isinstance(section, Mapping):
        fixed = dict(section)
        for name in TIME_FIELDS & fixed.keys():
            seconds = epoch_or_none(fixed[name])
            if seconds is not None:
                fixed[name] = _format(seconds)
        result["oauth2"] = fixed
    return result


def to_spec_shape(
    values: Mapping[str, Any], *, auth_type: str | None = None, legacy: bool = False
) -> dict[str, Any]:
    """``values`` in the specification's shape, converting a pre-specification flat document.

    ``legacy`` says the document was written before the specification's shape (envelope
    v1): a legacy document of a ``custom`` integration becomes ``{"custom": {...}}``
    whatever its field names, even names like ``apikey``. Otherwise a spec-shaped
    document (see `is_spec_shape`) only has its times normalized, and a flat one of a
    ``custom`` integration is wrapped the same way; other flat documents (or any with
    ``auth_type`` unknown) are converted by what they hold:

    - ``api_key`` (plus other strings, e.g. a provider ``key_id``): ``{"apikey": {"key":
      api_key, ...the other fields}}``;
    - OAuth2 token fields (``access_token``, ``refresh_token``, ``expires_at``...) and/or
      a nested client ``{"oauth2": {"client_id", "client_secret"}}``: one ``oauth2``
      section holding the client fields and the token fields;
    - anything else: ``{"custom": {...}}``.

    Numeric ``expires_at``/``obtained_at`` become ISO 8601 UTC. Nothing is dropped.
    """
    if auth_type == "custom" and (legacy or not is_spec_shape(values)):
        return {"custom": dict(values)}
    if is_spec_shape(values):
        return normalize_times(values)
    flat = dict(values)
    if "api_key" in flat:
        key = flat.pop("api_key")
        if "key" in flat:  # an extra field of that name is kept under another name
            flat["legacy_key"] = flat.pop("key")
        return {"apikey": {**flat, "key": key}}
    client = flat.get("oauth2")
    if (_OLD_OAUTH2_FIELDS & flat.keys()) and (client is None or isinstance(client, Mapping)):
        section: dict[str, Any] = dict(client) if isinstance(client, Mapping) else {}
        section.update({k: v for k, v in flat.items() if k != "oauth2"})
        return normalize_times({"oauth2": section})
    return {"custom": flat}


def spec_example(auth_type: str) -> str:
    """The shape expected for ``auth_type``, as a short JSON hint for error messages."""
    return {
        "oauth2": '{"oauth2": {"access_token": ..., "refresh_token": ..., '
        '"expires_at": "2030-01-01T00:00:00Z", "token_type": "Bearer", '
        '"client_id": ..., "client_secret": ...}}',
        "apikey": '{"apikey": {"key": ..., "secret": ...}}',
        "custom": '{"custom": {...}}',
    }.get(auth_type, '{"oauth2" | "apikey" | "custom": {...}}')


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
    """Non-secret facts about spec-shaped credentials, stored beside the ciphertext.

    ``kind`` (the section: oauth2, apikey or custom), ``fields`` (the field names inside
    it), for oauth2 the token type, scope and expiry (ISO 8601), ``has_refresh_token``
    and ``oauth2_client`` (the client field names present); never a secret value.
    """
    kinds = [name for name in SECTIONS if isinstance(values.get(name), Mapping)]
    if not kinds:
        return {"fields": sorted(values)}
    kind = kinds[0]
    section: Mapping[str, Any] = values[kind]
    meta: dict[str, Any] = {"kind": kind, "fields": sorted(section)}
    if kind == "oauth2":
        for name in sorted(NON_SECRET_FIELDS & section.keys()):
            value = section[name]
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                meta[name] = value
        meta["has_refresh_token"] = "refresh_token" in section
        client = [name for name in CLIENT_FIELDS if name in section]
        if client:
            meta["oauth2_client"] = client
    return meta


def field_paths(values: Mapping[str, Any]) -> list[str]:
    """The field names of spec-shaped ``values`` as ``section.field`` (for audit details)."""
    paths: list[str] = []
    for key, value in sorted(values.items()):
        if isinstance(value, Mapping):
            paths.extend(f"{key}.{name}" for name in sorted(value))
        else:
            paths.append(key)
    return paths


class Credentials:
    """Decrypted, spec-shaped credentials of one instance; every string is a `SecretStr`.

    Read a field with `secret` (``credentials.secret("oauth2", "access_token")``) or a
    non-secret one with `value`; `kind` names the section the instance uses.
    """

    __slots__ = ("_values", "instance_id", "key_id")

    def __init__(self, *, instance_id: str, key_id: str, values: Mapping[str, Any]) -> None:
        self.instance_id = instance_id
        self.key_id = key_id
        self._values: dict[str, Any] = _wrap(dict(values))

    @property
    def kind(self) -> str | None:
        """The section present (``oauth2``, ``apikey`` or ``custom``), or None."""
        for name in SECTIONS:
            if name in self._values:
                return name
        return None

    def secret(self, section: str, name: str) -> SecretStr | None:
        """The string field ``name`` of ``section`` (e.g. ``"apikey", "key"``), or None."""
        value = self.section(section).get(name)
        return value if isinstance(value, SecretStr) else None

    def value(self, section: str, name: str) -> str | None:
        """The plain string field ``name`` of ``section``; only for non-secret fields."""
        secret = self.secret(section, name)
        return secret.get_secret_value() if secret is not None else None

    def has(self, section: str, name: str) -> bool:
        """True when ``section`` has a field ``name`` (of any type)."""
        return name in self.section(section)

    def section(self, name: str) -> Mapping[str, Any]:
        """A section (e.g. ``oauth2``) with its strings still wrapped; empty if absent."""
        value = self._values.get(name)
        return value if isinstance(value, Mapping) else {}

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def fields(self) -> list[str]:
        """The names of the top-level fields (the sections)."""
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
    """The stored envelope: format version, key id, pgp ciphertext (base64), metadata.

    Version 1 envelopes may hold a pre-specification flat document; version 2 always
    holds the specification's shape.
    """

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
