"""`import_openapi` and `definitions import-openapi`: descriptions to valid definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from prefect_integrations import binding
from prefect_integrations.cli import run
from prefect_integrations.definitions import collect, load_registry, shipped_definitions_dir
from prefect_integrations.exceptions import ValidationError
from prefect_integrations.openapi import import_openapi, snake_case

FIXTURES = Path(__file__).parent / "fixtures" / "openapi"
WIDGETS = FIXTURES / "widgets.yaml"
PETS = FIXTURES / "pets-v2.json"
SPECS = Path(__file__).resolve().parent.parent.parent / "shared" / "specs"


def _method(document: dict[str, Any], method_id: str) -> dict[str, Any]:
    return next(m for m in document["methods"] if m["id"] == method_id)


def _loaded(document: dict[str, Any], tmp_path: Path) -> Any:
    """The document written to a file and loaded by the package's own loader."""
    path = tmp_path / f"{document['integrationId']}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    _, problems = collect([path])
    assert problems == []
    return load_registry([path], include_shipped=False).get(document["integrationId"])


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("getInvoiceAsPdf", "get_invoice_as_pdf"),
        ("chat_postMessage", "chat_post_message"),
        ("xero-tenant-id", "xero_tenant_id"),
        ("InvoiceID", "invoice_id"),
        ("If-Modified-Since", "if_modified_since"),
        ("2fa", "x_2fa"),
    ],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


def test_openapi3_top_level_auth_and_scopes(tmp_path: Path) -> None:
    result = import_openapi(WIDGETS, integration_id="widgets", omit_headers=["tenant-id"])
    doc = result.document
    assert doc["name"] == "Widgets API"
    assert doc["description"] == "Widgets of one account."
    assert doc["baseUrl"] == "https://eu.widgets.example/v1"  # server variable at its default
    assert doc["authType"] == "oauth2"
    assert doc["oauth2Config"] == {
        "authorizationUrl": "https://login.widgets.example/authorize",
        "tokenUrl": "https://login.widgets.example/token",
        "scopes": ["widgets.read", "widgets.write"],
    }
    assert _method(doc, "get_widget")["requiredScopes"] == ["widgets.read"]  # top-level security
    assert _method(doc, "update_widget")["requiredScopes"] == ["widgets.write"]
    assert set(doc["configSchema"]["properties"]) == {"base_url", "authorization_url", "token_url"}
    _loaded(doc, tmp_path)


