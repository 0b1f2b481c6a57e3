"""Tests of the definitions registry, its meta-schema and the shipped definitions."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from prefect_integrations import binding
from prefect_integrations.definitions import (
    Definition,
    Registry,
    bindings,
    checked,
    collect,
    load_document,
    load_registry,
    loader,
    model,
    rules,
    schemas,
    shipped_definitions_dir,
    validate_document,
)
from prefect_integrations.definitions.checked import forget_checked
from prefect_integrations.exceptions import (
    DefinitionError,
    DefinitionProblem,
    UnknownIntegration,
    ValidationError,
)

SHIPPED = ("gmail", "slack", "xero")
URL_OVERRIDES = ("base_url", "authorization_url", "token_url")
CONTACT_ID = "5cc8cf28-567e-4d43-b287-687cfcaec47c"
INVOICE_ID = "a03ffcd2-5d91-4c7e-b483-318584e9e439"
# The shipped methods, imported from the providers' descriptions with the overlays in
# definitions/overlays/ (hand-written ones first); a re-import that changes these lists
# changes what callers can call.
XERO_SCOPES = [
    "openid",
    "profile",
    "email",
    "offline_access",
    "accounting.transactions",
    "accounting.contacts",
    "accounting.contacts.read",
    "accounting.attachments",
    "accounting.attachments.read",
    "accounting.transactions.read",
    "accounting.settings",
    "accounting.settings.read",
    "accounting.reports.read",
]
XERO_METHODS = [
    "create_invoice",
    "get_invoice",
    "list_contacts",
    "create_contact",
    "get_contact",
    "update_contact",
    "get_contact_by_contact_number",
    "get_contact_attachments",
    "get_invoices",
    "update_invoice",
    "update_or_create_invoices",
    "email_invoice",
    "get_online_invoice",
    "get_invoice_attachments",
    "get_credit_notes",
    "get_credit_note",
    "create_credit_notes",
    "update_credit_note",
    "create_credit_note_allocation",
    "get_credit_note_attachments",
    "get_payments",
    "get_payment",
    "create_payment",
    "delete_payment",
    "get_bank_transactions",
    "get_bank_transaction",
    "create_bank_transactions",
    "update_bank_transaction",
    "get_bank_transaction_attachments",
    "get_accounts",
    "get_account",
    "create_account",
    "update_account",
    "get_items",
    "get_item",
    "create_items",
    "update_item",
    "delete_item",
    "get_tax_rates",
    "get_tax_rate_by_tax_type",
    "create_tax_rates",
    "get_tracking_categories",
    "get_tracking_category",
    "create_tracking_category",
    "create_tracking_options",
    "get_organisations",
    "get_report_profit_and_loss",
    "get_report_balance_sheet",
    "get_report_aged_receivables_by_contact",
    "get_report_aged_payables_by_contact",
    "get_report_trial_balance",
    "get_report_bank_summary",
]
SLACK_SCOPES = [
    "chat:write",
    "channels:read",
    "groups:read",
    "channels:history",
    "channels:manage",
    "channels:join",
    "im:write",
    "users:read",
    "users:read.email",
    "users.profile:read",
    "reactions:write",
    "reactions:read",
    "pins:write",
    "pins:read",
    "files:read",
    "files:write",
    "usergroups:read",
    "usergroups:write",
    "team:read",
]
SLACK_METHODS = [
    "post_message",
    "list_channels",
    "auth_test",
    "chat_update",
    "chat_delete",
    "chat_post_ephemeral",
    "chat_get_permalink",
    "chat_schedule_message",
    "chat_delete_scheduled_message",
    "chat_scheduled_messages_list",
    "chat_me_message",
    "conversations_info",
    "conversations_history",
    "conversations_replies",
    "conversations_members",
    "conversations_create",
    "conversations_join",
    "conversations_invite",
    "conversations_archive",
    "conversations_unarchive",
    "conversations_rename",
    "conversations_set_topic",
    "conversations_set_purpose",
    "conversations_leave",
    "conversations_kick",
    "conversations_open",
    "users_list",
    "users_info",
    "users_lookup_by_email",
    "users_get_presence",
    "users_conversations",
    "users_profile_get",
    "reactions_add",
    "reactions_remove",
    "reactions_get",
    "reactions_list",
    "pins_add",
    "pins_remove",
    "pins_list",
    "files_list",
    "files_info",
    "files_delete",
    "usergroups_list",
    "usergroups_create",
    "usergroups_update",
    "usergroups_users_list",
    "usergroups_users_update",
    "team_info",
]

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def demo_document(integration_id: str = "demo", *, auth: str = "apikey") -> dict[str, Any]:
    """A small valid definition to break in one place per test."""
    document: dict[str, Any] = {
        "integrationId": integration_id,
        "name": "Demo",
        "description": "A definition used by the tests.",
        "version": "1.0.0",
        "authType": auth,
        "configSchema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"base_url": {"type": "string", "format": "uri"}},
        },
        "baseUrl": "https://api.example.com/v1",
        "methods": [
            {
                "id": "ping",
                "name": "Ping",
                "description": "Check the connection.",
                "inputSchema": {"type": "object", "properties": {}},
                "outputSchema": {"type": "object"},
                "http": {"method": "GET", "path": "/ping"},
            },
            {
                "id": "echo",
                "name": "Echo",
                "description": "Return the input.",
                "inputSchema": {
                    "type": "object",
                    "required": ["x"],
                    "properties": {"x": {"type": "integer"}},
                },
                "outputSchema": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "requiredScopes": ["read"],
                "http": {
                    "method": "POST",
                    "path": "/echo",
                    "body": {"json": {"x": "{{ inputs.x }}"}},
                    "output": {"x": "{{ response.x }}"},
                },
            },
        ],
    }
    if auth == "oauth2":
        document["oauth2Config"] = {
            "authorizationUrl": "https://auth.example.com/authorize",
            "tokenUrl": "https://auth.example.com/token",
            "scopes": ["read"],
        }
    return document


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[DefinitionProblem]:
    definitions, problems = collect([path])
    assert definitions == [] or not problems
    return problems


def find(problems: list[DefinitionProblem], path: tuple[str | int, ...]) -> DefinitionProblem:
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {problems}"
    return matching[0]


@pytest.fixture(scope="module")
def shipped() -> Registry:
    return load_registry()


# --------------------------------------------------------------------------------------
# Meta-schema and shipped definitions
# --------------------------------------------------------------------------------------


def test_meta_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = rules.meta_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_meta_schema_refuses_unknown_fields_at_every_level() -> None:
    schema = rules.meta_schema()
    assert schema["additionalProperties"] is False
    for name in ("oauth2Config", "method", "auth", "errors", "healthCheck", "http"):
        assert schema["$defs"][name]["additionalProperties"] is False
    assert schema["$defs"]["http"]["properties"]["body"]["additionalProperties"] is False


def test_shipped_definitions_load(shipped: Registry) -> None:
    assert shipped.ids() == list(SHIPPED)
    assert len(shipped) == 3
    for definition in shipped:
        source = Path(definition.source)
        assert source.parent == shipped_definitions_dir()
        assert source.name == f"{definition.id}.json"
        assert validate_document(definition.raw, source=definition.source) == []


@pytest.mark.parametrize("integration_id", SHIPPED)
def test_shipped_definition_files_validate(integration_id: str) -> None:
    path = shipped_definitions_dir() / f"{integration_id}.json"
    document, problems = load_document(path)
    assert problems == []
    assert document is not None
    assert validate_document(document, source=str(path)) == []


@pytest.mark.parametrize("integration_id", SHIPPED)
def test_shipped_definition_conventions(shipped: Registry, integration_id: str) -> None:
    definition = shipped.get(integration_id)
    assert re.fullmatch(r"[1-9]\d*\.\d+\.\d+", definition.version)  # released: 1.0.0 or later
    assert definition.description
    assert definition.documentation_url is not None
    assert definition.documentation_url.startswith("https://")
    config_properties = definition.config_schema["properties"]
    overrides = URL_OVERRIDES if definition.auth_type == "oauth2" else ("base_url",)
    for name in overrides:
        assert config_properties[name] == {
            "type": "string",
            "format": "uri",
            "description": config_properties[name]["description"],
        }
    assert definition.config_schema["additionalProperties"] is False
    assert definition.oauth2_config is not None
    requested = set(definition.oauth2_config["scopes"])
    for method in definition.methods.values():
        assert set(method.required_scopes) <= requested
        assert method.input_schema["type"] == "object"
        assert method.input_schema["additionalProperties"] is False
        # an object, or alternatives that are objects (Slack's pins.list, reactions.get;
        # the latter's without "type", as in Slack's description)
        branches = method.output_schema.get("anyOf", [method.output_schema])
        for branch in branches:
            assert branch.get("type") == "object" or "properties" in branch, method.id


def test_xero_definition(shipped: Registry) -> None:
    xero = shipped.get("xero")
    assert xero.auth_type == "oauth2"
    assert xero.oauth2_config == {
        "authorizationUrl": "https://login.xero.com/identity/connect/authorize",
        "tokenUrl": "https://identity.xero.com/connect/token",
        "revocationUrl": "https://identity.xero.com/connect/revocation",
        "scopes": XERO_SCOPES,
        "pkce": True,
    }
    assert list(xero.methods) == XERO_METHODS
    assert xero.config_schema["required"] == ["tenant_id"]
    xero.validate_config({"tenant_id": "c2d7c9a4-1f3e-4d4b-9a57-2d1d0c9a1e11"})
    with pytest.raises(ValidationError) as caught:
        xero.validate_config({"base_url": "http://localhost:8080"})
    assert caught.value.subject == "Config for 'xero'"
    assert caught.value.reason == "'tenant_id' is a required property"


def test_gmail_definition(shipped: Registry) -> None:
    gmail = shipped.get("gmail")
    assert gmail.oauth2_config is not None
    assert gmail.oauth2_config["authorizationUrl"] == "https://accounts.google.com/o/oauth2/v2/auth"
    assert gmail.oauth2_config["tokenUrl"] == "https://oauth2.googleapis.com/token"
    assert gmail.oauth2_config["revocationUrl"] == "https://oauth2.googleapis.com/revoke"
    assert gmail.oauth2_config["additionalParameters"] == {
        "access_type": "offline",
        "prompt": "consent",
    }
    assert list(gmail.methods) == ["send_message", "list_messages", "get_message", "get_profile"]
    assert gmail.method("send_message").required_scopes == (
        "https://www.googleapis.com/auth/gmail.send",
    )
    assert gmail.config_schema["properties"]["user_id"]["default"] == "me"
    gmail.validate_config({})

    send = gmail.method("send_message")
    send.validate_input({"to": ["ann@example.com"], "subject": "Hi", "body_text": "Hello"})
    send.validate_input({"to": ["ann@example.com"], "body_html": "<p>Hello</p>"})
    with pytest.raises(ValidationError) as caught:
        send.validate_input({"to": ["ann@example.com"], "subject": "No body"})
    assert caught.value.path == ()
    assert caught.value.reason == "at least one of 'body_text', 'body_html' is required"
    with pytest.raises(ValidationError) as caught:
        send.validate_input({"to": [], "body_text": "x"})
    assert caught.value.path == ("to",)

    listing = gmail.method("list_messages")
    listing.validate_input({"q": "is:unread", "max_results": 500})
    with pytest.raises(ValidationError) as caught:
        listing.validate_input({"max_results": 501})
    assert caught.value.path == ("max_results",)
    with pytest.raises(ValidationError):
        gmail.method("get_message").validate_input({"id": "m1", "format": "html"})


def test_slack_definition(shipped: Registry) -> None:
    slack = shipped.get("slack")
    assert slack.oauth2_config is not None
    assert slack.oauth2_config["authorizationUrl"] == "https://slack.com/oauth/v2/authorize"
    assert slack.oauth2_config["tokenUrl"] == "https://slack.com/api/oauth.v2.access"
    assert slack.oauth2_config["revocationUrl"] == "https://slack.com/api/auth.revoke"
    assert slack.oauth2_config["scopes"] == SLACK_SCOPES
    assert list(slack.methods) == SLACK_METHODS

    post = slack.method("post_message")
    post.validate_input({"channel": "C0123456789", "text": "hello"})
    post.validate_input({"channel": "C0123456789", "blocks": [{"type": "divider"}]})
    with pytest.raises(ValidationError) as caught:
        post.validate_input({"channel": "C0123456789"})
    assert caught.value.reason == "at least one of 'text', 'blocks' is required"
    with pytest.raises(ValidationError) as caught:
        post.validate_input({"channel": "C0123456789", "text": "x", "thread_ts": "yesterday"})
    assert caught.value.path == ("thread_ts",)

    channels = slack.method("list_channels")
    channels.validate_input({"types": "public_channel,private_channel", "limit": 1000})
    with pytest.raises(ValidationError) as caught:
        channels.validate_input({"limit": 1001})
    assert caught.value.path == ("limit",)
    with pytest.raises(ValidationError) as caught:
        channels.validate_input({"types": "public,private"})
    assert caught.value.path == ("types",)
    slack.method("auth_test").validate_output(
        {
            "url": "https://x.slack.com/",
            "team": "X",
            "user": "bot",
            "team_id": "T1",
            "user_id": "U1",
        }
    )


# --------------------------------------------------------------------------------------
# Method validation
# --------------------------------------------------------------------------------------


def valid_invoice_input() -> dict[str, Any]:
    return {
        "contact_id": CONTACT_ID,
        "line_items": [
            {
                "description": "Consulting",
                "quantity": 2,
                "unit_amount": 150.0,
                "account_code": "200",
            }
        ],
        "date": "2024-05-01",
        "due_date": "2024-05-31",
        "currency_code": "NZD",
        "status": "AUTHORISED",
        "line_amount_types": "Exclusive",
    }


def test_create_invoice_accepts_valid_input(shipped: Registry) -> None:
    shipped.get("xero").method("create_invoice").validate_input(valid_invoice_input())


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        target: Any = document
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return apply


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        del document[key]

    return apply


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        (
            _set(("line_items", 0, "quantity"), 0),
            ("line_items", 0, "quantity"),
            "0 is less than or equal to the minimum of 0",
        ),
        (
            _set(("line_items", 0, "quantity"), "abc"),
            ("line_items", 0, "quantity"),
            "'abc' is not of type 'number'",
        ),
        (_delete("line_items"), (), "'line_items' is a required property"),
        (_set(("line_items",), []), ("line_items",), "[] should be non-empty"),
        (_set(("contact_id",), "not-a-uuid"), ("contact_id",), "'not-a-uuid' is not a 'uuid'"),
        (_set(("date",), "2024-13-01"), ("date",), "'2024-13-01' is not a 'date'"),
        (_set(("currency_code",), "usd"), ("currency_code",), "'usd' does not match '^[A-Z]{3}$'"),
        (_set(("status",), "PAID"), ("status",), "'PAID' is not one of"),
        (_set(("contactid",), CONTACT_ID), (), "Additional properties are not allowed"),
        (
            _set(("line_items", 0, "unit_amount"), None),
            ("line_items", 0, "unit_amount"),
            "None is not of type 'number'",
        ),
        (
            _set(("line_items", 0), {"quantity": 1, "unit_amount": 1}),
            ("line_items", 0),
            "'description' is a required property",
        ),
    ],
)
def test_create_invoice_rejects_bad_input(
    shipped: Registry,
    change: Callable[[dict[str, Any]], None],
    path: tuple[str | int, ...],
    reason: str,
) -> None:
    value = valid_invoice_input()
    change(value)
    with pytest.raises(ValidationError) as caught:
        shipped.get("xero").method("create_invoice").validate_input(value)
    assert caught.value.subject == "Input of 'xero.create_invoice'"
    assert caught.value.path == path
    assert caught.value.reason.startswith(reason)


def test_validation_error_message_and_custom_subject(shipped: Registry) -> None:
    method = shipped.get("xero").method("create_invoice")
    value = valid_invoice_input()
    value["line_items"][0]["quantity"] = -1
    with pytest.raises(ValidationError) as caught:
        method.validate_input(value, subject="Task 'xero.create_invoice' argument")
    assert str(caught.value) == (
        "Task 'xero.create_invoice' argument is invalid at $.line_items[0].quantity: "
        "-1 is less than or equal to the minimum of 0"
    )


def test_create_invoice_output(shipped: Registry) -> None:
    method = shipped.get("xero").method("create_invoice")
    output = {
        "invoice_id": INVOICE_ID,
        "invoice_number": "INV-0006",
        "status": "AUTHORISED",
        "sub_total": 100.0,
        "total_tax": 15.0,
        "total": 115.0,
        "amount_due": 115.0,
        "currency_code": "NZD",
    }
    method.validate_output(output)
    del output["total"]
    with pytest.raises(ValidationError) as caught:
        method.validate_output(output)
    assert caught.value.subject == "Output of 'xero.create_invoice'"
    assert caught.value.reason == "'total' is a required property"


def test_compiled_validators_are_reused(shipped: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    method = shipped.get("xero").method("create_invoice")
    definition = shipped.get("xero")
    input_validator = method.input_validator
    assert isinstance(input_validator, Draft202012Validator)
    assert input_validator.format_checker is Draft202012Validator.FORMAT_CHECKER

    compiled: list[object] = []
    used: list[object] = []
    original_compile = schemas.compile_validator
    original_iter_errors = Draft202012Validator.iter_errors

    def counting_compile(schema: Any) -> Draft202012Validator:
        compiled.append(schema)
        return original_compile(schema)

    def spying_iter_errors(self: Draft202012Validator, instance: Any) -> Iterator[Any]:
        used.append(self)
        return original_iter_errors(self, instance)

    monkeypatch.setattr(model, "compile_validator", counting_compile)
    monkeypatch.setattr(Draft202012Validator, "iter_errors", spying_iter_errors)
    for _ in range(3):
        method.validate_input(valid_invoice_input())
        method.validate_output(
            {
                "invoice_id": INVOICE_ID,
                "status": "DRAFT",
                "sub_total": 0,
                "total_tax": 0,
                "total": 0,
            }
        )
        definition.validate_config({"tenant_id": "t"})
    assert compiled == []
    assert (
        used == [method.input_validator, method.output_validator, definition.config_validator] * 3
    )
    assert method.input_validator is input_validator


def test_method_lookup(shipped: Registry) -> None:
    xero = shipped.get("xero")
    assert xero.method("get_invoice").qualified_name == "xero.get_invoice"
    with pytest.raises(DefinitionError) as caught:
        xero.method("delete_invoice")
    message = str(caught.value)
    assert "'xero'" in message
    assert "'delete_invoice'" in message
    assert "create_invoice, get_invoice, list_contacts, create_contact" in message


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_registry_get_unknown_raises(shipped: Registry) -> None:
    with pytest.raises(UnknownIntegration) as caught:
        shipped.get("nope")
    assert caught.value.integration_id == "nope"
    assert "known: gmail, slack, xero" in str(caught.value)


def test_registry_mapping_behaviour(tmp_path: Path) -> None:
    paths = [
        write_json(tmp_path / f"{name}.json", demo_document(name)) for name in ("zeta", "alpha")
    ]
    definitions, problems = collect(paths)
    assert problems == []
    reg = Registry(definitions)
    assert reg.ids() == ["alpha", "zeta"]
    assert [d.id for d in reg] == ["alpha", "zeta"]
    assert "alpha" in reg
    assert "beta" not in reg
    assert len(reg) == 2
    assert reg.get("zeta") is definitions[0]


def test_registry_refuses_duplicate_ids(tmp_path: Path) -> None:
    first = write_json(tmp_path / "a" / "demo.json", demo_document())
    second = write_json(tmp_path / "b" / "demo.json", demo_document())
    definition_a, definition_b = (
        Definition.from_document(demo_document(), source=str(p)) for p in (first, second)
    )
    with pytest.raises(DefinitionError) as caught:
        Registry([definition_a, definition_b])
    assert caught.value.problems[0].source == str(second)


def test_definition_fields_and_content_hash(tmp_path: Path) -> None:
    document = demo_document(auth="oauth2")
    path = write_json(tmp_path / "demo.json", document)
    (definition,), problems = collect([path])
    assert problems == []
    assert definition.raw == document
    assert definition.source == str(path)
    assert definition.auth_type == "oauth2"
    assert definition.oauth2_config == document["oauth2Config"]
    assert list(definition.methods) == ["ping", "echo"]
    assert definition.method("echo").required_scopes == ("read",)
    assert definition.method("ping").required_scopes == ()
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert definition.content_hash == hashlib.sha256(canonical.encode()).hexdigest()

    reordered = dict(reversed(list(document.items())))
    same = Definition.from_document(reordered, source="elsewhere")
    assert same.content_hash == definition.content_hash
    changed = copy.deepcopy(document)
    changed["version"] = "1.0.1"
    assert Definition.from_document(changed, source="x").content_hash != definition.content_hash
    with pytest.raises(TypeError):
        definition.methods["new"] = definition.method("ping")  # type: ignore[index]


def test_definition_from_document_raises_with_problems() -> None:
    document = demo_document()
    document["version"] = "one"
    with pytest.raises(DefinitionError) as caught:
        Definition.from_document(document, source="db:demo")
    assert [(p.source, p.path) for p in caught.value.problems] == [("db:demo", ("version",))]


# --------------------------------------------------------------------------------------
# Bad definition files: each problem names the file and the JSON path
# --------------------------------------------------------------------------------------


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    path.write_text('{\n  "integrationId": "demo",\n  "name": "Demo",,\n}\n', encoding="utf-8")
    (problem,) = problems_of(path)
    assert problem.source == str(path)
    assert problem.path == ()
    assert "malformed JSON" in problem.message
    assert "line 3, column 18" in problem.message


def test_nan_is_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    path.write_text('{"integrationId": "demo", "x": NaN}', encoding="utf-8")
    (problem,) = problems_of(path)
    assert "NaN is not valid JSON" in problem.message


def test_top_level_not_an_object(tmp_path: Path) -> None:
    path = write_json(tmp_path / "demo.json", [demo_document()])
    (problem,) = problems_of(path)
    assert (problem.source, problem.path) == (str(path), ())
    assert problem.message == "top level must be a JSON object, not an array"
    assert validate_document("x", source="s")[0].message.endswith("not a string")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    (problem,) = problems_of(path)
    assert (problem.source, problem.path, problem.message) == (
        str(path),
        (),
        "no such file or directory",
    )
    document, problems = load_document(path)
    assert document is None
    assert problems[0].message.startswith("cannot read file")


def _remove(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        target: Any = document
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return apply


def _rename_method_id(index: int, new_id: str) -> Callable[[dict[str, Any]], None]:
    return _set(("methods", index, "id"), new_id)


BAD_DOCUMENTS: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str | int, ...], str]] = [
    ("missing name", _remove("name"), (), "'name' is a required property"),
    (
        "missing method inputSchema",
        _remove("methods", 1, "inputSchema"),
        ("methods", 1),
        "'inputSchema' is a required property",
    ),
    (
        "unknown top-level field",
        _set(("nmae",), "Demo"),
        ("nmae",),
        "unknown field 'nmae'; did you mean 'name'?",
    ),
    (
        "unknown method field",
        _set(("methods", 0, "requiredScope"), ["read"]),
        ("methods", 0, "requiredScope"),
        "unknown field 'requiredScope'; did you mean 'requiredScopes'?",
    ),
    ("bad semver", _set(("version",), "1.0"), ("version",), "'1.0' is not a semantic version"),
    (
        "semver leading zero",
        _set(("version",), "01.0.0"),
        ("version",),
        "'01.0.0' is not a semantic version",
    ),
    ("bad id", _set(("integrationId",), "Demo"), ("integrationId",), "'Demo' is not a valid id"),
    (
        "id with line break",
        _set(("integrationId",), "demo\n"),
        ("integrationId",),
        "'demo\\n' ends with a line break",
    ),
    (
        "version with line break",
        _set(("version",), "1.0.0\n"),
        ("version",),
        "'1.0.0\\n' ends with a line break",
    ),
    (
        "bad method id",
        _rename_method_id(0, "ping-pong"),
        ("methods", 0, "id"),
        "'ping-pong' is not a valid id",
    ),
    ("bad authType", _set(("authType",), "basic"), ("authType",), "'basic' is not one of"),
    ("no methods", _set(("methods",), []), ("methods",), "[] should be non-empty"),
    (
        "invalid embedded schema",
        _set(("methods", 0, "inputSchema"), {"type": "strng"}),
        ("methods", 0, "inputSchema", "type"),
        "invalid JSON Schema: 'strng' is not a JSON Schema type",
    ),
    (
        "invalid nested embedded schema",
        _set(("methods", 1, "inputSchema", "properties", "x"), {"type": "integer", "minimum": "0"}),
        ("methods", 1, "inputSchema", "properties", "x", "minimum"),
        "invalid JSON Schema: '0' is not of type 'number'",
    ),
    (
        "invalid output schema",
        _set(("methods", 1, "outputSchema", "required"), "x"),
        ("methods", 1, "outputSchema", "required"),
        "invalid JSON Schema: 'x' is not of type 'array'",
    ),
    (
        "invalid config schema",
        _set(("configSchema", "additionalProperties"), "no"),
        ("configSchema", "additionalProperties"),
        "invalid JSON Schema:",
    ),
    (
        "embedded schema of another draft",
        _set(("configSchema", "$schema"), "http://json-schema.org/draft-07/schema#"),
        ("configSchema", "$schema"),
        "unsupported dialect",
    ),
    (
        "embedded schema not an object",
        _set(("methods", 0, "outputSchema"), True),
        ("methods", 0, "outputSchema"),
        "True is not of type 'object'",
    ),
    (
        "duplicate method ids",
        _rename_method_id(1, "ping"),
        ("methods", 1, "id"),
        "duplicate method id 'ping'",
    ),
    (
        "oauth2Config present for apikey",
        _set(("oauth2Config",), demo_document(auth="oauth2")["oauth2Config"]),
        ("oauth2Config",),
        "not allowed when authType is 'apikey'",
    ),
    (
        "oauth2 without oauth2Config",
        _set(("authType",), "oauth2"),
        ("oauth2Config",),
        "required when authType is 'oauth2'",
    ),
    (
        "http url required",
        _set(("documentationUrl",), "docs.example.com"),
        ("documentationUrl",),
        "'docs.example.com' is not a",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [case[1:] for case in BAD_DOCUMENTS],
    ids=[case[0] for case in BAD_DOCUMENTS],
)
def test_bad_definition_file(
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    path: tuple[str | int, ...],
    message: str,
) -> None:
    document = demo_document()
    change(document)
    file = write_json(tmp_path / "demo.json", document)
    problems = problems_of(file)
    problem = find(problems, path)
    assert problem.source == str(file)
    assert problem.message.startswith(message), problem.message
    assert str(file) in str(problem)


def test_oauth2_checks(tmp_path: Path) -> None:
    document = demo_document(auth="oauth2")
    document["oauth2Config"]["scopes"] = ["read write"]
    document["oauth2Config"]["pkce"] = "yes"
    document["methods"][1]["requiredScopes"] = ["admin"]
    del document["oauth2Config"]["tokenUrl"]
    file = write_json(tmp_path / "demo.json", document)
    problems = problems_of(file)
    assert [(p.path, p.message) for p in problems] == [
        (
            ("methods", 1, "requiredScopes", 0),
            "scope 'admin' is not requested in oauth2Config.scopes",
        ),
        (("oauth2Config",), "'tokenUrl' is a required property"),
        (("oauth2Config", "pkce"), "'yes' is not of type 'boolean'"),
        (
            ("oauth2Config", "scopes", 0),
            "'read write' is not a single scope (list each scope as its own item)",
        ),
    ]


def test_garbage_document_is_reported_not_raised(tmp_path: Path) -> None:
    garbage = {
        "integrationId": 5,
        "authType": "oauth2",
        "oauth2Config": "x",
        "configSchema": 5,
        "methods": [1, {"id": 3, "inputSchema": [], "requiredScopes": "all"}],
    }
    file = write_json(tmp_path / "garbage.json", garbage)
    problems = problems_of(file)
    located = {p.path for p in problems}
    assert {("integrationId",), ("oauth2Config",), ("configSchema",), ("methods", 0)} <= located
    assert ("methods", 1, "inputSchema") in located
    assert all(p.source == str(file) for p in problems)


def test_problem_is_rendered_with_file_and_json_path(tmp_path: Path) -> None:
    document = demo_document()
    document["methods"][0]["inputSchema"] = {"type": "strng"}
    file = write_json(tmp_path / "demo.json", document)
    (problem,) = problems_of(file)
    assert str(problem).startswith(f"{file}: $.methods[0].inputSchema.type: invalid JSON Schema")


def test_all_meta_schema_errors_reported_sorted_by_path(tmp_path: Path) -> None:
    document = demo_document()
    document["version"] = "v1"
    document["name"] = ""
    document["methods"][1]["description"] = 5
    document["methods"][0]["outputSchema"] = "object"
    del document["description"]
    file = write_json(tmp_path / "demo.json", document)
    problems = problems_of(file)
    assert [p.path for p in problems] == [
        (),
        ("methods", 0, "outputSchema"),
        ("methods", 1, "description"),
        ("name",),
        ("version",),
    ]


def test_file_name_must_match_id(tmp_path: Path) -> None:
    file = write_json(tmp_path / "other.json", demo_document())
    (problem,) = problems_of(file)
    assert (problem.source, problem.path) == (str(file), ("integrationId",))
    assert (
        problem.message == "file name 'other.json' does not match id 'demo' (expected 'demo.json')"
    )


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    first = write_json(tmp_path / "one" / "demo.json", demo_document())
    second = write_json(tmp_path / "two" / "demo.json", demo_document())
    definitions, problems = collect([tmp_path / "one", tmp_path / "two"])
    assert [d.source for d in definitions] == [str(first)]
    (problem,) = problems
    assert (problem.source, problem.path) == (str(second), ("integrationId",))
    assert problem.message == f"duplicate integration id 'demo', already defined in {first}"


def test_same_file_twice_is_read_once(tmp_path: Path) -> None:
    file = write_json(tmp_path / "demo.json", demo_document())
    definitions, problems = collect([tmp_path, file])
    assert problems == []
    assert [d.id for d in definitions] == ["demo"]


def test_collect_reports_every_problem_of_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "defs"
    write_json(folder / "good.json", demo_document("good"))
    (folder / "broken.json").write_text("{", encoding="utf-8")
    bad_version = demo_document("bad_version")
    bad_version["version"] = "1"
    bad_version["methods"][0]["inputSchema"] = {"type": "strng"}
    write_json(folder / "bad_version.json", bad_version)
    write_json(folder / "mismatch.json", demo_document("renamed"))
    (folder / "notes.txt").write_text("not a definition", encoding="utf-8")
    write_json(folder / "nested" / "ignored.json", {"not": "read"})

    definitions, problems = collect([folder])

    assert [d.id for d in definitions] == ["good"]
    assert sorted((Path(p.source).name, p.path) for p in problems) == [
        ("bad_version.json", ("methods", 0, "inputSchema", "type")),
        ("bad_version.json", ("version",)),
        ("broken.json", ()),
        ("mismatch.json", ("integrationId",)),
    ]


def test_load_registry_merges_extra_paths(tmp_path: Path) -> None:
    write_json(tmp_path / "demo.json", demo_document())
    merged = load_registry(extra_paths=[tmp_path])
    assert merged.ids() == ["demo", *SHIPPED]
    merged.get("demo").method("echo").validate_input({"x": 1})
    only_extra = load_registry(extra_paths=[tmp_path / "demo.json"], include_shipped=False)
    assert only_extra.ids() == ["demo"]
    assert load_registry(include_shipped=False).ids() == []


def test_load_registry_raises_with_every_problem(tmp_path: Path) -> None:
    write_json(tmp_path / "one" / "demo.json", demo_document())
    write_json(tmp_path / "two" / "demo.json", demo_document())
    bad = demo_document("bad")
    bad["authType"] = "oauth2"
    bad["methods"][1]["id"] = "ping"
    write_json(tmp_path / "two" / "bad.json", bad)

    with pytest.raises(DefinitionError) as caught:
        load_registry(extra_paths=[tmp_path / "one", tmp_path / "two"])

    located = sorted((Path(p.source).name, p.path) for p in caught.value.problems)
    assert located == [
        ("bad.json", ("methods", 1, "id")),
        ("bad.json", ("oauth2Config",)),
        ("demo.json", ("integrationId",)),
    ]
    message = str(caught.value)
    assert message.startswith("3 problems in definitions:")
    assert str(tmp_path / "two" / "bad.json") in message
    assert f"already defined in {tmp_path / 'one' / 'demo.json'}" in message


def test_configured_definition_replaces_the_shipped_one(tmp_path: Path) -> None:
    mine = write_json(tmp_path / "xero.json", demo_document("xero"))
    merged = load_registry(extra_paths=[tmp_path])
    assert merged.ids() == list(SHIPPED)
    assert merged.get("xero").source == str(mine)
    assert list(merged.get("xero").methods) == ["ping", "echo"]
    assert merged.get("slack").source == str(shipped_definitions_dir() / "slack.json")


def test_a_warm_load_checks_no_schema_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking schemas is most of a load; a warm load remembers the outcomes.

    How long a warm load takes is measured in bench/bench_definitions.py.
    """
    load_registry()
    checked: list[object] = []

    def counting(cls: type[Draft202012Validator], schema: Any, *args: Any, **kw: Any) -> None:
        checked.append(schema)

    monkeypatch.setattr(Draft202012Validator, "check_schema", classmethod(counting))
    assert load_registry().ids() == list(SHIPPED)
    assert checked == []


