"""The specification's own examples work as they are, through the command line.

The example definition validates, syncs and lists its method as not callable (calling it
is ``error[method_not_bound]``, before anything is sent); the example instance, with
credentials in the specification's shape, is applied, resolved, called against a local
server standing in for Xero and exported again, all without an edit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_integrations.db import Database

from .clirunner import Cli, assert_one_error, counts, use_definitions, write
from .provider import FakeProvider, Reply
from .spec import (
    EXAMPLE_DEFINITION,
    EXAMPLE_INSTANCE,
    EXAMPLE_OAUTH2_CREDENTIALS,
    as_json,
    json_blocks_after,
    spec_document,
    strip_comments,
)
from .test_binding import XERO_CREATED_INVOICE

XERO_API = "https://api.xero.com"
SECRETS = ("AT-spec-example-1", "RT-spec-example-1")


@pytest.fixture
def cli(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cli]:
    runner = Cli(capsys, monkeypatch, SECRETS)
    yield runner
    runner.assert_no_secrets()


@pytest.fixture
def spec_xero(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The specification's example saved verbatim as the team's ``xero.json``."""
    folder = use_definitions(
        monkeypatch, tmp_path / "definitions", {"xero.json": EXAMPLE_DEFINITION}
    )
    return folder / "xero.json"


class _ToLocal(httpx.BaseTransport):
    """Sends what is addressed to the Xero API to the local server instead."""

    def __init__(self, local: str) -> None:
        self._local = httpx.URL(local)
        self._inner = httpx.HTTPTransport()
        self.seen: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url)
        assert request.url.host == "api.xero.com", request.url
        request.url = request.url.copy_with(
            scheme=self._local.scheme, host=self._local.host, port=self._local.port
        )
        request.headers["Host"] = f"{self._local.host}:{self._local.port}"
        return self._inner.handle_request(request)