def test_inputs_flattened_and_mapped_back(tmp_path: Path) -> None:
    result = import_openapi(WIDGETS, integration_id="widgets", omit_headers=["tenant-id"])
    definition = _loaded(result.document, tmp_path)
    get = definition.method("get_widget")
    assert get.input_schema["required"] == ["widget_id"]
    assert "tenant_id" not in get.input_schema["properties"]  # sent by the definition
    assert get.input_schema["properties"]["include_parts"]["default"] is False  # "false" read
    request, _ = binding.prepare(
        definition,
        get,
        {"widget_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "fields": ["a", "b"]},
        {},
    )
    assert request.url.path == "/v1/widgets/0f8fad5b-d9cb-469f-a165-70867728950e"
    assert parse_qs(request.url.query.decode()) == {"includeParts": ["false"], "fields": ["a,b"]}

    update = definition.method("update_widget")
    properties = update.input_schema["properties"]
    assert set(properties) == {
        "widget_id",
        "idempotency_key",
        "name",
        "colour_code",
    }  # no readOnly Id
    assert update.input_schema["required"] == ["widget_id", "name"]
    assert properties["colour_code"] == {"type": ["string", "null"], "enum": ["RED", "BLUE", None]}
    request, _ = binding.prepare(
        definition, update, {"widget_id": "w1", "name": "Bolt", "idempotency_key": "k-1"}, {}
    )
    assert request.method == "PUT"
    assert json.loads(request.content) == {"Name": "Bolt"}  # absent inputs left out
    assert request.headers["Idempotency-Key"] == "k-1"
    assert update.output_schema["type"] == "object"  # a 204 has no body
    # a header input takes only what a header can carry, refused before anything is sent
    widget = {"widget_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "name": "Bolt"}
    for bad in ("", " k", "k ", "a\x1fb", "clé", "k" * 4097):
        with pytest.raises(ValidationError) as caught:
            update.validate_input({**widget, "idempotency_key": bad})
        assert caught.value.path == ("idempotency_key",)
    update.validate_input({**widget, "idempotency_key": "a b~!"})


def test_output_schema_converted_with_cycles_cut() -> None:
    result = import_openapi(WIDGETS, integration_id="widgets", operations=["getWidget"])
    output = _method(result.document, "get_widget")["outputSchema"]
    assert "additionalProperties" not in output  # outputs stay open
    props = output["properties"]
    assert "secret" not in props  # writeOnly
    assert props["weight"] == {"type": "number", "exclusiveMinimum": 0, "examples": [1.5]}
    assert props["kind"] == {
        "anyOf": [{"oneOf": [{"type": "string"}, {"type": "integer"}]}, {"type": "null"}]
    }
    assert props["parent"] == {
        "type": "object",
        "description": "Widget: not expanded (cyclic reference)",
    }
    assert "x-internal" in props and "x-vendor" not in output  # a property name, an extension


def test_cycle_depth_expands_a_cycle_again() -> None:
    result = import_openapi(
        WIDGETS, integration_id="widgets", operations=["getWidget"], cycle_depth=2
    )
    parent = _method(result.document, "get_widget")["outputSchema"]["properties"]["parent"]
    assert parent["properties"]["parent"]["description"].endswith("(cyclic reference)")


def test_report_names_what_was_not_converted() -> None:
    result = import_openapi(WIDGETS, integration_id="widgets", omit_headers=["tenant-id"])
    notes = {(n.path, n.message) for n in result.report.notes}
    assert any(
        p
        == (
            "paths",
            "/widgets/{widgetId}/photo",
            "post",
            "requestBody",
            "content",
            "multipart/form-data",
            "schema",
        )
        and "uploadPhoto" in m
        for p, m in notes
    )
    assert any(
        p[:4] == ("paths", "/reports/{name}", "get", "responses") and "application/pdf" in m
        for p, m in notes
    )
    assert [m["id"] for m in result.document["methods"]] == ["get_widget", "update_widget"]


def test_selection_by_tags_and_operations() -> None:
    by_tag = import_openapi(WIDGETS, integration_id="w", tags=["Widgets"])
    assert [m["id"] for m in by_tag.document["methods"]] == ["get_widget", "update_widget"]
    by_id = import_openapi(WIDGETS, integration_id="w", operations=["update_widget"])
    assert [m["id"] for m in by_id.document["methods"]] == ["update_widget"]
    with pytest.raises(ValidationError, match=r"at \$\.paths: no operation with id 'nope'"):
        import_openapi(WIDGETS, integration_id="w", operations=["nope"])


def test_swagger2_query_form_and_apikey(tmp_path: Path) -> None:
    result = import_openapi(PETS, integration_id="pets", omit_parameters=["token"])
    doc = result.document
    assert doc["baseUrl"] == "https://pets.example/api"
    assert doc["authType"] == "apikey"
    assert doc["auth"] == {"apikey": {"in": "header", "name": "X-Api-Key"}}
    definition = _loaded(doc, tmp_path)
    listing = definition.method("pets_list")
    assert set(listing.input_schema["properties"]) == {"tags", "limit"}
    request, _ = binding.prepare(definition, listing, {"tags": ["a", "b"], "limit": 5}, {})
    assert parse_qs(request.url.query.decode()) == {"tags": ["a,b"], "limit": ["5"]}
    add = definition.method("pets_add")
    assert add.input_schema["required"] == ["name"]
    request, _ = binding.prepare(definition, add, {"name": "Rex", "age": 3}, {})
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {"name": ["Rex"], "age": ["3"]}
    pet = add.output_schema["properties"]
    assert pet["owner"] == {"type": ["string", "null"]}
    assert pet["friends"]["items"]["anyOf"][1] == {"type": "null"}
    assert any(
        n.path == ("definitions", "Pet", "properties", "friends", "items")
        for n in result.report.notes
    )


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("openapi: 3.0.0\ninfo: [\n", ".yaml", r"malformed YAML: .* at line 3, column 1"),
        ('{"openapi": "3.0.0",', ".json", r"malformed JSON: .* line 1, column 21"),
        ("openapi: 4.0.0\n", ".yaml", r"at \$\.openapi: unsupported version '4\.0\.0'"),
        ("swagger: '1.2'\n", ".yaml", r"at \$\.swagger: unsupported Swagger version"),
        ("title: nothing\n", ".yaml", r"not an OpenAPI description"),
        (
            "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get:\n"
            "      responses: {'200': {description: ok}}\n"
            "      parameters: [{name: x, in: body}]\n",
            ".yaml",
            r"at \$\.paths\['/a'\]\.get\.parameters\[0\]",
        ),
        (
            "openapi: 3.0.0\ninfo: {title: t, version: '1'}\nservers: [{url: 'https://a.example'}]\n"
            "paths:\n  /a:\n    get:\n      responses:\n"
            "        '200': {$ref: '#/components/responses/gone'}\n",
            ".yaml",
            r"at \$\.paths\['/a'\]\.get\.responses\['200'\]\['\$ref'\]: cannot resolve reference "
            r"'#/components/responses/gone': no such location$",
        ),
    ],
)
def test_malformed_or_unsupported_descriptions(
    tmp_path: Path, text: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"spec{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError, match=message):
        import_openapi(path, integration_id="x")


def test_cli_writes_the_definition_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "widgets.json"
    code = run(
        [
            "definitions",
            "import-openapi",
            str(WIDGETS),
            "--integration-id",
            "widgets",
            "--omit-header",
            "tenant-id",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "not converted: $.paths['/widgets/{widgetId}/photo'].post" in captured.err
    assert "wrote" in captured.err and "2 method(s)" in captured.err
    assert collect([out])[1] == []

    code = run(
        ["definitions", "import-openapi", str(tmp_path / "missing.yaml"), "--integration-id", "x"]
    )
    assert code == 1
    assert "error[validation_error]: OpenAPI description" in capsys.readouterr().err


needs_specs = pytest.mark.skipif(
    not SPECS.is_dir(), reason="the provider descriptions are in shared/specs"
)


@needs_specs
def test_xero_operations_import_and_load(tmp_path: Path) -> None:
    wanted = ["getInvoice", "createInvoices", "getContacts", "getReportProfitAndLoss"]
    result = import_openapi(
        SPECS / "xero_accounting.yaml",
        integration_id="xero",
        operations=wanted,
        omit_headers=["xero-tenant-id"],
    )
    definition = _loaded(result.document, tmp_path)
    assert sorted(definition.methods) == sorted(snake_case(w) for w in wanted)
    create = definition.method("create_invoices")
    assert {"invoices", "summarize_errors", "idempotency_key"} <= set(
        create.input_schema["properties"]
    )
    assert create.required_scopes == ("accounting.transactions",)
    request, _ = binding.prepare(definition, create, {"invoices": [{"Type": "ACCREC"}]}, {})
    assert request.url.path == "/api.xro/2.0/Invoices"
    assert json.loads(request.content) == {"Invoices": [{"Type": "ACCREC"}]}


@needs_specs
def test_slack_chat_methods_import_and_load(tmp_path: Path) -> None:
    result = import_openapi(
        SPECS / "slack_web_openapi_v2.json",
        integration_id="slack",
        tags=["chat"],
        omit_parameters=["token"],
    )
    definition = _loaded(result.document, tmp_path)
    post = definition.method("chat_post_message")
    assert "token" not in post.input_schema["properties"]
    assert post.input_schema["required"] == ["channel"]
    assert definition.oauth2 is not None
    assert definition.oauth2.token_url == "https://slack.com/api/oauth.access"


def test_an_idempotency_key_header_marks_the_method(tmp_path: Path) -> None:
    """A write that takes an idempotency key is retried only when the call carries one."""
    header = "[{name: Idempotency-Key, in: header, schema: {type: string}}]"
    spec = tmp_path / "keys.yaml"
    spec.write_text(
        "openapi: 3.0.0\ninfo: {title: t, version: '1'}\nservers: [{url: 'https://a.example'}]\n"
        "paths:\n  /things:\n"
        f"    put:\n      operationId: createThing\n      parameters: {header}\n"
        "      responses: {'200': {description: ok}}\n"
        f"    post:\n      operationId: addThing\n      parameters: {header}\n"
        "      responses: {'200': {description: ok}}\n"
        "    get:\n      operationId: listThings\n      responses: {'200': {description: ok}}\n",
        encoding="utf-8",
    )
    methods = {m["id"]: m for m in import_openapi(spec, integration_id="t").document["methods"]}
    assert methods["create_thing"]["idempotent"] is False  # a PUT would count as idempotent
    assert methods["create_thing"]["idempotencyKeyHeader"] == "Idempotency-Key"
    assert "idempotent" not in methods["add_thing"]  # a POST is not idempotent anyway
    assert methods["add_thing"]["idempotencyKeyHeader"] == "Idempotency-Key"
    assert not {"idempotent", "idempotencyKeyHeader"} & methods["list_things"].keys()


def test_every_shipped_xero_write_with_an_idempotency_key_is_not_retried_without_it() -> None:
    document = json.loads((shipped_definitions_dir() / "xero.json").read_text(encoding="utf-8"))
    keyed = [m for m in document["methods"] if "idempotency_key" in m["inputSchema"]["properties"]]
    assert len(keyed) >= 10
    for method in keyed:
        assert method["idempotencyKeyHeader"] == "Idempotency-Key", method["id"]
        verb = method["http"]["method"]
        assert method.get("idempotent") is False or verb in ("POST", "PATCH"), method["id"]
