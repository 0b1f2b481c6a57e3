"""One way for tests to create an instance.

``make_instance`` wraps ``instances.create_instance`` with the defaults tests share: the
name is the instance id, the scope is global, the actor is ``"tests"``. Pass a
``Database`` to create in a transaction of its own, or a ``Session`` to create inside the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import Scope, parse_scope
from prefect_integrations.store import instances
from prefect_integrations.store.instances import Instance


def api_key(key: str) -> dict[str, Any]:
    """Credentials for an integration authenticated by an API key."""
    return {"apikey": {"key": key}}


def make_instance(
    session_or_db: Session | Database,
    registry: Registry,
    keyring: Keyring | None,
    instance_id: str,
    integration_id: str,
    *,
    scope: Scope | str = "global",
    config: Mapping[str, Any] | None = None,
    credentials: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
    name: str | None = None,
    description: str | None = None,
    actor: str = "tests",
) -> Instance:
    """Create ``instance_id`` of ``integration_id``; ``scope`` may be text (``"client:acme"``)."""
    if isinstance(session_or_db, Database):
        with session_or_db.transaction() as session:
            return make_instance(
                session,
                registry,
                keyring,
                instance_id,
                integration_id,
                scope=scope,
                config=config,
                credentials=credentials,
                status=status,
                name=name,
                description=description,
                actor=actor,
            )
    return instances.create_instance(
        session_or_db,
        registry,
        keyring,
        instance_id=instance_id,
        integration_id=integration_id,
        name=instance_id if name is None else name,
        scope=parse_scope(scope) if isinstance(scope, str) else scope,
        description=description,
        config=config,
        credentials=credentials,
        status=status,
        actor=actor,
    )


def make_echo(
    session_or_db: Session | Database,
    registry: Registry,
    keyring: Keyring,
    provider_url: str,
    instance_id: str,
    *,
    scope: Scope | str = "global",
) -> Instance:
    """An ``echo`` instance served by the local provider under ``/<instance_id>``.

    Its API key is ``key-of-<instance_id>``, so a request shows which instance sent it.
    """
    return make_instance(
        session_or_db,
        registry,
        keyring,
        instance_id,
        "echo",
        scope=scope,
        config={"base_url": f"{provider_url}/{instance_id}"},
        credentials=api_key(f"key-of-{instance_id}"),
    )


def echo_instance(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    provider: Any,
    instance_id: str,
    credentials: Mapping[str, Any],
) -> None:
    """An instance of the test ``echo`` integration whose base URL is ``provider``'s, under
    a path of its own (``/<instance_id>``)."""
    make_instance(
        db,
        registry,
        keyring,
        instance_id,
        "echo",
        config={"base_url": f"{provider.url}/{instance_id}"},
        credentials=credentials,
    )
