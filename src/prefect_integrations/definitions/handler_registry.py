"""The Python handlers a definition may name: registered ones only.

A definition is data; naming any importable ``module:attribute`` would let a definition
file import (and so run) any installed module, even while it is only being validated.
A method's ``handler`` therefore names a handler registered in the
``prefect_integrations.handlers`` entry-point group, by its entry-point name
(``"gmail.send_message"``) or by the entry point's target
(``"prefect_integrations.handlers.gmail:send_message"``). The package's own handlers are
built in as well, so they are known whether or not the installed metadata is current.

Validation only looks names up here; the handler's module is imported when the method
is first called (`prefect_integrations.definitions.bindings.MethodBinding.handler`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Final

from prefect_integrations.exceptions import quote

__all__ = [
    "HANDLER_GROUP",
    "SHIPPED_HANDLERS",
    "registered_handlers",
    "resolve_handler",
    "unregistered_handler_message",
]

HANDLER_GROUP: Final = "prefect_integrations.handlers"
"""The entry-point group a package registers its method handlers in."""

SHIPPED_HANDLERS: Final[Mapping[str, str]] = MappingProxyType(
    {"gmail.send_message": "prefect_integrations.handlers.gmail:send_message"}
)
"""This package's handlers (as in its ``pyproject.toml``): name to ``module:attribute``."""


@cache
def _entry_point_handlers() -> tuple[tuple[str, str], ...]:
    return tuple((entry.name, entry.value) for entry in entry_points(group=HANDLER_GROUP))


def registered_handlers() -> dict[str, str]:
    """Every registered handler: name to ``module:attribute`` target.

    The shipped handlers, then the ``prefect_integrations.handlers`` entry points; an entry
    point cannot replace a shipped handler's name.
    """
    found = dict(SHIPPED_HANDLERS)
    for name, target in _entry_point_handlers():
        found.setdefault(name, target)
    return found


def resolve_handler(reference: str) -> str | None:
    """The ``module:attribute`` target of the handler ``reference`` names, None if unregistered.

    ``reference`` is a registered name or the exact target of a registered handler.
    """
    handlers = registered_handlers()
    if reference in handlers:
        return handlers[reference]
    return reference if reference in handlers.values() else None


def unregistered_handler_message(reference: str, integration_id: object) -> str:
    """The problem of a definition naming a handler that is not registered."""
    names = ", ".join(sorted(registered_handlers())) or "none"
    owner = f" of definition {quote(integration_id)}" if isinstance(integration_id, str) else ""
    return (
        f"handler {quote(reference)}{owner} is not registered "
        f"(registered handlers: {names}); a handler must be registered in the "
        f"'{HANDLER_GROUP}' entry-point group"
    )
