"""The caller's context (client id, user id) for instance resolution inside flows.

    with integration_context(client_id="acme", user_id="u1"):
        xero.create_invoice(contact_id=..., line_items=[...])

Contexts nest: an inner context overrides only the ids it sets. Prefect copies context
variables into the threads and tasks it starts, so tasks submitted inside the block see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect_integrations.scope import Context

__all__ = ["current_context", "integration_context"]

_current: ContextVar[Context] = ContextVar(
    "prefect_integrations_context",
    default=Context(),  # noqa: B039 - Context is a frozen dataclass
)


def current_context() -> Context:
    """The context in force (empty: global instances only)."""
    return _current.get()


@contextmanager
def integration_context(
    *, client_id: str | None = None, user_id: str | None = None
) -> Iterator[Context]:
    """Set the client and/or user id that instance resolution uses within the block.

    Each id given must follow `~prefect_integrations.scope.CONTEXT_ID_RULE`; an invalid
    one (surrounding spaces, too long, invisible or look-alike characters) raises
    `ValidationError` naming ``client_id`` or ``user_id`` before the block runs.
    """
    outer = _current.get()
    inner = Context(
        client_id=client_id if client_id is not None else outer.client_id,
        user_id=user_id if user_id is not None else outer.user_id,
    )
    token = _current.set(inner)
    try:
        yield inner
    finally:
        _current.reset(token)