def test_the_old_id_field_points_at_integration_id() -> None:
    document = demo_document()
    document["id"] = document.pop("integrationId")
    problems = validate_document(document, source="demo.json")
    assert [(p.path, p.message.split(" (allowed")[0]) for p in problems] == [
        ((), "'integrationId' is a required property"),
        (("id",), "unknown field 'id'; did you mean 'integrationId'?"),
    ]


def test_an_unknown_field_with_a_line_break_stays_on_one_line() -> None:
    document = demo_document()
    document["methods"][0]["\n"] = None
    (problem,) = validate_document(document, source="demo.json")
    assert "\n" not in str(problem)
    assert str(problem).startswith("demo.json: $.methods[0]['\\n']: unknown field '\\n'")


def _counting_validate(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the source of every document `collect` checks with validate_document."""
    checked: list[str] = []
    real = validate_document
    forget_checked()  # other tests loaded documents like these

    def counting(document: object, *, source: str) -> list[DefinitionProblem]:
        checked.append(source)
        return real(document, source=source)

    monkeypatch.setattr(loader, "validate_document", counting)
    return checked


def test_a_file_that_passed_is_not_checked_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = _counting_validate(monkeypatch)
    folder = tmp_path / "checked"
    path = write_json(tmp_path / "defs" / "demo.json", demo_document())
    assert [d.id for d in collect([path], checked_folder=folder)[0]] == ["demo"]
    assert checked == [str(path)]
    assert len(list(folder.iterdir())) == 1  # one marker, named by the key
    collect([path], checked_folder=folder)
    assert checked == [str(path)]
    forget_checked()  # another process: only the folder remembers
    assert [d.id for d in collect([path], checked_folder=folder)[0]] == ["demo"]
    assert checked == [str(path)]
    forget_checked()
    collect([path])  # no folder, nothing in memory: checked
    assert checked == [str(path)] * 2
    changed = demo_document()
    changed["description"] = "Changed."
    write_json(path, changed)
    collect([path], checked_folder=folder)
    assert checked == [str(path)] * 3


def test_a_bad_file_is_checked_and_reported_at_every_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = _counting_validate(monkeypatch)
    folder = tmp_path / "checked"
    bad = demo_document()
    bad["methods"][1]["inputSchema"]["properties"]["x"]["type"] = "integr"
    path = write_json(tmp_path / "defs" / "demo.json", bad)
    for _ in range(2):
        with pytest.raises(DefinitionError) as caught:
            load_registry([path], include_shipped=False, checked_folder=folder)
        (found,) = caught.value.problems
        assert found.path == ("methods", 1, "inputSchema", "properties", "x", "type")
        assert str(path) in str(caught.value)
    assert checked == [str(path)] * 2
    assert not folder.exists()


def test_a_file_that_passed_still_reports_a_handler_no_longer_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = demo_document()
    document["methods"][0] = {
        **document["methods"][0],
        "handler": "prefect_integrations.handlers.gmail:send_message",
    }
    del document["methods"][0]["http"]
    path = write_json(tmp_path / "demo.json", document)
    assert collect([path])[1] == []
    monkeypatch.setattr(bindings, "resolve_handler", lambda name: None)
    definitions, problems = collect([path])
    assert definitions == []
    assert [p.path for p in problems] == [("methods", 0, "handler")]


def test_a_changed_checker_checks_every_file_again(tmp_path: Path) -> None:
    path = write_json(tmp_path / "demo.json", demo_document())
    data = path.read_bytes()
    before = checked.checked_key(data)
    assert checked.checked_key(data) == before
    checked._checker_fingerprint.cache_clear()
    real = Path.read_bytes

    def edited(self: Path) -> bytes:
        content = real(self)
        return content + b"\n# edited" if self.name == "rules.py" else content

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Path, "read_bytes", edited)
            assert checked.checked_key(data) != before
    finally:
        checked._checker_fingerprint.cache_clear()
    assert checked.checked_key(data) == before


def test_a_file_that_passed_compiles_its_http_bindings_at_first_use(tmp_path: Path) -> None:
    path = write_json(tmp_path / "demo.json", demo_document())
    forget_checked()
    (checked_first,), _ = collect([path])
    echo = checked_first.method("echo").require_bound()
    assert echo.http_source is None and echo.compiled_http is not None  # checked: compiled
    (again,), _ = collect([path])
    lazy = again.method("echo").require_bound()
    assert lazy.compiled_http is None  # passed before: not compiled yet
    with ThreadPoolExecutor(max_workers=8) as pool:
        compiled = list(pool.map(lambda _: lazy.http, range(32)))
    assert compiled[0] is not None and all(c is compiled[0] for c in compiled)
    assert compiled[0].verb == "POST"
    request, _ = binding.prepare(again, again.method("echo"), {"x": 3}, {})
    assert json.loads(request.content) == {"x": 3}
