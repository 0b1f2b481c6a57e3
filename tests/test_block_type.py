"""The `IntegrationInstance` block type as Prefect shows it: logo, documentation, example."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import prefect
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client

from prefect_integrations.blocks import IntegrationInstance

#: The code block Prefect's UI shows and the substitution it makes on a block's page: the
#: first BLOCK_NAME of the ```python fence becomes the document's name.
UI_FENCE = re.compile(r"```python([\S\s]*?)```")
UI_SUBSTITUTION = "replace(`BLOCK_NAME`,"


def _as_the_ui_shows(code_example: str, document_name: str) -> str:
    match = UI_FENCE.search(code_example)
    assert match is not None, code_example
    return match.group(1).replace("BLOCK_NAME", document_name, 1).strip()


def test_logo_and_documentation_are_those_prefect_gives_its_own_secret_block() -> None:
    # Prefect's own block types show these: they exist as long as Prefect's own do, and the
    # logo is pinned to a commit of Prefect's repository, so it cannot move
    assert str(IntegrationInstance._logo_url) == str(Secret._logo_url)
    assert re.search(r"/PrefectHQ/prefect/[0-9a-f]{40}/", str(IntegrationInstance._logo_url))
    assert str(IntegrationInstance._documentation_url) == str(Secret._documentation_url)


def test_code_example_names_the_block_it_is_on() -> None:
    example = IntegrationInstance.get_code_example()
    assert example is not None
    assert example.count("BLOCK_NAME") == 1
    shown = _as_the_ui_shows(example, "xero-acme")
    assert 'IntegrationInstance.load("xero-acme")' in shown
    assert "BLOCK_NAME" not in shown


def test_both_prefect_uis_put_the_document_name_in_the_code_example() -> None:
    server = Path(prefect.__file__).parent / "server"
    for ui in ("ui", "ui-v2"):
        bundles = [
            path
            for path in (server / ui / "assets").glob("*.js")
            if UI_SUBSTITUTION in path.read_text(encoding="utf-8", errors="replace")
        ]
        assert bundles, f"Prefect's {ui} no longer substitutes BLOCK_NAME"


@pytest.mark.usefixtures("harness")
def test_a_saved_document_shows_its_own_name_in_the_example() -> None:
    IntegrationInstance(instance_id="xero_acme", integration_id="xero").save(
        "xero-acme", overwrite=True
    )

    async def read() -> tuple[str | None, str | None, str | None]:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                "xero-acme", block_type_slug="integration-instance"
            )
            block_type = document.block_type
            assert block_type is not None
            logo = block_type.logo_url
            return block_type.code_example, str(logo) if logo else None, document.name

    code_example, logo, name = asyncio.run(read())
    assert code_example is not None and name == "xero-acme"
    assert 'IntegrationInstance.load("xero-acme")' in _as_the_ui_shows(code_example, name)
    assert logo == str(Secret._logo_url)
