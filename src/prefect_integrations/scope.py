"""Scopes of instances (global / client / user) and the caller's context."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

from prefect_integrations.exceptions import ValidationError

__all__ = ["SCOPE_ORDER", "Context", "ContextType", "Scope", "parse_scope"]

ContextType = Literal["global", "client", "user"]
#: Most specific first: the order in which resolution looks for an instance.
SCOPE_ORDER: tuple[ContextType, ...] = ("user", "client", "global")
_CONTEXT_ID = re.compile(r"[^\s:\ud800-\udfff][^\x00-\x1f\ud800-\udfff]{0,254}")


@dataclass(frozen=True, slots=True)
class Scope:
    """Where an instance is visible: everywhere, to one client, or to one user."""

    context_type: ContextType
    context_id: str | None = None

    def __post_init__(self) -> None:
        if self.context_type not in ("global", "client", "user"):
            raise ValidationError(
                "Context",
                ["context_type"],
                f"unknown context type {self.context_type!r}; use global, client:ID or user:ID",
            )
        if self.context_type == "global" and self.context_id is not None:
            raise ValidationError("Context", ["context_id"], "a global instance has no context id")
        if self.context_type != "global":
            if not self.context_id:
                raise ValidationError(
                    "Context",
                    ["context_id"],
                    f"a {self.context_type} instance needs a context id ({self.context_type}:ID)",
                )
            if not _CONTEXT_ID.fullmatch(self.context_id):
                raise ValidationError(
                    "Context",
                    ["context_id"],
                    "context id must be 1-255 printable characters not starting with ':'",
                )

    def __str__(self) -> str:
        if self.context_type == "global":
            return "global"
        return f"{self.context_type}:{self.context_id}"

    def as_document(self) -> dict[str, str]:
        """The specification's ``context`` object: ``{"type": ..., "contextId": ...}``."""
        if self.context_id is None:
            return {"type": self.context_type}
        return {"type": self.context_type, "contextId": self.context_id}


def parse_scope(text: str) -> Scope:
    """Parse ``global``, ``client:ID`` or ``user:ID``."""
    kind, sep, ident = text.strip().partition(":")
    if kind not in ("global", "client", "user"):
        raise ValidationError(
            "Context",
            ["context_type"],
            f"unknown context type {kind!r}; use global, client:ID or user:ID",
        )
    if kind == "global" and sep:
        raise ValidationError("Context", ["context_id"], "a global instance has no context id")
    return Scope(cast(ContextType, kind), ident if sep else None)


@dataclass(frozen=True, slots=True)
class Context:
    """Who is calling: an optional client id and an optional user id."""

    client_id: str | None = None
    user_id: str | None = None
