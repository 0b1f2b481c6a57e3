"""Tests of the HTTP bindings: definition method -> request, response -> output or error.

Requests are built with `binding.prepare` and sent through `httpx.MockTransport`, whose
handler asserts on what the official API expects and answers with a realistic provider
response (the examples of Xero's and Slack's OpenAPI specifications, Google's documented
shapes for Gmail). The "client" here only adds a fake bearer token, as the auth layer does.
"""

from __future__ import annotations

import base64
import email.policy
import json
import os
import sys
from collections.abc import Callable
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_integrations import _templates, binding
from prefect_integrations.definitions import (
    ApiKeyPlacement,
    CustomAuth,
    Definition,
    HealthCheck,
    Registry,
    RequestContext,
    collect,
    handler_registry,
    load_registry,
    validate_document,
)
from prefect_integrations.exceptions import (
    DefinitionError,
    DefinitionProblem,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ValidationError,
)
from prefect_integrations.handlers import gmail as gmail_handlers

from .fixtures import payload

FAKE_TOKEN = "ya29.FAKE-access-token-7c1f0e9d2b"
TENANT_ID = "c2d7c9a4-1f3e-4d4b-9a57-2d1d0c9a1e11"
XERO_CONFIG = {"tenant_id": TENANT_ID}
CONTACT_ID = "430fa14a-f945-44d3-9f97-5df5e28441b8"
INVOICE_ID = "a03ffcd2-5d91-4c7e-b483-318584e9e439"

Responder = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def shipped() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def xero(shipped: Registry) -> Definition:
    return shipped.get("xero")


@pytest.fixture(scope="module")
def slack(shipped: Registry) -> Definition:
    return shipped.get("slack")


@pytest.fixture(scope="module")
def gmail(shipped: Registry) -> Definition:
    return shipped.get("gmail")


def call(
    definition: Definition,
    method_id: str,
    inputs: dict[str, Any],
    respond: Responder,
    *,
    config: dict[str, Any] | None = None,
) -> tuple[Any, httpx.Request]:
    """One round trip as the client makes it; returns the validated output and the request."""
    method = definition.method(method_id)
    config = {} if config is None else config
    method.validate_input(inputs)
    definition.validate_config(config)
    request, ctx = binding.prepare(definition, method, inputs, config, instance_id="inst_1")
    assert "authorization" not in request.headers  # auth is the client's job
    request.headers["Authorization"] = f"Bearer {FAKE_TOKEN}"
    seen: list[httpx.Request] = []

    def handler(sent: httpx.Request) -> httpx.Response:
        seen.append(sent)
        return respond(sent)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = client.send(request)
    output = binding.parse(definition, method, response, ctx)
    method.validate_output(output)
    return output, seen[0]


def fails(
    definition: Definition,
    method_id: str,
    inputs: dict[str, Any],
    respond: Responder,
    *,
    config: dict[str, Any] | None = None,
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call(definition, method_id, inputs, respond, config=config)
    error = caught.value
    assert error.integration_id == definition.id
    assert error.method_id == method_id
    assert error.instance_id == "inst_1"
    assert FAKE_TOKEN not in str(error)
    return error


def reply(status: int = 200, body: Any = None, **kwargs: Any) -> Responder:
    return lambda request: httpx.Response(status, json=body, **kwargs)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


def params_of(request: httpx.Request) -> list[tuple[str, str]]:
    return list(request.url.params.multi_items())


# --------------------------------------------------------------------------------------
# Realistic provider responses (tests/fixtures/providers)
# --------------------------------------------------------------------------------------

# PUT /Invoices 200 example of the Xero Accounting OpenAPI specification.
XERO_CREATED_INVOICE = payload("xero_put_invoices")

# GET /Invoices/{InvoiceID} 200 example of the specification (abridged contact).
XERO_INVOICE = payload("xero_get_invoice")

# GET /Contacts 200 example of the specification (abridged addresses).
XERO_CONTACTS = payload("xero_get_contacts")

# 400 example of PUT /Contacts in the specification (abridged element).
XERO_VALIDATION_ERROR = payload("xero_put_contacts_validation_error")

# chat.postMessage 200 example of the Slack Web API OpenAPI specification.
SLACK_POSTED = payload("slack_chat_post_message")

# conversations.list 200 example of the specification.
SLACK_CHANNELS = payload("slack_conversations_list")

# auth.test 200 example of the specification, as answered for a bot token.
SLACK_AUTH_TEST = payload("slack_auth_test")

# users.messages.get of the Gmail API, format=full.
GMAIL_MESSAGE = payload("gmail_messages_get")


def google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "x"}],
            "status": status,
        }
    }


# --------------------------------------------------------------------------------------
# Xero
# --------------------------------------------------------------------------------------


def xero_headers_ok(request: httpx.Request) -> None:
    assert request.url.host == "api.xero.com"
    assert request.headers["xero-tenant-id"] == TENANT_ID
    assert request.headers["accept"] == "application/json"


