"""`definitions diff`: what a new version of a definition changes for callers."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from prefect_integrations.cli import run
from prefect_integrations.definitions import shipped_definitions_dir
from prefect_integrations.definitions.diff import (
    actual_bump,
    diff_documents,
    required_bump,
)


def _xero() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        (shipped_definitions_dir() / "xero.json").read_text(encoding="utf-8")
    )
    return document


def _method(document: dict[str, Any], method_id: str) -> dict[str, Any]:
    return next(m for m in document["methods"] if m["id"] == method_id)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(bump, path, message), without the ``method 'id': `` every schema change starts with."""
    return {
        (c.bump, c.path, re.sub(r"^method '[a-z0-9_]+': ", "", c.message))
        for c in diff_documents(old, new)
    }


def test_identical_documents_need_no_bump() -> None:
    assert diff_documents(_xero(), _xero()) == []
    assert required_bump([]) == "none"


def test_removed_method_is_major_added_method_minor() -> None:
    old, new = _xero(), _xero()
    new["methods"] = [m for m in new["methods"] if m["id"] != "get_invoice"]
    new["methods"].append({**copy.deepcopy(_method(old, "get_invoice")), "id": "get_invoice_v2"})
    changes = _changes(old, new)
    assert ("major", "$.methods[1]", "method 'get_invoice' removed (the path is in OLD)") in changes
    added = f"$.methods[{len(new['methods']) - 1}]"
    assert ("minor", added, "method 'get_invoice_v2' added") in changes
    assert required_bump(diff_documents(old, new)) == "major"


def test_input_changes() -> None:
    old, new = _xero(), _xero()
    inputs = _method(new, "list_contacts")["inputSchema"]
    inputs["properties"]["tenant_group"] = {"type": "string"}
    inputs["required"] = ["tenant_group"]
    inputs["properties"]["page_size"]["maximum"] = 100  # was 1000
    inputs["properties"]["note"] = {"type": "string"}
    del inputs["properties"]["search_term"]
    changes = _changes(old, new)
    base = "$.methods[2].inputSchema.properties"
    assert ("major", f"{base}.tenant_group", "new required input") in changes
    assert ("major", f"{base}.page_size", "maximum 1000 -> 100") in changes
    assert ("minor", f"{base}.note", "optional input added") in changes
    assert ("major", f"{base}.search_term", "input removed") in changes
    # each line names its method: the paths of OLD and NEW can point at different ones
    messages = {c.message for c in diff_documents(old, new)}
    assert "method 'list_contacts': new required input" in messages


def test_input_widening_is_minor_and_narrowing_major() -> None:
    old, new = _xero(), _xero()
    status = _method(new, "create_invoice")["inputSchema"]["properties"]["status"]
    status["enum"] = ["DRAFT", "SUBMITTED", "AUTHORISED", "VOIDED"]
    assert required_bump(diff_documents(old, new)) == "minor"
    status["enum"] = ["DRAFT"]
    changes = _changes(old, new)
    where = "$.methods[0].inputSchema.properties.status"
    assert ("major", where, "enum no longer has 'AUTHORISED', 'SUBMITTED'") in changes
    _method(new, "create_invoice")["inputSchema"]["properties"]["reference"]["type"] = "integer"
    assert ("major", "$.methods[0].inputSchema.properties.reference",
            "type narrowed: no longer string") in _changes(old, new)  # fmt: skip


def test_output_changes() -> None:
    old, new = _xero(), _xero()
    output = _method(new, "get_invoice")["outputSchema"]
    del output["properties"]["reference"]
    output["required"].remove("total")
    output["properties"]["type"]["enum"].append("QUOTE")
    output["properties"]["status"]["enum"].remove("VOIDED")
    output["properties"]["paid_at"] = {"type": "string"}
    changes = _changes(old, new)
    base = "$.methods[1].outputSchema.properties"
    assert ("major", f"{base}.reference", "output field removed") in changes
    assert ("major", f"{base}.total", "output field no longer always present") in changes
    assert ("major", f"{base}.type", "enum now also has 'QUOTE'") in changes  # callers meet more
    assert ("patch", f"{base}.status", "enum no longer has 'VOIDED'") in changes  # fewer: safe
    assert ("minor", f"{base}.paid_at", "output field added") in changes


def test_scopes_config_and_bindings() -> None:
    old, new = _xero(), _xero()
    _method(new, "get_invoice")["requiredScopes"].append("accounting.journals.read")
    new["oauth2Config"]["scopes"].append("accounting.journals.read")
    new["configSchema"]["properties"]["region"] = {"type": "string"}
    new["configSchema"]["required"].append("region")
    _method(new, "get_invoice")["http"]["path"] = "/Invoices/{{ inputs.invoice_id }}/"
    changes = _changes(old, new)
    required = "method 'get_invoice' now requires scope 'accounting.journals.read'"
    assert ("major", "$.methods[1].requiredScopes", required) in changes
    assert (
        "minor",
        "$.oauth2Config.scopes",
        "scope 'accounting.journals.read' requested",
    ) in changes
    assert ("major", "$.configSchema.properties.region", "new required config") in changes
    assert ("patch", "$.methods[1].http", "http changed") in changes


@pytest.mark.parametrize(
    ("old", "new", "bump"),
    [
        ("1.1.1", "2.0.0", "major"),
        ("1.1.1", "1.2.0", "minor"),
        ("1.1.1", "1.1.2", "patch"),
        ("1.1.1", "1.1.1", "none"),
        ("1.1.1", "1.0.9", None),
        ("1.1", "1.2.0", None),
    ],
)
def test_actual_bump(old: str, new: str, bump: str | None) -> None:
    assert actual_bump(old, new) == bump


def test_cli_exit_code_says_whether_the_version_bump_is_enough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = _xero(), _xero()
    new["methods"] = [m for m in new["methods"] if m["id"] != "create_contact"]
    major, minor, _ = (int(part) for part in old["version"].split("."))
    new["version"] = f"{major}.{minor + 1}.0"
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(old), encoding="utf-8")
    new_path.write_text(json.dumps(new), encoding="utf-8")
    assert run(["definitions", "diff", str(old_path), str(new_path)]) == 3
    out = capsys.readouterr().out
    assert "major  $.methods[3]: method 'create_contact' removed" in out
    assert "minimum version bump: major" in out
    assert f"version {old['version']} -> {new['version']} (minor): NOT enough" in out

    new["version"] = f"{major + 1}.0.0"
    new_path.write_text(json.dumps(new), encoding="utf-8")
    assert run(["definitions", "diff", "--json", str(old_path), str(new_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requiredBump"] == "major" and report["versionBump"] == "major"
    assert report["enough"] is True

    assert run(["definitions", "diff", str(tmp_path / "nope.json"), str(new_path)]) == 1
