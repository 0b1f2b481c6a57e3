"""The `IntegrationInstance` block type as Prefect shows it: logo, documentation, example.

The last test opens a block's page in Prefect's UI in a real browser (the system package
``chromium`` driven by playwright); it is skipped where chromium is not installed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from pathlib import Path

import prefect
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_integrations.blocks import IntegrationInstance
from prefect_integrations.maintenance.service import local_prefect_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

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


@pytest.mark.skipif(CHROMIUM is None, reason="the system package chromium is not installed")
def test_the_block_page_in_prefect_ui_shows_an_example_that_loads_it(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with local_prefect_server(tmp_path, port=port) as api_url:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            block_id = IntegrationInstance(instance_id="xero_acme", integration_id="xero").save(
                "xero-acme"
            )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"{api_url.removesuffix('/api')}/blocks/block/{block_id}")
                snippet = page.locator(".block-type-snippet").first
                snippet.wait_for(timeout=120_000)
                shown = snippet.inner_text()
                links = [a.get_attribute("href") for a in page.locator("a").all()]
                images = [i.get_attribute("src") for i in page.locator("img").all()]
            finally:
                browser.close()
    assert 'block = IntegrationInstance.load("xero-acme")' in shown
    assert "BLOCK_NAME" not in shown
    assert str(IntegrationInstance._documentation_url) in links  # "View Docs"
    assert str(IntegrationInstance._logo_url) in images