def test_xero_create_invoice_full(xero: Definition) -> None:
    inputs = {
        "contact_id": CONTACT_ID,
        "type": "ACCREC",
        "line_items": [
            {
                "description": "Acme Tires",
                "quantity": 2,
                "unit_amount": 20,
                "account_code": "200",
                "tax_type": "NONE",
                "item_code": "TIRE-1",
            }
        ],
        "date": "2019-03-11",
        "due_date": "2018-12-10",
        "reference": "Website Design",
        "currency_code": "NZD",
        "status": "AUTHORISED",
        "line_amount_types": "Exclusive",
        "idempotency_key": "run-42-invoice-1",
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "PUT"
        assert request.url.path == "/api.xro/2.0/Invoices"
        assert params_of(request) == [("summarizeErrors", "true")]
        xero_headers_ok(request)
        assert request.headers["content-type"] == "application/json"
        assert request.headers["idempotency-key"] == "run-42-invoice-1"
        assert body_of(request) == {
            "Invoices": [
                {
                    "Type": "ACCREC",
                    "Contact": {"ContactID": CONTACT_ID},
                    "LineItems": [
                        {
                            "Description": "Acme Tires",
                            "Quantity": 2,
                            "UnitAmount": 20,
                            "AccountCode": "200",
                            "TaxType": "NONE",
                            "ItemCode": "TIRE-1",
                        }
                    ],
                    "Date": "2019-03-11",
                    "DueDate": "2018-12-10",
                    "Reference": "Website Design",
                    "CurrencyCode": "NZD",
                    "Status": "AUTHORISED",
                    "LineAmountTypes": "Exclusive",
                }
            ]
        }
        return httpx.Response(200, json=XERO_CREATED_INVOICE)

    output, _ = call(xero, "create_invoice", inputs, respond, config=XERO_CONFIG)
    assert output == {
        "invoice_id": "ed255415-e141-4150-aab7-89c3bbbb851c",
        "invoice_number": "INV-0007",
        "type": "ACCREC",
        "status": "AUTHORISED",
        "sub_total": 40.0,
        "total_tax": 0.0,
        "total": 40.0,
        "amount_due": 40.0,
        "currency_code": "NZD",
        "date": "2019-03-11",
        "due_date": "2018-12-10",
    }


def test_xero_create_invoice_defaults_and_omitted_optionals(xero: Definition) -> None:
    inputs = {
        "contact_id": CONTACT_ID,
        "line_items": [{"description": "Consulting", "quantity": 1.5, "unit_amount": 150.0}],
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert "idempotency-key" not in request.headers
        assert body_of(request) == {
            "Invoices": [
                {
                    "Type": "ACCREC",  # inputSchema default
                    "Contact": {"ContactID": CONTACT_ID},
                    "LineItems": [
                        {"Description": "Consulting", "Quantity": 1.5, "UnitAmount": 150.0}
                    ],
                    "Status": "DRAFT",  # inputSchema default
                }
            ]
        }
        draft = json.loads(json.dumps(XERO_CREATED_INVOICE))
        invoice = draft["Invoices"][0]
        invoice.update(Status="DRAFT", InvoiceNumber=None, SubTotal=225.0, Total=225.0)
        del invoice["DueDate"], invoice["DueDateString"]
        return httpx.Response(200, json=draft)

    output, _ = call(xero, "create_invoice", inputs, respond, config=XERO_CONFIG)
    assert output["status"] == "DRAFT"
    assert "invoice_number" not in output  # null in the response: omitted
    assert "due_date" not in output
    assert output["total"] == 225.0


def test_xero_get_invoice(xero: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == f"/api.xro/2.0/Invoices/{INVOICE_ID}"
        assert params_of(request) == []
        assert request.content == b""
        assert "content-type" not in request.headers
        xero_headers_ok(request)
        return httpx.Response(200, json=XERO_INVOICE)

    output, _ = call(xero, "get_invoice", {"invoice_id": INVOICE_ID}, respond, config=XERO_CONFIG)
    assert output == {
        "invoice_id": INVOICE_ID,
        "invoice_number": "INV-0006",
        "type": "ACCREC",
        "status": "PAID",
        "reference": "Tour",
        "contact": {"contact_id": CONTACT_ID, "name": "Liam Gallagher"},
        "line_items": [
            {
                "line_item_id": "b18f39d9-7739-4246-9288-72afe939d2d5",
                "description": "Guitars Fender Strat",
                "quantity": 1.0,
                "unit_amount": 148062.76,
                "account_code": "200",
                "tax_type": "NONE",
                "item_code": "123",
                "tax_amount": 0.0,
                "line_amount": 148062.76,
            }
        ],
        "line_amount_types": "Exclusive",
        "sub_total": 148062.76,
        "total_tax": 0.0,
        "total": 148062.76,
        "amount_due": 0.0,
        "amount_paid": 148062.76,
        "currency_code": "NZD",
        "date": "2019-03-07",
        "due_date": "2019-03-13",
    }


def test_xero_list_contacts_query(xero: Definition) -> None:
    inputs = {
        "where": 'ContactStatus=="ACTIVE"',
        "page": 2,
        "page_size": 50,
        "include_archived": True,
        "search_term": "Joe Bloggs",
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/api.xro/2.0/Contacts"
        assert params_of(request) == [
            ("where", 'ContactStatus=="ACTIVE"'),
            ("page", "2"),
            ("pageSize", "50"),
            ("includeArchived", "true"),
            ("searchTerm", "Joe Bloggs"),
        ]
        xero_headers_ok(request)
        return httpx.Response(200, json=XERO_CONTACTS)

    output, _ = call(xero, "list_contacts", inputs, respond, config=XERO_CONFIG)
    assert output == {
        "contacts": [
            {
                "contact_id": "5cc8cf28-567e-4d43-b287-687cfcaec47c",
                "name": "Katherine Warren",
                "email_address": "kat.warren@clampett.com",
                "contact_status": "ACTIVE",
                "is_customer": True,
                "is_supplier": True,
            },
            {
                "contact_id": "3ec601ad-eddc-4ccb-a8ac-736e88293b1b",
                "name": "Lisa Parker",
                "email_address": "lparker@parkerandco.com",
                "contact_status": "ACTIVE",
                "is_customer": False,
                "is_supplier": False,
            },
        ]
    }


def test_xero_list_contacts_without_inputs(xero: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "https://api.xero.com/api.xro/2.0/Contacts"
        return httpx.Response(200, json={"Id": "x", "Status": "OK", "Contacts": []})

    output, _ = call(xero, "list_contacts", {}, respond, config=XERO_CONFIG)
    assert output == {"contacts": []}
    include_archived_false, _ = call(
        xero,
        "list_contacts",
        {"include_archived": False},
        lambda r: (
            httpx.Response(200, json={"Contacts": []})
            if params_of(r) == [("includeArchived", "false")]
            else httpx.Response(418)
        ),
        config=XERO_CONFIG,
    )
    assert include_archived_false == {"contacts": []}


def test_xero_create_contact(xero: Definition) -> None:
    inputs = {
        "name": "Bruce Banner",
        "email_address": "hulk@avengers.com",
        "first_name": "Bruce",
        "last_name": "Banner",
        "account_number": "ABC-100",
        "tax_number": "12-345-678",
        "phone": "555-1212",
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "PUT"
        assert request.url.path == "/api.xro/2.0/Contacts"
        assert params_of(request) == [("summarizeErrors", "true")]
        xero_headers_ok(request)
        assert body_of(request) == {
            "Contacts": [
                {
                    "Name": "Bruce Banner",
                    "EmailAddress": "hulk@avengers.com",
                    "FirstName": "Bruce",
                    "LastName": "Banner",
                    "AccountNumber": "ABC-100",
                    "TaxNumber": "12-345-678",
                    "Phones": [{"PhoneType": "DEFAULT", "PhoneNumber": "555-1212"}],
                }
            ]
        }
        created = {
            "ContactID": "3ff6d40c-af9a-40a3-89ce-3c1556a25591",
            "ContactStatus": "ACTIVE",
            "Name": "Bruce Banner",
            "FirstName": "Bruce",
            "LastName": "Banner",
            "EmailAddress": "hulk@avengers.com",
            "AccountNumber": "ABC-100",
            "TaxNumber": "12-345-678",
            "BankAccountDetails": "",
            "Phones": [
                {"PhoneType": "DEFAULT", "PhoneNumber": "555-1212", "PhoneAreaCode": ""},
                {"PhoneType": "DDI", "PhoneNumber": "", "PhoneAreaCode": ""},
                {"PhoneType": "FAX", "PhoneNumber": "", "PhoneAreaCode": ""},
                {"PhoneType": "MOBILE", "PhoneNumber": "", "PhoneAreaCode": ""},
            ],
            "UpdatedDateUTC": "/Date(1551399321043+0000)/",
            "IsSupplier": False,
            "IsCustomer": False,
            "HasValidationErrors": False,
        }
        return httpx.Response(200, json={"Id": "e997d6d7", "Status": "OK", "Contacts": [created]})

    output, _ = call(xero, "create_contact", inputs, respond, config=XERO_CONFIG)
    assert output == {
        "contact_id": "3ff6d40c-af9a-40a3-89ce-3c1556a25591",
        "name": "Bruce Banner",
        "email_address": "hulk@avengers.com",
        "first_name": "Bruce",
        "last_name": "Banner",
        "account_number": "ABC-100",
        "tax_number": "12-345-678",
        "phone": "555-1212",
        "contact_status": "ACTIVE",
    }


def test_xero_create_contact_minimal(xero: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert body_of(request) == {"Contacts": [{"Name": "Foo9987"}]}
        contact = {
            "ContactID": "3ff6d40c-af9a-40a3-89ce-3c1556a25591",
            "ContactStatus": "ACTIVE",
            "Name": "Foo9987",
            "Phones": [{"PhoneType": "DEFAULT", "PhoneNumber": ""}],
        }
        return httpx.Response(200, json={"Contacts": [contact]})

    output, _ = call(xero, "create_contact", {"name": "Foo9987"}, respond, config=XERO_CONFIG)
    assert output == {
        "contact_id": "3ff6d40c-af9a-40a3-89ce-3c1556a25591",
        "name": "Foo9987",
        "contact_status": "ACTIVE",
    }


def test_xero_validation_error(xero: Definition) -> None:
    error = fails(
        xero,
        "create_contact",
        {"name": "Buzz Lightyear"},
        reply(400, XERO_VALIDATION_ERROR),
        config=XERO_CONFIG,
    )
    assert type(error) is ProviderError
    assert error.status == 400
    assert error.provider_code == "ValidationException"
    assert error.provider_message == (
        "The contact name Buzz Lightyear is already assigned to another contact. "
        "The contact name must be unique across all active contacts."
    )
    assert "HTTP 400 [ValidationException]" in str(error)


def test_xero_validation_error_of_several_elements(xero: Definition) -> None:
    body = {
        "ErrorNumber": 10,
        "Type": "ValidationException",
        "Message": "A validation exception occurred",
        "Elements": [
            {"ValidationErrors": [{"Message": "Email address must be valid."}]},
            {"Name": "no errors here"},
            {
                "ValidationErrors": [
                    {"Message": "Account code '999' is not a valid code for this document."},
                    {"Message": "Email address must be valid."},
                ]
            },
        ],
    }
    error = fails(
        xero,
        "create_invoice",
        {
            "contact_id": CONTACT_ID,
            "line_items": [{"description": "x", "quantity": 1, "unit_amount": 1}],
        },
        reply(400, body),
        config=XERO_CONFIG,
    )
    assert error.provider_message == (
        "Email address must be valid.; Account code '999' is not a valid code for this document."
    )
    # Without Elements the generic Message is used.
    error = fails(
        xero,
        "get_invoice",
        {"invoice_id": INVOICE_ID},
        reply(400, {"ErrorNumber": 16, "Type": "QueryParseException", "Message": "No property"}),
        config=XERO_CONFIG,
    )
    assert (error.provider_code, error.provider_message) == ("QueryParseException", "No property")


@pytest.mark.parametrize(
    ("status", "body", "expected", "code", "message"),
    [
        (
            401,
            {
                "Type": None,
                "Title": "Unauthorized",
                "Status": 401,
                "Detail": "AuthenticationUnsuccessful",
                "Instance": "7f0b8b5e-1f2a-4c1b-9a70-3c6a0c2d4e11",
                "Extensions": {},
            },
            ProviderAuthError,
            "Unauthorized",
            "AuthenticationUnsuccessful",
        ),
        (
            403,
            {
                "Type": None,
                "Title": "Forbidden",
                "Status": 403,
                "Detail": "AuthenticationUnsuccessful",
            },
            ProviderAuthError,
            "Forbidden",
            "AuthenticationUnsuccessful",
        ),
        (429, {"Title": "Too Many Requests"}, ProviderUnavailable, "Too Many Requests", None),
        (503, None, ProviderUnavailable, None, None),
    ],
)
def test_xero_http_errors(
    xero: Definition,
    status: int,
    body: Any,
    expected: type[ProviderError],
    code: str | None,
    message: str | None,
) -> None:
    error = fails(xero, "list_contacts", {}, reply(status, body), config=XERO_CONFIG)
    assert type(error) is expected
    assert (error.status, error.provider_code) == (status, code)
    if message is not None:
        assert error.provider_message == message


def test_xero_not_found_text_body(xero: Definition) -> None:
    error = fails(
        xero,
        "get_invoice",
        {"invoice_id": INVOICE_ID},
        lambda r: httpx.Response(404, text="The resource you're looking for cannot be found"),
        config=XERO_CONFIG,
    )
    assert type(error) is ProviderError
    assert error.provider_message == "The resource you're looking for cannot be found"
    html = fails(
        xero,
        "get_invoice",
        {"invoice_id": INVOICE_ID},
        lambda r: httpx.Response(404, text="<html><body>Not found</body></html>"),
        config=XERO_CONFIG,
    )
    assert html.provider_message is None


# --------------------------------------------------------------------------------------
# Slack
# --------------------------------------------------------------------------------------


def test_slack_post_message(slack: Definition) -> None:
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* finished :tada:"}},
        {"type": "divider"},
    ]
    inputs = {
        "channel": "C1H9RESGL",
        "text": "Here's a message for you",
        "blocks": blocks,
        "thread_ts": "1503435956.000247",
        "reply_broadcast": True,
        "mrkdwn": False,
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "https://slack.com/api/chat.postMessage"
        assert request.headers["content-type"] == "application/json; charset=utf-8"
        assert request.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
        assert body_of(request) == {
            "channel": "C1H9RESGL",
            "text": "Here's a message for you",
            "blocks": blocks,  # a JSON array, not a string
            "thread_ts": "1503435956.000247",
            "reply_broadcast": True,
            "mrkdwn": False,
        }
        return httpx.Response(200, json=SLACK_POSTED)

    output, _ = call(slack, "post_message", inputs, respond)
    assert output == {
        "channel": "C1H9RESGL",
        "ts": "1503435956.000247",
        "message": SLACK_POSTED["message"],
    }


def test_slack_post_message_minimal(slack: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert body_of(request) == {"channel": "C1H9RESGL", "text": "héllo ✓ 200"}
        assert "héllo ✓".encode() in request.content  # UTF-8, not \\u escapes
        return httpx.Response(200, json=SLACK_POSTED)

    output, _ = call(
        slack, "post_message", {"channel": "C1H9RESGL", "text": "héllo ✓ 200"}, respond
    )
    assert output["ts"] == "1503435956.000247"


def test_slack_list_channels(slack: Definition) -> None:
    inputs = {
        "types": "public_channel,private_channel",
        "exclude_archived": True,
        "limit": 200,
        "cursor": "dXNlcjpVMDYxTkZUVDI=",
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/api/conversations.list"
        assert params_of(request) == [
            ("types", "public_channel,private_channel"),
            ("exclude_archived", "true"),
            ("limit", "200"),
            ("cursor", "dXNlcjpVMDYxTkZUVDI="),
        ]
        assert request.content == b""
        return httpx.Response(200, json=SLACK_CHANNELS)

    output, _ = call(slack, "list_channels", inputs, respond)
    assert output == {
        "channels": SLACK_CHANNELS["channels"],
        "next_cursor": "dGVhbTpDMDYxRkE1UEI=",
    }


def test_slack_list_channels_last_page(slack: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert params_of(request) == []
        return httpx.Response(
            200, json={"ok": True, "channels": [], "response_metadata": {"next_cursor": ""}}
        )

    output, _ = call(slack, "list_channels", {}, respond)
    assert output == {"channels": [], "next_cursor": ""}


def test_slack_auth_test(slack: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "https://slack.com/api/auth.test"
        assert request.content == b""
        return httpx.Response(200, json=SLACK_AUTH_TEST)

    output, _ = call(slack, "auth_test", {}, respond)
    assert output == {
        "url": "https://subarachnoid.slack.com/",
        "team": "Subarachnoid Workspace",
        "user": "grace",
        "team_id": "T12345678",
        "user_id": "W12345678",
        "bot_id": "B0123456789",
    }


def test_slack_ok_false_at_200_is_an_error(slack: Definition) -> None:
    error = fails(
        slack,
        "post_message",
        {"channel": "C0000000", "text": "x"},
        reply(200, {"ok": False, "error": "channel_not_found"}),
    )
    assert type(error) is ProviderError
    assert (error.status, error.provider_code, error.provider_message) == (
        200,
        "channel_not_found",
        None,
    )
    assert str(error) == (
        "'slack.post_message' on instance 'inst_1' failed: HTTP 200 [channel_not_found]"
    )


@pytest.mark.parametrize(
    ("status", "body", "expected", "message"),
    [
        (200, {"ok": False, "error": "invalid_auth"}, ProviderAuthError, None),
        (200, {"ok": False, "error": "token_revoked"}, ProviderAuthError, None),
        (
            200,
            {"ok": False, "error": "missing_scope", "needed": "chat:write", "provided": "x"},
            ProviderError,
            "needed scope: chat:write",
        ),
        (
            200,
            {
                "ok": False,
                "error": "invalid_arguments",
                "response_metadata": {
                    "messages": ["[ERROR] missing required field: channel", "[ERROR] bad"]
                },
            },
            ProviderError,
            "[ERROR] missing required field: channel; [ERROR] bad",
        ),
        (200, {"ok": False, "error": "fatal_error"}, ProviderUnavailable, None),
        (429, {"ok": False, "error": "ratelimited"}, ProviderUnavailable, None),
    ],
)
def test_slack_errors(
    slack: Definition,
    status: int,
    body: dict[str, Any],
    expected: type[ProviderError],
    message: str | None,
) -> None:
    error = fails(slack, "post_message", {"channel": "C1", "text": "x"}, reply(status, body))
    assert type(error) is expected
    assert error.provider_code == body["error"]
    assert error.provider_message == message


def test_slack_ok_true_with_html_is_not_an_error(slack: Definition) -> None:
    # errors.when must not fire on a body that is not JSON (the output then fails validation).
    method = slack.method("auth_test")
    request, ctx = binding.prepare(slack, method, {}, {})
    response = httpx.Response(200, text="<html>maintenance</html>", request=request)
    assert binding.parse(slack, method, response, ctx) == {}


# --------------------------------------------------------------------------------------
# Gmail
# --------------------------------------------------------------------------------------


def decode_raw(request: httpx.Request) -> tuple[dict[str, Any], EmailMessage]:
    payload = body_of(request)
    raw = base64.urlsafe_b64decode(payload["raw"])
    assert b"\r\n" in raw  # RFC 2822 line endings
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return payload, message


def text_of(part: MIMEPart) -> str:
    """Decoded text of a part, with the CRLF line endings of the wire format as LF."""
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


GMAIL_SENT = payload("gmail_messages_send")


def test_gmail_send_message_text(gmail: Definition) -> None:
    inputs = {
        "to": ["ann@example.com", "bob@example.org"],
        "cc": ["carol@example.com"],
        "bcc": ["audit@example.com"],
        "subject": "Quarterly report",
        "body_text": "Hello Ann,\n\nthe report is attached.\n",
        "reply_to": "team@example.com",
        "thread_id": "18c5e3b1f2a4d6e7",
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert str(request.url) == "https://gmail.googleapis.com/gmail/v1/users/me/messages/send"
        assert request.headers["content-type"] == "application/json"
        payload, message = decode_raw(request)
        assert payload["threadId"] == "18c5e3b1f2a4d6e7"
        assert set(payload) == {"raw", "threadId"}
        assert message["To"] == "ann@example.com, bob@example.org"
        assert message["Cc"] == "carol@example.com"
        assert message["Bcc"] == "audit@example.com"
        assert message["Reply-To"] == "team@example.com"
        assert message["Subject"] == "Quarterly report"
        assert message.get_content_type() == "text/plain"
        assert not message.is_multipart()
        assert text_of(message) == "Hello Ann,\n\nthe report is attached.\n"
        return httpx.Response(200, json=GMAIL_SENT)

    output, _ = call(gmail, "send_message", inputs, respond)
    assert output == {
        "id": "18c5e4c2a3b5e7f8",
        "thread_id": "18c5e3b1f2a4d6e7",
        "label_ids": ["SENT"],
    }


def test_gmail_send_message_alternative_utf8(gmail: Definition) -> None:
    subject = (
        "Café ✓ \u2013 résumé de la réunion, très long sujet pour forcer le pliage des en-têtes"
    )
    text = "Bonjour Zoë,\nvoici le résumé. ✓\n"
    html = "<p>Bonjour Zoë,</p><p>voici le <b>résumé</b>. ✓</p>"

    def respond(request: httpx.Request) -> httpx.Response:
        payload, message = decode_raw(request)
        raw = base64.urlsafe_b64decode(payload["raw"])
        assert "threadId" not in payload
        assert raw.isascii()  # headers RFC 2047-encoded, bodies transfer-encoded
        assert b"=?utf-8?" in raw
        assert message["Subject"] == subject
        assert message["To"] == "zoe@example.fr"
        assert message.get_content_type() == "multipart/alternative"
        parts = list(message.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
        assert text_of(parts[0]) == text
        assert text_of(parts[1]).strip() == html
        assert message.get_body(preferencelist=("html",)) is parts[1]
        return httpx.Response(200, json={"id": "m2", "threadId": "t2"})

    output, _ = call(
        gmail,
        "send_message",
        {"to": ["zoe@example.fr"], "subject": subject, "body_text": text, "body_html": html},
        respond,
    )
    assert output == {"id": "m2", "thread_id": "t2"}


def test_gmail_send_message_html_only_with_user_and_base_url(gmail: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert (
            str(request.url) == "http://localhost:8025/gmail/v1/users/ann@example.com/messages/send"
        )
        _, message = decode_raw(request)
        assert message.get_content_type() == "text/html"
        assert message["Subject"] is None
        assert message["Cc"] is None
        return httpx.Response(200, json={"id": "m3", "threadId": "t3", "labelIds": ["SENT"]})

    config = {"user_id": "ann@example.com", "base_url": "http://localhost:8025/gmail/v1/"}
    output, _ = call(
        gmail,
        "send_message",
        {"to": ["x@example.com"], "body_html": "<p>Hi</p>"},
        respond,
        config=config,
    )
    assert output["id"] == "m3"


def test_gmail_send_message_refuses_header_injection(gmail: Definition) -> None:
    method = gmail.method("send_message")
    bad = {"to": ["a@example.com"], "subject": "Hi\r\nBcc: evil@example.com", "body_text": "x"}
    with pytest.raises(ValidationError) as caught:
        method.validate_input(bad)
    assert caught.value.path == ("subject",)
    with pytest.raises(ValidationError):  # the handler refuses it even unvalidated
        binding.prepare(gmail, method, bad, {})
    with pytest.raises(ValidationError):
        gmail_handlers.build_message({"to": ["a@example.com\nBcc: evil@example.com"]})


def test_gmail_list_messages(gmail: Definition) -> None:
    inputs = {
        "q": "from:bob@example.com is:unread",
        "label_ids": ["INBOX", "IMPORTANT"],
        "max_results": 50,
        "page_token": "09876543210987654321",
        "include_spam_trash": False,
    }

    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/gmail/v1/users/me/messages"
        assert params_of(request) == [
            ("q", "from:bob@example.com is:unread"),
            ("labelIds", "INBOX"),
            ("labelIds", "IMPORTANT"),
            ("maxResults", "50"),
            ("pageToken", "09876543210987654321"),
            ("includeSpamTrash", "false"),
        ]
        return httpx.Response(
            200,
            json={
                "messages": [
                    {"id": "18c5e3b1f2a4d6e7", "threadId": "18c5e3b1f2a4d6e7"},
                    {"id": "18c5e2a0e1b3c5d6", "threadId": "18c5e29f00112233"},
                ],
                "nextPageToken": "13044738149734612277",
                "resultSizeEstimate": 201,
            },
        )

    output, _ = call(gmail, "list_messages", inputs, respond)
    assert output == {
        "messages": [
            {"id": "18c5e3b1f2a4d6e7", "thread_id": "18c5e3b1f2a4d6e7"},
            {"id": "18c5e2a0e1b3c5d6", "thread_id": "18c5e29f00112233"},
        ],
        "next_page_token": "13044738149734612277",
        "result_size_estimate": 201,
    }


def test_gmail_list_messages_empty(gmail: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert params_of(request) == []
        return httpx.Response(200, json={"resultSizeEstimate": 0})

    output, _ = call(gmail, "list_messages", {}, respond)
    assert output == {"result_size_estimate": 0}


def test_gmail_get_message(gmail: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/gmail/v1/users/me/messages/18c5e3b1f2a4d6e7"
        assert params_of(request) == [("format", "full")]  # inputSchema default applied
        return httpx.Response(200, json=GMAIL_MESSAGE)

    output, _ = call(gmail, "get_message", {"id": "18c5e3b1f2a4d6e7"}, respond)
    assert output == {
        "id": "18c5e3b1f2a4d6e7",
        "thread_id": "18c5e3b1f2a4d6e7",
        "label_ids": ["INBOX", "UNREAD", "CATEGORY_PERSONAL"],
        "snippet": "Hello Ann, the report is attached.",
        "history_id": "987654",
        "internal_date": "1700000000000",
        "payload": GMAIL_MESSAGE["payload"],
        "size_estimate": 4210,
    }


def test_gmail_get_message_metadata(gmail: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert params_of(request) == [
            ("format", "metadata"),
            ("metadataHeaders", "From"),
            ("metadataHeaders", "Subject"),
        ]
        return httpx.Response(200, json=GMAIL_MESSAGE)

    call(
        gmail,
        "get_message",
        {"id": "18c5e3b1f2a4d6e7", "format": "metadata", "metadata_headers": ["From", "Subject"]},
        respond,
    )


def test_gmail_get_message_raw(gmail: Definition) -> None:
    raw = base64.urlsafe_b64encode(b"Subject: x\r\n\r\nbody").decode()

    def respond(request: httpx.Request) -> httpx.Response:
        assert params_of(request) == [("format", "raw")]
        return httpx.Response(
            200,
            json={
                "id": "m1",
                "threadId": "t1",
                "labelIds": ["INBOX"],
                "raw": raw,
                "sizeEstimate": 20,
                "historyId": "1",
                "internalDate": "2",
            },
        )

    output, _ = call(gmail, "get_message", {"id": "m1", "format": "raw"}, respond)
    assert output["raw"] == raw
    assert "payload" not in output


def test_gmail_path_values_are_one_encoded_segment(gmail: Definition) -> None:
    method = gmail.method("get_message")
    request, _ = binding.prepare(gmail, method, {"id": "a/b?c#d e"}, {"user_id": "me"})
    assert request.url.raw_path == b"/gmail/v1/users/me/messages/a%2Fb%3Fc%23d%20e?format=full"
    request, _ = binding.prepare(gmail, method, {"id": "..."}, {})
    assert request.url.raw_path == b"/gmail/v1/users/me/messages/...?format=full"


def test_path_parameters_and_backslashes_are_percent_encoded(gmail: Definition) -> None:
    """``;`` starts path parameters and ``\\`` is ``/`` to some servers: both are encoded."""
    method = gmail.method("get_message")
    request, _ = binding.prepare(gmail, method, {"id": "a;b=c\\d@e"}, {})
    assert request.url.raw_path == b"/gmail/v1/users/me/messages/a%3Bb=c%5Cd@e?format=full"


@pytest.mark.parametrize(
    "segment", [".", "..", "..;", ".;x", "..;x=1", "..\\", "../", "a/..", "%2e%2e", "%2E", ".. "]
)
def test_dot_segments_are_refused_naming_the_input(gmail: Definition, segment: str) -> None:
    """Sent as ``%2E%2E``, servers would still read them as a step to the parent path.

    So would they ``..`` followed by path parameters (``..;x``: Tomcat, Jetty, Spring), or
    cut at a decoded ``/`` or ``\\``, or decoded once more.
    """
    method = gmail.method("get_message")
    with pytest.raises(ValidationError) as info:
        binding.prepare(gmail, method, {"id": segment}, {})
    assert (info.value.subject, info.value.path) == ("Input", ("id",))
    assert str(info.value).startswith(
        f"Input is invalid at $.id: {segment!r} cannot be sent as a URL path segment"
    )
    send = gmail.method("send_message")
    with pytest.raises(ValidationError) as info:
        binding.prepare(
            gmail,
            send,
            {"to": ["a@example.com"], "subject": "s", "body_text": "b"},
            {"user_id": segment},
        )
    assert (info.value.subject, info.value.path) == ("Config", ("user_id",))


def test_gmail_get_profile(gmail: Definition) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert str(request.url) == "https://gmail.googleapis.com/gmail/v1/users/me/profile"
        return httpx.Response(
            200,
            json={
                "emailAddress": "ann@example.com",
                "messagesTotal": 1520,
                "threadsTotal": 1130,
                "historyId": "987654",
            },
        )

    output, _ = call(gmail, "get_profile", {}, respond)
    assert output == {
        "email_address": "ann@example.com",
        "messages_total": 1520,
        "threads_total": 1130,
        "history_id": "987654",
    }


@pytest.mark.parametrize(
    ("status", "google_status", "message", "expected"),
    [
        (404, "NOT_FOUND", "Requested entity was not found.", ProviderError),
        (400, "FAILED_PRECONDITION", "Mail service not enabled", ProviderError),
        (
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
            ProviderAuthError,
        ),
        (
            403,
            "PERMISSION_DENIED",
            "Request had insufficient authentication scopes.",
            ProviderAuthError,
        ),
        (
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Queries'",
            ProviderUnavailable,
        ),
        (503, "UNAVAILABLE", "The service is currently unavailable.", ProviderUnavailable),
    ],
)
def test_gmail_errors(
    gmail: Definition, status: int, google_status: str, message: str, expected: type[ProviderError]
) -> None:
    error = fails(
        gmail,
        "get_message",
        {"id": "nope"},
        reply(status, google_error(status, google_status, message)),
    )
    assert type(error) is expected
    assert (error.status, error.provider_code, error.provider_message) == (
        status,
        google_status,
        message,
    )


def test_gmail_handler_errors_are_mapped(gmail: Definition) -> None:
    error = fails(
        gmail,
        "send_message",
        {"to": ["a@example.com"], "body_text": "x"},
        reply(400, google_error(400, "INVALID_ARGUMENT", "Invalid To header")),
    )
    assert (error.provider_code, error.provider_message) == (
        "INVALID_ARGUMENT",
        "Invalid To header",
    )


# --------------------------------------------------------------------------------------
# Errors in general: secrets, truncation, shapes
# --------------------------------------------------------------------------------------


def test_error_never_contains_request_credentials(slack: Definition, gmail: Definition) -> None:
    echo = {
        "ok": False,
        "error": f"invalid_auth for Bearer {FAKE_TOKEN}",
        "detail": f"Authorization: Bearer {FAKE_TOKEN}",
    }
    error = fails(slack, "auth_test", {}, reply(401, echo))
    assert FAKE_TOKEN not in str(error)
    assert FAKE_TOKEN not in (error.provider_code or "")
    assert "********" in (error.provider_code or "")
    error = fails(
        gmail,
        "get_profile",
        {},
        reply(401, google_error(401, "UNAUTHENTICATED", f"bad token {FAKE_TOKEN}")),
    )
    assert error.provider_message == "bad token ********"


def test_error_scrubs_api_key_in_query_and_basic_auth(xero: Definition) -> None:
    method = xero.method("list_contacts")
    request = httpx.Request(
        "GET",
        "https://api.example.com/x?api_key=sk_live_SECRET123&page=1",
        headers={"Authorization": "Basic " + base64.b64encode(b"user:pa55word-xyz").decode()},
    )
    body = {"message": "key sk_live_SECRET123 and password pa55word-xyz refused", "code": "denied"}
    response = httpx.Response(400, json=body, request=request)
    error = binding.provider_error(xero, method, response)
    assert error.provider_message == "key ******** and password ******** refused"
    assert "SECRET" not in str(error)


def test_error_message_is_truncated(slack: Definition) -> None:
    error = fails(slack, "auth_test", {}, reply(400, {"error": "x", "message": "y" * 5000}))
    assert error.provider_message is not None
    assert len(error.provider_message) == 500
    assert len(str(error)) < 700


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {"error": "invalid_grant", "error_description": "Token expired"},
            "invalid_grant",
            "Token expired",
        ),
        ({"code": "E42", "message": "Boom"}, "E42", "Boom"),
        ({"Message": "Xero style"}, None, "Xero style"),
        ({"title": "Bad Request", "detail": "field x"}, None, "field x"),
        ({"error": {"code": 400, "message": "Google"}}, "400", "Google"),
        ("plain text failure", None, "plain text failure"),
        (None, None, None),
        ([1, 2], None, None),
    ],
)
def test_common_error_shapes(body: Any, code: str | None, message: str | None) -> None:
    # Definition errors templates render to nothing for these shapes, so the fallbacks apply.
    definition = collect_one_definition({"errors": {"code": "{{ response.nothing }}"}})
    method = definition.method("ping")
    content = body if isinstance(body, str) else (b"" if body is None else json.dumps(body))
    response = httpx.Response(400, content=content)
    error = binding.provider_error(definition, method, response, instance_id="i")
    assert (error.provider_code, error.provider_message) == (code, message)


# --------------------------------------------------------------------------------------
# Base URL, health checks, typed attributes
# --------------------------------------------------------------------------------------


def test_config_base_url_overrides(xero: Definition, slack: Definition) -> None:
    method = xero.method("get_invoice")
    config = {"tenant_id": TENANT_ID, "base_url": "http://127.0.0.1:9000/xero/"}
    request, ctx = binding.prepare(xero, method, {"invoice_id": INVOICE_ID}, config)
    assert str(request.url) == f"http://127.0.0.1:9000/xero/Invoices/{INVOICE_ID}"
    assert ctx.base_url == "http://127.0.0.1:9000/xero"
    request, ctx = binding.prepare(slack, slack.method("auth_test"), {}, {})
    assert ctx.base_url == "https://slack.com/api" == slack.base_url


def test_request_context(gmail: Definition) -> None:
    method = gmail.method("get_message")
    _, ctx = binding.prepare(gmail, method, {"id": "m1"}, {}, instance_id="gm_1")
    assert ctx == RequestContext(
        integration_id="gmail",
        method_id="get_message",
        instance_id="gm_1",
        inputs={"id": "m1", "format": "full"},
        config={"user_id": "me"},  # configSchema default applied
        base_url="https://gmail.googleapis.com/gmail/v1",
    )


@pytest.mark.parametrize(
    ("integration_id", "method_id", "inputs"),
    [
        ("xero", "list_contacts", {"page": 1, "page_size": 1}),
        ("gmail", "get_profile", {}),
        ("slack", "auth_test", {}),
    ],
)
def test_shipped_health_checks(
    shipped: Registry, integration_id: str, method_id: str, inputs: dict[str, Any]
) -> None:
    definition = shipped.get(integration_id)
    assert definition.health_check == HealthCheck(method_id=method_id, input=inputs)
    method = definition.method(method_id)
    method.validate_input(dict(definition.health_check.input))
    config = XERO_CONFIG if integration_id == "xero" else {}
    request, _ = binding.prepare(definition, method, definition.health_check.input, config)
    assert request.method in ("GET", "POST")
    if integration_id == "xero":
        assert params_of(request) == [("page", "1"), ("pageSize", "1")]


def test_every_shipped_method_is_bound(shipped: Registry) -> None:
    for definition in shipped:
        assert definition.base_url is not None
        assert definition.auth is None  # all oauth2: Authorization: Bearer
        for method in definition.methods.values():
            assert (method.http is None) != (method.handler is None), method.qualified_name
    assert shipped.get("gmail").method("send_message").handler is gmail_handlers.send_message


def test_compiled_templates_are_reused(slack: Definition, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    original = _templates.CompiledTemplate.__init__

    def counting(self: _templates.CompiledTemplate, source: str, *, path: bool) -> None:
        compiled.append(source)
        original(self, source, path=path)

    monkeypatch.setattr(_templates.CompiledTemplate, "__init__", counting)
    method = slack.method("post_message")
    for _ in range(3):
        _, ctx = binding.prepare(slack, method, {"channel": "C1", "text": "x"}, {})
        binding.parse(slack, method, httpx.Response(200, json=SLACK_POSTED), ctx)
    assert compiled == []
    # Loading the definitions again reuses the compiled templates too.
    load_registry()
    assert compiled == []


def test_prepare_and_parse_carry_nothing_between_calls(slack: Definition) -> None:
    """Repeated calls give the same request and output and leave the inputs alone.

    How long prepare + parse take is measured in bench/bench_definitions.py.
    """
    method = slack.method("post_message")
    inputs = {"channel": "C1H9RESGL", "text": "Here's a message for you", "mrkdwn": False}
    response = httpx.Response(200, json=SLACK_POSTED)
    seen = set()
    for _ in range(3):
        request, ctx = binding.prepare(slack, method, inputs, {})
        output = binding.parse(slack, method, response, ctx)
        seen.add((request.method, str(request.url), request.content, json.dumps(output)))
    assert len(seen) == 1
    assert inputs == {"channel": "C1H9RESGL", "text": "Here's a message for you", "mrkdwn": False}


# --------------------------------------------------------------------------------------
# Template semantics
# --------------------------------------------------------------------------------------


def render(tree: Any, **variables: Any) -> Any:
    sink = _templates.Sink()
    names = frozenset({"inputs", "config", "response", "status", "headers"})
    node = _templates.compile_tree(tree, (), names, sink)
    assert sink.problems == []
    return node(_templates.Scope(variables))


def test_native_and_text_rendering() -> None:
    inputs = {"n": 3, "s": "200", "l": [1, {"a": None}], "b": False, "none": None}
    assert render("{{ inputs.n }}", inputs=inputs) == 3
    assert render("{{ inputs.s }}", inputs=inputs) == "200"  # never literal-evaluated
    assert render("{{ inputs.l }}", inputs=inputs) == [1, {"a": None}]
    assert render("{{ inputs.b }}", inputs=inputs) is False
    assert render("{{ true }}", inputs=inputs) is True  # constants keep their type
    assert render("{{ [1, 2] }}", inputs=inputs) == [1, 2]
    assert render("n={{ inputs.n }}, b={{ inputs.b }}, x={{ inputs.x }}", inputs=inputs) == (
        "n=3, b=false, x="
    )
    assert render("plain {not a template}", inputs=inputs) == "plain {not a template}"
    assert render("{% if inputs.b %}yes{% endif %}", inputs=inputs) is None
    assert render("{{ inputs.n }}{# comment #}", inputs=inputs) == 3


def test_undefined_inside_native_containers_is_json_null() -> None:
    definition = collect_one_definition(
        {},
        method_http={
            "method": "POST",
            "path": "/x",
            "body": {"json": {"v": "{{ [inputs.n, inputs.nope, {'a': inputs.nope}] }}"}},
        },
    )
    request, _ = binding.prepare(definition, definition.method("ping"), {"n": 1}, {})
    assert body_of(request) == {"v": [1, None, {"a": None}]}


def test_omission_in_objects_and_arrays() -> None:
    tree = {
        "kept": "{{ inputs.a }}",
        "missing": "{{ inputs.nope }}",
        "null": "{{ inputs.none }}",
        "deep": "{{ inputs.nope.deeper[0].x }}",
        "constant": 5,
        "list": ["{{ inputs.a }}", "{{ inputs.nope }}", None, 0, ""],
        "nested": {"x": "{{ inputs.nope }}"},
    }
    assert render(tree, inputs={"a": "A", "none": None}) == {
        "kept": "A",
        "constant": 5,
        "list": ["A", 0, ""],
        "nested": {},
    }


def test_filters() -> None:
    assert render("{{ '/Date(1518685950940+0000)/' | xero_date }}") == "2018-02-15"
    assert render("{{ '/Date(1552262400000)/' | xero_date }}") == "2019-03-11"
    assert render("{{ '/Date(1552262400000-0800)/' | xero_date }}") == "2019-03-10"
    assert render("{{ '2019-03-11T00:00:00' | xero_date }}") == "2019-03-11"
    assert render("{{ inputs.nope | xero_date }}", inputs={}) is None
    assert render("{{ 'a b/é' | urlquote }}") == "a%20b%2F%C3%A9"
    assert render("{{ 'user:pw' | b64encode }}") == "dXNlcjpwdw=="
    assert (
        render("{{ '\u00ff\u00fe?' | b64url }}")
        == base64.urlsafe_b64encode("\u00ff\u00fe?".encode()).decode()
    )
    assert render("{{ inputs.v | tojson }}", inputs={"v": {"é": [1, True]}}) == '{"é":[1,true]}'
    assert render("{{ inputs.nope | tojson }}", inputs={}) is None
    records = [{"A": 1, "B": None, "C": 3}, "skip", {"A": 4}]
    assert render("{{ inputs.r | rename({'A': 'a', 'B': 'b'}) }}", inputs={"r": records}) == [
        {"a": 1},
        {"a": 4},
    ]
    assert render("{{ inputs.r[0] | pick('A', 'C') }}", inputs={"r": records}) == {"A": 1, "C": 3}
    assert render("{{ inputs.nope | rename({'A': 'a'}) }}", inputs={}) is None


def test_sandbox_blocks_unsafe_access() -> None:
    assert _templates.is_omitted(render("{{ inputs.__class__ }}", inputs={}))
    assert _templates.is_omitted(render("{{ inputs.n.__class__.__mro__ }}", inputs={"n": 1}))
    definition = collect_one_definition(
        {},
        method_http={
            "method": "POST",
            "path": "/x",
            "body": {"json": {"v": "{{ inputs.update({'x': 1}) }}"}},
        },
    )
    with pytest.raises(DefinitionError) as caught:
        binding.prepare(definition, definition.method("ping"), {}, {})
    (problem,) = caught.value.problems
    assert problem.path == ("methods", 0, "http", "body", "json", "v")
    assert "SecurityError" in problem.message


def test_render_failure_names_the_template() -> None:
    definition = collect_one_definition(
        {}, method_http={"method": "GET", "path": "/x/{{ inputs.n / 0 }}"}
    )
    with pytest.raises(DefinitionError) as caught:
        binding.prepare(definition, definition.method("ping"), {"n": 1}, {})
    (problem,) = caught.value.problems
    assert problem.path == ("methods", 0, "http", "path")
    assert "ZeroDivisionError" in problem.message
    assert "demo.ping" in problem.message


def test_an_input_named_like_a_dict_method_is_read_as_a_key() -> None:
    """Xero's create_items has an input 'items': absent, it is left out, not dict.items."""
    definition = collect_one_definition(
        {},
        method_http={
            "method": "PUT",
            "path": "/Items",
            "body": {"json": {"Items": "{{ inputs['items'] }}", "Keys": "{{ inputs.keys }}"}},
        },
    )
    ping = definition.method("ping")
    request, _ = binding.prepare(definition, ping, {}, {})
    assert json.loads(request.content) == {}
    request, _ = binding.prepare(definition, ping, {"items": [1], "keys": "k"}, {})
    assert json.loads(request.content) == {"Items": [1], "Keys": "k"}


# --------------------------------------------------------------------------------------
# Other bodies, auth placement and handlers in a demo definition
# --------------------------------------------------------------------------------------


def demo_document(**top: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "integrationId": "demo",
        "name": "Demo",
        "description": "A definition used by the binding tests.",
        "version": "1.0.0",
        "authType": "apikey",
        "configSchema": {
            "type": "object",
            "properties": {"base_url": {"type": "string"}, "region": {"type": "string"}},
        },
        "baseUrl": "https://api.example.com/v2",
        "methods": [
            {
                "id": "ping",
                "name": "Ping",
                "description": "Check the connection.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}, "tags": {"type": "array"}},
                },
                "outputSchema": {"type": "object"},
                "http": {"method": "GET", "path": "/ping", "output": {"ok": "{{ status }}"}},
            }
        ],
    }
    document.update(top)
    return document


def collect_one_definition(
    top: dict[str, Any], *, method_http: dict[str, Any] | None = None
) -> Definition:
    document = demo_document(**top)
    if method_http is not None:
        document["methods"][0]["http"] = method_http
    return Definition.from_document(document, source="demo.json")


def test_form_and_raw_bodies() -> None:
    definition = collect_one_definition(
        {"headers": {"X-Region": "{{ config.region }}", "Accept": "application/json"}},
        method_http={
            "method": "POST",
            "path": "/forms/{{ inputs.n }}",
            "headers": {"Accept": "text/csv", "X-Flag": "{{ inputs.n > 1 }}"},
            "body": {
                "form": {
                    "tags": "{{ inputs.tags }}",
                    "n": "{{ inputs.n }}",
                    "flag": True,
                    "absent": "{{ inputs.nope }}",
                    "blocks": "{{ [{'type': 'divider'}] | tojson }}",
                }
            },
        },
    )
    method = definition.method("ping")
    request, _ = binding.prepare(
        definition, method, {"n": 2, "tags": ["a", "b c"]}, {"region": "eu"}
    )
    assert str(request.url) == "https://api.example.com/v2/forms/2"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["accept"] == "text/csv"  # the method's header replaces the definition's
    assert request.headers["x-region"] == "eu"
    assert request.headers["x-flag"] == "true"
    assert request.content == (
        b"tags=a&tags=b+c&n=2&flag=true&blocks=%5B%7B%22type%22%3A%22divider%22%7D%5D"
    )
    request, _ = binding.prepare(definition, method, {"n": 1}, {})
    assert "x-region" not in request.headers  # config.region absent: header omitted

    raw = collect_one_definition(
        {},
        method_http={
            "method": "PUT",
            "path": "/raw",
            "body": {"raw": "n={{ inputs.n }}\n", "contentType": "text/plain; charset=utf-8"},
        },
    )
    request, _ = binding.prepare(raw, raw.method("ping"), {"n": 7}, {})
    assert request.content == b"n=7\n"
    assert request.headers["content-type"] == "text/plain; charset=utf-8"


def test_output_sees_status_headers_inputs_and_config() -> None:
    definition = collect_one_definition(
        {},
        method_http={
            "method": "GET",
            "path": "/x",
            "output": {
                "status": "{{ status }}",
                "etag": "{{ headers.etag }}",
                "n": "{{ inputs.n }}",
                "region": "{{ config.region }}",
                "text": "{{ response }}",
            },
        },
    )
    method = definition.method("ping")
    _, ctx = binding.prepare(definition, method, {"n": 1}, {"region": "eu"})
    response = httpx.Response(201, headers={"ETag": '"v1"'}, text="created")
    assert binding.parse(definition, method, response, ctx) == {
        "status": 201,
        "etag": '"v1"',
        "n": 1,
        "region": "eu",
        "text": "created",
    }
    # Without an output tree the parsed body is the output.
    bare = collect_one_definition({}, method_http={"method": "GET", "path": "/x"})
    _, ctx = binding.prepare(bare, bare.method("ping"), {}, {})
    assert binding.parse(bare, bare.method("ping"), httpx.Response(200, json=[1]), ctx) == [1]
    assert binding.parse(bare, bare.method("ping"), httpx.Response(204), ctx) is None


def test_auth_placement_is_typed() -> None:
    assert collect_one_definition({}).auth == ApiKeyPlacement("header", "Authorization", "Bearer ")
    query = collect_one_definition({"auth": {"apikey": {"in": "query", "name": "api_key"}}})
    assert query.auth == ApiKeyPlacement("query", "api_key", "")
    header = collect_one_definition(
        {"auth": {"apikey": {"in": "header", "name": "Authorization", "prefix": "Token "}}}
    )
    assert header.auth == ApiKeyPlacement("header", "Authorization", "Token ")
    assert collect_one_definition(
        {"auth": {"apikey": {"name": "X-Api-Key"}}}
    ).auth == ApiKeyPlacement("header", "X-Api-Key", "")
    assert collect_one_definition({"auth": {"apikey": {"in": "basic"}}}).auth == ApiKeyPlacement(
        "basic", None, ""
    )
    custom = collect_one_definition(
        {"authType": "custom", "auth": {"custom": {"scheme": "hmac_sha256", "options": {"a": 1}}}}
    )
    assert custom.auth == CustomAuth(scheme="hmac_sha256", options={"a": 1})


class EchoHandler:
    """A handler used by the tests (named as 'tests.test_binding:EchoHandler')."""

    def build_request(self, ctx: RequestContext) -> httpx.Request:
        return httpx.Request(
            "POST", f"{ctx.base_url}/echo", headers={"Accept": "text/plain"}, json=dict(ctx.inputs)
        )

    def parse_response(self, response: httpx.Response, ctx: RequestContext) -> Any:
        return {"echo": response.json(), "instance": ctx.instance_id}


NOT_A_HANDLER = object()

#: Handlers the tests register (name -> target), besides the shipped ones.
TEST_HANDLERS = {
    "tests.echo": "tests.test_binding:EchoHandler",
    "tests.not_a_handler": "tests.test_binding:NOT_A_HANDLER",
    "tests.missing_module": "tests.no_such_module:Handler",
}


@pytest.fixture(autouse=True)
def test_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register `TEST_HANDLERS` (as a package would in the entry-point group)."""
    registered = {**handler_registry.SHIPPED_HANDLERS, **TEST_HANDLERS}
    monkeypatch.setattr(handler_registry, "registered_handlers", lambda: dict(registered))


def test_handler_methods_get_definition_headers_and_error_checks() -> None:
    document = demo_document(
        headers={"Accept": "application/json", "X-Tenant": "t-1"},
        errors={"when": "{{ response.failed }}", "code": "{{ response.code }}"},
    )
    document["methods"][0].pop("http")
    document["methods"][0]["handler"] = "tests.echo"
    del document["baseUrl"]  # allowed: every method has a handler
    definition = Definition.from_document(document, source="demo.json")
    method = definition.method("ping")
    assert isinstance(method.handler, EchoHandler)
    request, ctx = binding.prepare(
        definition, method, {"n": 1}, {"base_url": "http://svc"}, instance_id="d1"
    )
    assert str(request.url) == "http://svc/echo"
    assert request.headers["accept"] == "text/plain"  # the handler's own header wins
    assert request.headers["x-tenant"] == "t-1"
    assert binding.parse(definition, method, httpx.Response(200, json={"n": 1}), ctx) == {
        "echo": {"n": 1},
        "instance": "d1",
    }
    with pytest.raises(ProviderError) as caught:
        binding.parse(
            definition, method, httpx.Response(200, json={"failed": True, "code": "E"}), ctx
        )
    assert caught.value.provider_code == "E"


def _handler_document(reference: str) -> dict[str, Any]:
    document = demo_document()
    document["methods"][0].pop("http")
    document["methods"][0]["handler"] = reference
    return document


def test_validation_imports_no_handler_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module that records being imported, importable but not registered.
    (tmp_path / "handler_probe_unregistered.py").write_text(
        "import os\nos.environ['HANDLER_PROBE_IMPORTED'] = '1'\nHandler = object()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("HANDLER_PROBE_IMPORTED", raising=False)
    problems = validate_document(
        _handler_document("handler_probe_unregistered:Handler"), source="demo.json"
    )
    assert [(p.path, p.message.split(" (")[0]) for p in problems] == [
        (
            ("methods", 0, "handler"),
            "handler 'handler_probe_unregistered:Handler' of definition 'demo' is not registered",
        )
    ]
    assert "registered handlers: gmail.send_message, tests.echo" in problems[0].message
    assert "'prefect_integrations.handlers' entry-point group" in problems[0].message
    assert str(problems[0]).startswith("demo.json: $.methods[0].handler: handler ")
    assert "HANDLER_PROBE_IMPORTED" not in os.environ
    assert "handler_probe_unregistered" not in sys.modules


def test_registered_handlers_are_imported_at_first_use_only() -> None:
    # Registered but broken: the definition validates; the first call says what is wrong.
    for reference, fragment in (
        ("tests.missing_module", "No module named 'tests.no_such_module'"),
        ("tests.not_a_handler", "is not a method handler"),
    ):
        document = _handler_document(reference)
        assert validate_document(document, source="demo.json") == []
        method = Definition.from_document(document, source="demo.json").method("ping")
        assert "tests.no_such_module" not in sys.modules
        with pytest.raises(DefinitionError, match=fragment):
            binding.prepare(method_definition(document), method, {}, {"base_url": "https://x"})


def method_definition(document: dict[str, Any]) -> Definition:
    return Definition.from_document(document, source="demo.json")


def test_registered_handler_by_name_or_target(shipped: Registry) -> None:
    assert handler_registry.SHIPPED_HANDLERS == {
        "gmail.send_message": "prefect_integrations.handlers.gmail:send_message"
    }
    for reference in ("tests.echo", "tests.test_binding:EchoHandler"):
        method = method_definition(_handler_document(reference)).method("ping")
        assert isinstance(method.handler, EchoHandler)
    gmail = shipped.get("gmail").method("send_message")
    assert gmail.handler is gmail_handlers.send_message
    assert gmail.require_bound().handler_path == "prefect_integrations.handlers.gmail:send_message"


def test_entry_points_register_handlers_but_cannot_replace_shipped_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.undo()  # the real lookup, not TEST_HANDLERS
    monkeypatch.setattr(
        handler_registry,
        "_entry_point_handlers",
        lambda: (("acme.sign", "acme_pkg.handlers:sign"), ("gmail.send_message", "evil:x")),
    )
    assert handler_registry.registered_handlers() == {
        "gmail.send_message": "prefect_integrations.handlers.gmail:send_message",
        "acme.sign": "acme_pkg.handlers:sign",
    }
    assert handler_registry.resolve_handler("acme.sign") == "acme_pkg.handlers:sign"
    assert handler_registry.resolve_handler("acme_pkg.handlers:sign") == "acme_pkg.handlers:sign"
    assert handler_registry.resolve_handler("evil:x") is None


# --------------------------------------------------------------------------------------
# Bad definitions: each a DefinitionProblem naming the file and the JSON path
# --------------------------------------------------------------------------------------


def _unbound_health_check(document: dict[str, Any]) -> None:
    del document["methods"][0]["http"]
    document["healthCheck"] = {"method": "ping"}


def _both(document: dict[str, Any]) -> None:
    document["methods"][0]["handler"] = "tests.echo"


def _handler(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        del document["methods"][0]["http"]
        document["methods"][0]["handler"] = path

    return apply


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
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


BAD: list[tuple[str, Callable[[dict[str, Any]], None], tuple[str | int, ...], str]] = [
    (
        "template syntax error in path",
        _set("methods", 0, "http", "path", value="/x/{{ inputs.n }"),
        ("methods", 0, "http", "path"),
        "template syntax error: unexpected '}'",
    ),
    (
        "template syntax error deep in a body",
        _set("methods", 0, "http", "body", value={"json": {"a": [{"b": "{% if %}"}]}}),
        ("methods", 0, "http", "body", "json", "a", 0, "b"),
        "template syntax error",
    ),
    (
        "unknown template variable",
        _set("methods", 0, "http", "query", value={"q": "{{ input.n }}"}),
        ("methods", 0, "http", "query", "q"),
        "unknown variable 'input' (available here: config, inputs)",
    ),
    (
        "response in a request template",
        _set("headers", value={"X-A": "{{ response.x }}"}),
        ("headers", "X-A"),
        "unknown variable 'response'",
    ),
    (
        "output template syntax error",
        _set("methods", 0, "http", "output", value={"x": "{{ response.x | }}"}),
        ("methods", 0, "http", "output", "x"),
        "template syntax error",
    ),
    (
        "errors.when with text",
        _set("errors", value={"when": "failed: {{ response.ok }}"}),
        ("errors", "when"),
        "must be a single '{{ expression }}'",
    ),
    (
        "errors template using inputs",
        _set("errors", value={"code": "{{ inputs.n }}"}),
        ("errors", "code"),
        "unknown variable 'inputs' (available here: headers, response, status)",
    ),
    (
        "health check of an unknown method",
        _set("healthCheck", value={"method": "pong"}),
        ("healthCheck", "method"),
        "unknown method 'pong' (known: ping)",
    ),
    (
        "health check inputs breaking the schema",
        _set("healthCheck", value={"method": "ping", "input": {"n": "one"}}),
        ("healthCheck", "input", "n"),
        "not a valid input of method 'ping': 'one' is not of type 'integer'",
    ),
    (
        "health check of a method without a binding",
        _unbound_health_check,
        ("healthCheck", "method"),
        "method 'ping' is not callable (it has no 'http' or 'handler' binding)",
    ),
    (
        "both http and handler",
        _both,
        ("methods", 0),
        "'http' and 'handler' are mutually exclusive",
    ),
    (
        "handler not registered",
        _handler("prefect_integrations.handlers.nope:send"),
        ("methods", 0, "handler"),
        "handler 'prefect_integrations.handlers.nope:send' of definition 'demo' is not "
        "registered (registered handlers: gmail.send_message, tests.echo",
    ),
    (
        "handler not registered, although importable",
        _handler("os:system"),
        ("methods", 0, "handler"),
        "handler 'os:system' of definition 'demo' is not registered",
    ),
    (
        "handler attribute of a registered module not registered",
        _handler("prefect_integrations.handlers.gmail:nope"),
        ("methods", 0, "handler"),
        "handler 'prefect_integrations.handlers.gmail:nope' of definition 'demo' is not registered",
    ),
    (
        "handler path malformed",
        _handler("not a path"),
        ("methods", 0, "handler"),
        "'not a path' does not match",
    ),
    (
        "apikey placement on an oauth2 definition",
        lambda d: d.update(
            authType="oauth2",
            oauth2Config={
                "authorizationUrl": "https://a.example.com/authorize",
                "tokenUrl": "https://a.example.com/token",
                "scopes": ["read"],
            },
            auth={"apikey": {"in": "header", "name": "X-Key"}},
        ),
        ("auth", "apikey"),
        "only allowed when authType is 'apikey' (authType is 'oauth2')",
    ),
    (
        "custom scheme on an apikey definition",
        _set("auth", value={"custom": {"scheme": "basic"}}),
        ("auth", "custom"),
        "only allowed when authType is 'custom' (authType is 'apikey')",
    ),
    (
        "custom definition without a scheme",
        _set("authType", value="custom"),
        ("auth", "custom"),
        "required when authType is 'custom'",
    ),
    (
        "query placement without a name",
        _set("auth", value={"apikey": {"in": "query"}}),
        ("auth", "apikey"),
        "'name' is a required property",
    ),
    (
        "unknown placement",
        _set("auth", value={"apikey": {"in": "cookie", "name": "k"}}),
        ("auth", "apikey", "in"),
        "'cookie' is not one of",
    ),
    (
        "no baseUrl",
        _delete("baseUrl"),
        ("baseUrl",),
        "required when a method has an 'http' binding",
    ),
    (
        "baseUrl not http(s)",
        _set("baseUrl", value="ftp://files.example.com"),
        ("baseUrl",),
        "'ftp://files.example.com' is not an absolute http(s) URL",
    ),
    (
        "two body kinds",
        lambda d: d["methods"][0]["http"].update(method="POST", body={"json": {}, "form": {}}),
        ("methods", 0, "http", "body"),
        "exactly one of 'json', 'form' or 'raw' is required",
    ),
    (
        "body on a GET",
        _set("methods", 0, "http", "body", value={"json": {"a": 1}}),
        ("methods", 0, "http", "body"),
        "a GET request has no body",
    ),
    (
        "unknown verb",
        _set("methods", 0, "http", "method", value="FETCH"),
        ("methods", 0, "http", "method"),
        "'FETCH' is not one of",
    ),
    (
        "relative path",
        _set("methods", 0, "http", "path", value="ping"),
        ("methods", 0, "http", "path"),
        "'ping' does not match",
    ),
    (
        "unknown http field",
        _set("methods", 0, "http", "params", value={}),
        ("methods", 0, "http", "params"),
        "unknown field 'params'",
    ),
    (
        "bad header name",
        _set("headers", value={"Bad Header": "x"}),
        ("headers",),
        "'Bad Header' does not match",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_definition(
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    path: tuple[str | int, ...],
    message: str,
) -> None:
    document = demo_document()
    change(document)
    file = tmp_path / "demo.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    definitions, problems = collect([file])
    assert definitions == []
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}: {problems}"
    problem: DefinitionProblem = matching[0]
    assert problem.source == str(file)
    assert problem.message.startswith(message), problem.message
    assert str(problem).startswith(f"{file}: $")
    with pytest.raises(DefinitionError):
        load_registry([file], include_shipped=False)


def test_problems_of_several_templates_are_all_reported(tmp_path: Path) -> None:
    document = demo_document(headers={"A": "{{ config.x }", "B": "{{ nope }}"})
    document["methods"][0]["http"]["output"] = {"a": "{% for %}"}
    file = tmp_path / "demo.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    _, problems = collect([file])
    assert [p.path for p in problems] == [
        ("headers", "A"),
        ("headers", "B"),
        ("methods", 0, "http", "output", "a"),
    ]
