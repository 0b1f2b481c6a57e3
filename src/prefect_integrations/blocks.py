"""The `IntegrationInstance` Prefect block: a reference to one stored instance.

The block holds only the instance id (and, for display, its integration): credentials
stay encrypted in PostgreSQL and never enter Prefect's storage. Registered through the
``prefect.collections`` entry point, so a Prefect server lists it without a manual step.

    from prefect_integrations.blocks import IntegrationInstance

    xero = IntegrationInstance.load("xero-main")
    invoice = xero.call("create_invoice", {"contact_id": "...", "line_items": [...]})
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl

from prefect_integrations.client import AsyncIntegrationClient, IntegrationClient
from prefect_integrations.context import current_context
from prefect_integrations.exceptions import InstanceNotFound
from prefect_integrations.runtime import runtime
from prefect_integrations.store.instances import get_instance

__all__ = ["IntegrationInstance", "block_name", "naming_block"]


def block_name(instance_id: str) -> str:
    """The block document name of an instance: lowercase letters, digits and dashes."""
    name = re.sub(r"[^a-z0-9-]+", "-", instance_id.lower()).strip("-")
    return name or "instance"


class IntegrationInstance(Block):
    """A connection to an external service (Xero, Gmail, Slack, ...).

    The instance is stored by prefect-integrations, its credentials encrypted in
    PostgreSQL. Calls go through prefect-integrations' client: inputs and outputs are
    checked against the definition's JSON Schemas, failures are retried and every call
    is audited.
    """

    _block_type_name = "Integration Instance"
    _block_type_slug = "integration-instance"
    # Prefect's own Secret block's logo, pinned to a commit of Prefect's repository: an
    # image that exists (the block type's schema takes an https URL, not a data: URI).
    _logo_url = HttpUrl(
        "https://raw.githubusercontent.com/PrefectHQ/prefect/"
        "420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/assets/block-logos/secret.png"
    )
    # The package has no documentation site: Prefect's page on blocks (loading, using and
    # saving them), the link Prefect's own Secret block gives.
    _documentation_url = HttpUrl("https://www.prefect.io/docs/latest/develop/blocks")
    _description = (
        "A reference to an integration instance (one connected account) stored by "
        "prefect-integrations. Credentials stay encrypted in its PostgreSQL store. "
        "Its methods and their inputs: prefect-integrations definitions show INTEGRATION."
    )
    # Prefect's UI puts the block document's name in place of BLOCK_NAME (once, in the
    # ```python fence), so the example on the page of `xero-acme` loads "xero-acme".
    _code_example = """
```python
from prefect_integrations.blocks import IntegrationInstance

block = IntegrationInstance.load("BLOCK_NAME")
output = block.call("METHOD", {"input_name": "value"})  # or: await block.acall(...)
# or pass it to a generated task: xero.create_invoice(..., instance=block)
```
"""

    instance_id: str = Field(description="Id of the stored instance, e.g. xero_main.")
    integration_id: str | None = Field(
        default=None, description="Integration of the instance (informational), e.g. xero."
    )

    def get_client(self) -> IntegrationClient:
        """The process-wide pooled client of this instance.

        `InstanceNotFound` naming the block when its instance does not exist.
        """
        with naming_block(self):
            return runtime().client(self._existing_id())

    def get_async_client(self) -> AsyncIntegrationClient:
        """A new asynchronous client of this instance; close it with ``aclose()``.

        `InstanceNotFound` naming the block when its instance does not exist.
        """
        with naming_block(self):
            return runtime().async_client(self._existing_id())

    def call(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call a method of this instance and return its validated output.

        `InstanceNotFound` naming the block when its instance does not exist.
        """
        with naming_block(self):
            return runtime().client(self._visible_id()).call(method_id, inputs)

    async def acall(self, method_id: str, inputs: Mapping[str, Any] | None = None) -> Any:
        """Call a method of this instance asynchronously."""
        with naming_block(self):
            instance_id = await asyncio.to_thread(self._visible_id)
            async with runtime().async_client(instance_id) as client:
                return await client.call(method_id, inputs)

    def test(self) -> dict[str, Any]:
        """Check this instance's connection now with its health check; record the status.

        Returns the result (``passed``, ``reason``, ``status_code``, ``duration_ms``,
        ``state``); an instance that works again becomes active at once.
        """
        from prefect_integrations.maintenance.connection_check import check_connection

        rt = runtime()
        with naming_block(self):
            result = check_connection(
                rt.db, rt.registry, rt.keyring, self._visible_id(), actor=rt.actor
            )
        return {
            "passed": result.reason in ("ok", "not_applicable"),
            "reason": result.reason,
            "status_code": result.status_code,
            "duration_ms": round(result.duration_ms, 1),
            "state": result.state_after,
            "error": result.error,
        }

    def _visible_id(self) -> str:
        """The instance id, once checked to be visible in the caller's context, if any.

        Inside `integration_context` a block is an explicit instance id like any other:
        an instance of another tenant is "not found". Outside any context the block is
        the operator's own reference and is used as it is.
        """
        context = current_context()
        if context.client_id is None and context.user_id is None:
            return self.instance_id
        rt = runtime()
        integration_id = self.integration_id or self._stored_integration()
        try:
            return rt.resolve(integration_id, context, self.instance_id)
        except InstanceNotFound:
            stored = self._stored_integration()  # the block's integration may be stale
            if stored == integration_id:
                raise
            return rt.resolve(stored, context, self.instance_id)

    def _existing_id(self) -> str:
        """`_visible_id`, checked to exist outside any context too (resolution checks inside)."""
        context = current_context()
        if context.client_id is None and context.user_id is None:
            self._stored_integration()
        return self._visible_id()

    def _stored_integration(self) -> str:
        with runtime().transaction(f"read instance '{self.instance_id}'") as session:
            found = get_instance(session, self.instance_id)
        if found is None:
            raise InstanceNotFound(self.instance_id)
        return found.integration_id


@contextmanager
def naming_block(block: object) -> Iterator[None]:
    """Re-raise an `InstanceNotFound` about ``block``'s instance naming the block document.

    A block saved in the Prefect UI (or with ``save``) may name an instance that does not
    exist; the error then says which block to correct. Anything else, and a block that was
    never saved (no document name), passes through unchanged.
    """
    try:
        yield
    except InstanceNotFound as exc:
        name = getattr(block, "_block_document_name", None)
        instance_id = getattr(block, "instance_id", None)
        if not isinstance(name, str) or exc.instance_id != instance_id or exc.block is not None:
            raise
        slug = block.get_block_type_slug() if isinstance(block, Block) else None
        reference = f"{slug}/{name}" if slug else name
        raise InstanceNotFound(exc.instance_id, block=reference) from None