@pytest.fixture
def xero_server(provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> _ToLocal:
    """Route the package's HTTP clients to the local server standing in for Xero."""
    transport = _ToLocal(provider.url)

    class Client(httpx.Client):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(transport=transport, **kwargs)

    monkeypatch.setattr(httpx, "Client", Client)
    return transport


def test_the_held_examples_are_the_specifications() -> None:
    text = spec_document()
    if text is None:
        pytest.skip("the shared specifications are not beside this checkout")
    definition = json_blocks_after(text, "## Example Integration Definition")
    instance = strip_comments(json_blocks_after(text, "## Example Integration Instance"))
    assert definition.strip() == EXAMPLE_DEFINITION.strip()
    assert instance.strip() == EXAMPLE_INSTANCE.strip()
    schema = json.loads(json_blocks_after(text, "**JSON Schema (credentials field):**"))
    example = as_json(EXAMPLE_OAUTH2_CREDENTIALS)
    assert set(example["oauth2"]) <= set(schema["properties"]["oauth2"]["properties"])


def test_example_definition_validates_syncs_and_lists(
    cli: Cli, spec_xero: Path, db: Database
) -> None:
    assert cli.ok("definitions", "validate", str(spec_xero)).out.strip() == (
        "1 definition(s) valid: xero"
    )
    assert cli.ok("definitions", "sync").out.strip() == (
        "created 3, updated 0, unchanged 0, removed 0"
    )
    listed = {d["integrationId"]: d for d in cli.json("definitions", "list")}
    assert listed["xero"]["source"] == str(spec_xero)
    assert listed["xero"]["methods"] == [
        {"id": "create_invoice", "name": "Create Invoice", "callable": False}
    ]
    table = cli.ok("definitions", "list").out
    assert any(
        line.split()[0] == "xero" and line.endswith("create_invoice")
        for line in table.splitlines()[2:]
    )
    stored = {d["integrationId"]: d for d in cli.json("definitions", "stored")}
    assert stored["xero"]["name"] == "Xero Accounting"
    assert stored["xero"]["version"] == "1.0.0"
    assert cli.ok("definitions", "sync").out.strip() == (
        "created 0, updated 0, unchanged 3, removed 0"
    )


def test_calling_a_method_without_binding_is_method_not_bound(
    cli: Cli, spec_xero: Path, tmp_path: Path, provider: FakeProvider, xero_server: _ToLocal
) -> None:
    cli.ok("definitions", "sync")
    # an expired token with a refresh token and a client: nothing may be refreshed either
    expired = {
        "oauth2": {
            **as_json(EXAMPLE_OAUTH2_CREDENTIALS)["oauth2"],
            "expires_at": "2020-01-01T00:00:00Z",
            "client_id": "client-1",
            "client_secret": "CS-spec-example-1",
        }
    }
    cli.secrets.append("CS-spec-example-1")
    document = {**as_json(EXAMPLE_INSTANCE), "credentials": expired}
    cli.ok("instances", "apply", write(tmp_path, "xero_main.json", document))
    before = len(cli.json("audit", "tail", "-n", "1000"))
    result = cli(
        "call",
        "xero.create_invoice",
        "--input",
        json.dumps({"contact_id": "c1", "line_items": [{"description": "x"}]}),
    )
    assert_one_error(result, "method_not_bound", "'xero.create_invoice'", "not callable")
    assert xero_server.seen == [] and provider.requests == []
    actions = [r["action"] for r in cli.json("audit", "tail", "-n", "1000")[before:]]
    assert "credentials.decrypt" not in actions and "oauth.refresh" not in actions


def test_example_instance_applies_resolves_calls_and_exports(
    cli: Cli, tmp_path: Path, db: Database, provider: FakeProvider, xero_server: _ToLocal
) -> None:
    cli.ok("definitions", "sync")
    document = {**as_json(EXAMPLE_INSTANCE), "credentials": as_json(EXAMPLE_OAUTH2_CREDENTIALS)}
    applied = cli.ok("instances", "apply", write(tmp_path, "xero_main.json", document))
    assert applied.out.splitlines() == ["created   xero_main", "created 1, updated 0, unchanged 0"]

    shown = cli.json("instances", "show", "xero_main")
    expected = {k: v for k, v in as_json(EXAMPLE_INSTANCE).items() if k != "credentials"}
    assert {k: shown[k] for k in expected} == expected
    assert "oauth2" in shown["credentials"] and "keyId" in shown["credentials"]
    assert shown["tokenExpiresAt"].startswith("2030-01-01T00:00:00")

    resolved = cli.json("instances", "resolve", "xero")
    assert resolved["chosen"] == "xero_main"

    provider.reply("PUT", "/api.xro/2.0/Invoices", Reply(200, XERO_CREATED_INVOICE))
    out = cli.json(
        "call",
        "xero.create_invoice",
        "--input",
        json.dumps(
            {
                "contact_id": "ed255415-e141-4150-aab7-89c3bbbb851c",
                "line_items": [{"description": "Consulting", "quantity": 2, "unit_amount": 150}],
            }
        ),
    )
    assert out["invoice_number"] == "INV-0007"
    (request,) = provider.requests
    assert request.headers["authorization"] == "Bearer AT-spec-example-1"
    assert request.headers["xero-tenant-id"] == "xyz123"
    assert request.json()["Invoices"][0]["LineItems"] == [
        {"Description": "Consulting", "Quantity": 2, "UnitAmount": 150}
    ]
    assert [str(u) for u in xero_server.seen] == [
        f"{XERO_API}/api.xro/2.0/Invoices?summarizeErrors=true"
    ]

    exported = cli.ok("instances", "export", "xero_main").out
    assert json.loads(exported) == {**expected, "credentials": {}}
    before = counts(db)
    again = cli.ok("instances", "apply", "-", stdin=exported)
    assert again.out.splitlines() == ["unchanged xero_main", "created 0, updated 0, unchanged 1"]
    assert counts(db) == before
    # the spec document as it is (credentials {}) keeps the stored credentials
    cli.ok("instances", "apply", "-", stdin=EXAMPLE_INSTANCE)
    assert cli.json("instances", "show", "xero_main")["credentialsVersion"] == 1
