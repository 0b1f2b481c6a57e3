"""Settings read from the environment (``PREFECT_INTEGRATIONS_*``) with pydantic-settings."""

from __future__ import annotations

import getpass
import os
import socket
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "current_actor", "get_settings"]


class Settings(BaseSettings):
    """Configuration of prefect-integrations.

    Every field is read from the environment variable ``PREFECT_INTEGRATIONS_<FIELD>``.
    """

    model_config = SettingsConfigDict(
        env_prefix="PREFECT_INTEGRATIONS_", extra="ignore", frozen=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: the embedded cluster under `home` is used.",
    )
    home: Path = Field(
        default=Path("~/.prefect-integrations"),
        description=(
            "Folder of the embedded cluster, its password files and the development keyring."
        ),
    )
    keys: SecretStr | None = Field(
        default=None,
        description="Keyring 'kid:base64key,kid2:base64key'; the first key is the primary.",
    )
    definitions_path: str = Field(
        default="",
        description=f"Extra folders of definitions, separated by '{os.pathsep}'.",
    )
    actor: str | None = Field(
        default=None, description="Name recorded in the audit log (default: user@host)."
    )
    oauth_redirect_uri: str = Field(
        default="http://127.0.0.1:8765/callback",
        description="Redirect URI of the OAuth connect service, registered with providers.",
    )
    pg_user: str | None = Field(
        default=None,
        description="Unprivileged OS user that runs the embedded cluster when started as root.",
    )

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def embedded(self) -> bool:
        """True when no database URL is configured and the embedded cluster is used."""
        return self.database_url is None

    @property
    def extra_definition_paths(self) -> list[Path]:
        """The extra definition folders as paths."""
        return [Path(p).expanduser() for p in self.definitions_path.split(os.pathsep) if p.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()


def current_actor(settings: Settings | None = None) -> str:
    """Return who is acting, for the audit log: the configured actor or ``user@host``."""
    settings = settings or get_settings()
    if settings.actor:
        return settings.actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
