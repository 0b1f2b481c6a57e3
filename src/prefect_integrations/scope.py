"""Scopes of instances (global / client / user) and the caller's context.

Client and user ids (the context id of a client or user scope) follow one rule,
`CONTEXT_ID_RULE`: 1-255 ASCII letters, digits, ``_``, ``.``, ``-``, ``@`` or ``+``,
starting with a letter or digit. ASCII only, so an id is already in Unicode NFC and cannot
hold whitespace, invisible characters (zero-width spaces, bidirectional marks) or
look-alikes of Latin letters (the Cyrillic a, U+0430): two ids that print the same are the same
id. The rule is checked on input (`check_context_id`; a `Scope` or `Context` built by a
caller); a scope read from a stored row (`Scope.stored`) is taken as it is, so an instance
stored under an id outside the rule can still be read, listed, moved and deleted.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal, cast

from prefect_integrations.exceptions import ValidationError

__all__ = [
    "CONTEXT_ID_RULE",
    "SCOPE_ORDER",
    "Context",
    "ContextType",
    "Scope",
    "check_context_id",
    "parse_scope",
]

ContextType = Literal["global", "client", "user"]
#: Most specific first: the order in which resolution looks for an instance.
SCOPE_ORDER: tuple[ContextType, ...] = ("user", "client", "global")
#: The rule of client and user ids, as messages and documentation state it.
CONTEXT_ID_RULE = (
    "1-255 ASCII letters, digits, '_', '.', '-', '@' or '+', starting with a letter or digit"
)
_CONTEXT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,254}")
_MAX_LENGTH = 255


def _why_not(value: str) -> str:
    """What breaks the rule in ``value`` (which does not match it), for the message."""
    if not value:
        return "must not be empty"
    if len(value) > _MAX_LENGTH:
        return f"is {len(value)} characters long; at most {_MAX_LENGTH} are allowed"
    if value != value.strip() or any(char.isspace() for char in value):
        return "must not contain whitespace (leading or trailing spaces included)"
    for position, char in enumerate(value):
        if not char.isascii():
            name = unicodedata.name(char, "unnamed")
            kind = "an invisible" if not char.isprintable() else "a non-ASCII"
            return (
                f"contains {kind} character U+{ord(char):04X} ({name}) at position "
                f"{position}; only ASCII is allowed (no look-alike or invisible characters)"
            )
        if not char.isprintable():
            return f"contains the control character U+{ord(char):04X} at position {position}"
    if not value[0].isalnum():
        return f"must start with a letter or digit, not {value[0]!r}"
    bad = next(char for char in value if not (char.isalnum() or char in "_.@+-"))
    return f"contains {bad!r}, which is not allowed"


def check_context_id(value: object, *, field: str) -> str:
    """Return ``value`` if it is a valid client or user id (`CONTEXT_ID_RULE`).

    Otherwise raise `ValidationError` naming ``field`` (e.g. ``client_id``, ``--client``)
    and what breaks the rule, never echoing more than the start of the value.
    """
    if not isinstance(value, str):
        raise ValidationError(field, [], f"must be a string, not {type(value).__name__}")
    if _CONTEXT_ID.fullmatch(value) is None:
        raise ValidationError(field, [], f"{_why_not(value)}; an id is {CONTEXT_ID_RULE}")
    return value


@dataclass(frozen=True, slots=True)
class Scope:
    """Where an instance is visible: everywhere, to one client, or to one user.

    Built by a caller, the context id must follow `CONTEXT_ID_RULE`; `Scope.stored`
    builds the scope of a stored row without that check.
    """

    context_type: ContextType
    context_id: str | None = None

    def __post_init__(self) -> None:
        self._check_shape()
        if self.context_id is not None:
            try:
                check_context_id(self.context_id, field="Context")
            except ValidationError as exc:
                raise ValidationError("Context", ["context_id"], exc.reason) from None

    def _check_shape(self) -> None:
        if self.context_type not in ("global", "client", "user"):
            raise ValidationError(
                "Context",
                ["context_type"],
                f"unknown context type {self.context_type!r}; use global, client:ID or user:ID",
            )
        if self.context_type == "global" and self.context_id is not None:
            raise ValidationError("Context", ["context_id"], "a global instance has no context id")
        if self.context_type != "global" and not self.context_id:
            raise ValidationError(
                "Context",
                ["context_id"],
                f"a {self.context_type} instance needs a context id ({self.context_type}:ID)",
            )

    @classmethod
    def stored(cls, context_type: str, context_id: str | None) -> Scope:
        """The scope of a stored row, taken as it is.

        An id stored before `CONTEXT_ID_RULE` was enforced may break it; the row must
        still be readable, listable and deletable, so only inputs are checked.
        """
        scope = object.__new__(cls)
        object.__setattr__(scope, "context_type", context_type)
        object.__setattr__(scope, "context_id", context_id)
        return scope

    def check(self) -> Scope:
        """Return the scope if its context id follows `CONTEXT_ID_RULE` (before a write)."""
        Scope(self.context_type, self.context_id)
        return self

    def __str__(self) -> str:
        if self.context_type == "global":
            return "global"
        return f"{self.context_type}:{self.context_id}"

    def as_document(self) -> dict[str, str]:
        """The specification's ``context`` object: ``{"type": ..., "contextId": ...}``."""
        if self.context_id is None:
            return {"type": self.context_type}
        return {"type": self.context_type, "contextId": self.context_id}


def parse_scope(text: str, *, subject: str = "Context") -> Scope:
    """Parse ``global``, ``client:ID`` or ``user:ID`` (nothing around it is stripped).

    Errors name ``subject`` (e.g. the ``--context`` option) and the part that is wrong.
    """
    kind, sep, ident = text.partition(":")
    try:
        if kind not in ("global", "client", "user"):
            raise ValidationError(
                "Context",
                ["context_type"],
                f"unknown context type {kind[:40]!r}; use global, client:ID or user:ID",
            )
        if kind == "global" and sep:
            raise ValidationError("Context", ["context_id"], "a global instance has no context id")
        return Scope(cast(ContextType, kind), ident if sep else None)
    except ValidationError as exc:
        if subject == "Context":
            raise
        raise ValidationError(subject, exc.path, exc.reason) from None


@dataclass(frozen=True, slots=True)
class Context:
    """Who is calling: an optional client id and an optional user id.

    Each id, when given, must follow `CONTEXT_ID_RULE`; an invalid id is refused
    (`ValidationError` naming ``client_id`` or ``user_id``), never resolved as if absent.
    """

    client_id: str | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        if self.client_id is not None:
            check_context_id(self.client_id, field="client_id")
        if self.user_id is not None:
            check_context_id(self.user_id, field="user_id")
