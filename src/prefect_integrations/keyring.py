"""The encryption keyring: several keys by id, the first one primary.

Keys are 32 random bytes, written as base64. A keyring is configured as
``PREFECT_INTEGRATIONS_KEYS="k2:<base64>,k1:<base64>"``. Key material is held in
`SecretStr` and never appears in a message, a log line or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from prefect_integrations.exceptions import KeyringError
from prefect_integrations.settings import Settings

__all__ = [
    "DEV_KEYRING_WARNED_ENV",
    "KEY_BYTES",
    "Keyring",
    "dev_keyring_path",
    "generate_key",
    "load_keyring",
    "parse_keyring",
]

KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_logger = logging.getLogger(__name__)

#: Set (to the development keyring's path) once its warning was given; processes a
#: command starts (flow runs, a local Prefect server) inherit it and do not repeat it.
DEV_KEYRING_WARNED_ENV = "PREFECT_INTEGRATIONS_DEV_KEYRING_WARNED"


@dataclass(frozen=True, slots=True)
class Keyring:
    """Encryption keys by id; ``primary_id`` names the key new writes use."""

    keys: tuple[tuple[str, SecretStr], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("The keyring is empty")

    @property
    def primary_id(self) -> str:
        """Id of the key that encrypts new writes."""
        return self.keys[0][0]

    @property
    def primary(self) -> SecretStr:
        """The primary key."""
        return self.keys[0][1]

    @property
    def ids(self) -> list[str]:
        """Every key id, primary first."""
        return [kid for kid, _ in self.keys]

    def get(self, key_id: str) -> SecretStr | None:
        """Return the key with that id, or None."""
        for kid, key in self.keys:
            if kid == key_id:
                return key
        return None

    def subkey(self, key_id: str, info: bytes) -> bytes | None:
        """A 32-byte key derived (HKDF-SHA256) from the key ``key_id`` for one purpose.

        ``info`` names the purpose, so a signing subkey never equals an encryption key nor
        another purpose's subkey. None when the keyring has no key ``key_id``.
        """
        key = self.get(key_id)
        if key is None:
            return None
        material = base64.b64decode(key.get_secret_value())
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)

    def __iter__(self) -> Iterator[tuple[str, SecretStr]]:
        return iter(self.keys)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, primary={self.primary_id!r})"


def generate_key() -> str:
    """Return a new random key: 32 bytes from the OS CSPRNG, base64-encoded."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def parse_keyring(text: str, *, source: str = "PREFECT_INTEGRATIONS_KEYS") -> Keyring:
    """Parse ``kid:base64key,kid2:base64key``; errors name the entry, never the key."""
    entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
    if not entries:
        raise KeyringError(f"{source} holds no keys; expected 'kid:base64key,...'")
    keys: list[tuple[str, SecretStr]] = []
    for index, entry in enumerate(entries):
        kid, sep, material = entry.partition(":")
        kid = kid.strip()
        where = f"{source} entry {index + 1}"
        if not sep:
            raise KeyringError(f"{where} has no ':'; expected 'kid:base64key'")
        if not _KID.fullmatch(kid):
            raise KeyringError(
                f"{where}: key id must be 1-64 characters of letters, digits, '_', '.', '-'"
            )
        if any(kid == k for k, _ in keys):
            raise KeyringError(f"{where}: key id '{kid}' appears twice")
        try:
            raw = base64.b64decode(material.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"{where} (key '{kid}') is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise KeyringError(
                f"{where} (key '{kid}') decodes to {len(raw)} bytes; keys must be {KEY_BYTES} "
                "random bytes (make one with `prefect-integrations keys generate`)"
            )
        keys.append((kid, SecretStr(material.strip())))
    return Keyring(tuple(keys))


def dev_keyring_path(settings: Settings) -> Path:
    """Where the embedded mode keeps its generated development keyring."""
    return settings.home / "keyring"


def load_keyring(settings: Settings) -> Keyring:
    """Return the configured keyring.

    With ``PREFECT_INTEGRATIONS_KEYS`` set, that keyring. Otherwise, in embedded mode, a
    development keyring kept in a 0600 file under the home (generated on first use), with a
    warning once per command: the processes it starts inherit
    ``PREFECT_INTEGRATIONS_DEV_KEYRING_WARNED`` and stay quiet about that file, but
    creating the file (new keys) always warns. Otherwise a `KeyringError`.
    """
    if settings.keys is not None:
        return parse_keyring(settings.keys.get_secret_value())
    if not settings.embedded:
        raise KeyringError(
            "No keyring: set PREFECT_INTEGRATIONS_KEYS='kid:base64key' "
            "(generate a key with `prefect-integrations keys generate`)"
        )
    path = dev_keyring_path(settings)
    created = False
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: use that one
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(f"dev1:{generate_key()}\n")
            created = True
    # the marker only quiets the warning about a keyring already warned about; new keys
    # (the file was deleted since, or never existed) are always announced
    if created or os.environ.get(DEV_KEYRING_WARNED_ENV) != str(path):
        os.environ[DEV_KEYRING_WARNED_ENV] = str(path)
        _logger.warning(
            "%s the development keyring %s; set PREFECT_INTEGRATIONS_KEYS for production",
            "Generated new keys in" if created else "Using",
            path,
        )
    return parse_keyring(path.read_text(), source=str(path))
