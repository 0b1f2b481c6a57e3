"""The Xero and Slack descriptions imported at breadth, with the hand-written overlays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_integrations.definitions import collect, shipped_definitions_dir
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.openapi import Overlay, load_overlay

from .openapi_support import OVERLAYS, SPECS, import_with_overlay

needs_specs = pytest.mark.skipif(not SPECS.is_dir(), reason="the descriptions are in shared/specs")

CASES = [
    ("xero", "xero_accounting.yaml", 40, ["create_invoice", "get_invoice", "list_contacts",
                                          "create_contact"]),
    ("slack", "slack_web_openapi_v2.json", 30, ["post_message", "list_channels", "auth_test"]),
]  # fmt: skip


@needs_specs
@pytest.mark.parametrize(("integration", "spec", "minimum", "hand_written"), CASES)
def test_shipped_definition_is_the_import_with_its_overlay(
    integration: str, spec: str, minimum: int, hand_written: list[str]
) -> None:
    """The shipped file is what the import makes of the description and the overlay.

    After editing an overlay, run the import again (README, "Add an integration").
    """
    document = import_with_overlay(integration, spec)
    shipped = json.loads((shipped_definitions_dir() / f"{integration}.json").read_text())
    assert document == shipped
    ids = [m["id"] for m in document["methods"]]
    assert len(ids) >= minimum
    assert ids[: len(hand_written)] == hand_written  # the hand-written ones first
    overlay = load_overlay(OVERLAYS / f"{integration}.overlay.json")
    operations = overlay.settings["operations"]
    for operation, method in zip(operations, document["methods"], strict=True):
        for key, value in overlay.methods.get(operation, {}).items():
            assert method[key] == value, (method["id"], key)  # the overlay's fields win
    scopes = document["oauth2Config"]["scopes"]
    required = {s for m in document["methods"] for s in m.get("requiredScopes", [])}
    assert required <= set(scopes)
    definitions, problems = collect([shipped_definitions_dir() / f"{integration}.json"])
    assert problems == []
    assert len(definitions[0].methods) == len(ids)


@needs_specs
def test_slack_overlay_replaces_classic_scopes() -> None:
    document = import_with_overlay("slack", "slack_web_openapi_v2.json")
    scopes = document["oauth2Config"]["scopes"]
    assert not {"none", "chat:write:bot", "chat:write:user", "files:write:user"} & set(scopes)
    update = next(m for m in document["methods"] if m["id"] == "chat_update")
    assert update["requiredScopes"] == ["chat:write"]
    assert "token" not in update["inputSchema"]["properties"]


def test_overlay_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.overlay.json"
    path.write_text(json.dumps({"import": {"operations": "getInvoice"}}), encoding="utf-8")
    with pytest.raises(ValidationError, match=r"at \$\.import\.operations: 'getInvoice' is not"):
        load_overlay(path)
    path.write_text(json.dumps({"definition": {"methods": []}}), encoding="utf-8")
    with pytest.raises(ValidationError, match=r"at \$\.definition: "):
        load_overlay(path)


def test_overlay_merges_fields_and_scopes() -> None:
    overlay = Overlay(
        definition={"version": "2.0.0", "oauth2Config": {"scopes": ["openid"], "pkce": True}},
        methods={"getThing": {"id": "read_thing"}},
    )
    generated = {"id": "get_thing", "name": "Get thing"}
    assert overlay.method("getThing", generated) == {"id": "read_thing", "name": "Get thing"}
    assert overlay.method("other", generated) is generated
    document = {
        "version": "1.0.0",
        "oauth2Config": {"tokenUrl": "https://t.example", "scopes": ["a", "openid"]},
        "methods": [],
    }
    merged = overlay.apply(document)
    assert merged["version"] == "2.0.0"
    assert merged["oauth2Config"] == {
        "tokenUrl": "https://t.example",
        "scopes": ["openid", "a"],
        "pkce": True,
    }
    assert list(merged)[-1] == "methods"


def test_cli_import_with_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefect_integrations.cli import run

    overlay = {
        "import": {"operations": ["updateWidget", "getWidget"], "omitHeaders": ["tenant-id"]},
        "definition": {"version": "1.3.0", "headers": {"tenant-id": "{{ config.tenant }}"},
                       "configSchema": {"type": "object", "properties": {
                           "tenant": {"type": "string"}}}},
        "methods": {"getWidget": {"id": "read_widget", "requiredScopes": []}},
    }  # fmt: skip
    overlay_path = tmp_path / "widgets.overlay.json"
    overlay_path.write_text(json.dumps(overlay), encoding="utf-8")
    out = tmp_path / "widgets.json"
    spec = Path(__file__).parent / "fixtures" / "openapi" / "widgets.yaml"
    args = ["definitions", "import-openapi", str(spec), "--integration-id", "widgets"]
    code = run([*args, "--overlay", str(overlay_path), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    document = json.loads(out.read_text())
    assert [m["id"] for m in document["methods"]] == ["update_widget", "read_widget"]
    assert document["version"] == "1.3.0"
    assert document["headers"] == {"tenant-id": "{{ config.tenant }}"}
    assert document["oauth2Config"]["scopes"] == ["widgets.write"]  # read_widget needs none
    assert "tenant_id" not in document["methods"][0]["inputSchema"]["properties"]
    assert collect([out])[1] == []
