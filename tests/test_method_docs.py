"""What people read about a method: the task's docstring, `definitions show`, `--version`."""

from __future__ import annotations

import json
import pydoc
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.definitions import load_registry
from prefect_integrations.method_docs import describe_method, method_doc
from prefect_integrations.tasks import tasks_for


@pytest.fixture(autouse=True)
def shipped_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", "")
    reset_runtime()
    yield
    reset_runtime()


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_of_a_task_lists_parameters_rules_and_outputs() -> None:
    plain = pydoc.TextDoc()  # what help() prints, without the terminal's bold
    text = pydoc.render_doc(tasks_for("xero").create_invoice, renderer=plain)
    for expected in [
        "Create one sales invoice (or bill) for an existing contact (PUT /Invoices).",
        "contact_id (str, required)",
        "ContactID of the customer (or supplier for a bill).",
        "format 'uuid'",
        "line_items (list[dict], required)",
        "minItems 1",
        "line_items[].quantity (float, required)",
        "exclusiveMinimum 0",
        "type (Literal['ACCREC', 'ACCPAY'], default 'ACCREC')",
        "currency_code (str, optional)",
        "pattern '^[A-Z]{3}$'",
        "pattern '^[!-~]+$'; minLength 1; maxLength 128",
        "instance (str | IntegrationInstance, optional)",
        "Returns (dict):",
        "invoice_id (str, required)",
        "status (Literal['DRAFT', 'SUBMITTED', 'DELETED', 'AUTHORISED', 'PAID', 'VOIDED'], "
        "required)",
        "Required scopes: accounting.transactions",
    ]:
        assert expected in text, expected


def test_every_parameter_and_output_field_of_every_shipped_method_is_documented() -> None:
    import inspect

    for definition in load_registry():
        for method in definition.methods.values():
            task = tasks_for(definition.id).__dict__[method.id]
            doc = task.fn.__doc__
            assert doc == method_doc(definition.id, method.raw)
            for name in inspect.signature(task.fn).parameters:
                assert f"\n    {name} (" in doc, (method.qualified_name, name)
            for key in method.output_schema.get("properties", {}):
                assert f"\n    {key} (" in doc, (method.qualified_name, key)


def test_input_rules_and_renamed_parameters_are_documented() -> None:
    slack = load_registry().get("slack").method("post_message")
    assert "Input rules:\n    at least one of 'text', 'blocks' is required" in method_doc(
        "slack", slack.raw
    )
    odd: dict[str, Any] = {
        "id": "send",
        "name": "Send",
        "inputSchema": {
            "type": "object",
            "required": ["class"],
            "additionalProperties": False,
            "properties": {
                "class": {"type": "string", "enum": ["a", "b"], "description": "Kind."},
                "when": {"type": "string", "format": "date-time", "default": "now"},
            },
        },
        "outputSchema": {"type": "object"},
    }
    text = method_doc("odd", odd)
    assert "class_ (Literal['a', 'b'], required, input 'class')\n        Kind." in text
    assert "when (str, default 'now')\n        format 'date-time'" in text
    assert "Returns (dict[str, Any]):\n    (no declared fields)" in text
    described = describe_method("odd", odd)
    assert described["parameters"][0] == {
        "name": "class_",
        "type": "Literal['a', 'b']",
        "required": True,
        "property": "class",
        "description": "Kind.",
        "constraints": {"enum": ["a", "b"]},
    }
    assert described["parameters"][1]["default"] == "now"


def test_definitions_show_prints_the_docstring_of_a_method(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "definitions", "show", "xero", "create_invoice")
    assert code == 0
    assert out == tasks_for("xero").create_invoice.fn.__doc__ + "\n"


def test_definitions_show_lists_every_method_of_an_integration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "definitions", "show", "slack")
    assert code == 0
    assert out.startswith("slack: Slack ")
    methods = list(load_registry().get("slack").methods)
    assert [line[3:] for line in out.splitlines() if line.startswith("== ")] == [
        f"slack.{m}" for m in methods
    ]
    assert "channel (str, required)" in out


def test_definitions_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "definitions", "show", "xero", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["integrationId"] == "xero"
    assert shown["documentationUrl"].startswith("https://developer.xero.com/")
    create = next(m for m in shown["methods"] if m["id"] == "create_invoice")
    by_name = {p["name"]: p for p in create["parameters"]}
    assert by_name["currency_code"] == {
        "name": "currency_code",
        "type": "str",
        "required": False,
        "description": "ISO 4217 currency code; defaults to the organisation's base currency.",
        "constraints": {"pattern": "^[A-Z]{3}$"},
    }
    assert by_name["status"]["default"] == "DRAFT"
    assert by_name["line_items[].description"]["constraints"] == {"minLength": 1}
    outputs = {f["name"]: f for f in create["output"]["fields"]}
    assert outputs["total"]["type"] == "float"
    code, out, _ = _run(capsys, "definitions", "show", "xero", "create_invoice", "--json")
    assert json.loads(out) == create


def test_definitions_show_names_what_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "definitions", "show", "xero", "create_invoce")
    assert code == 1
    assert "Integration 'xero' has no method 'create_invoce' (known: create_invoice," in err
    code, _, err = _run(capsys, "definitions", "show", "xeor")
    assert code == 1
    assert err.startswith("error[unknown_integration]: ")
    assert "xeor" in err


def test_version(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0
    assert out == f"prefect-integrations {version('prefect-integrations')}\n"
    code, out, _ = _run(capsys, "--help")
    assert "--version" in out
