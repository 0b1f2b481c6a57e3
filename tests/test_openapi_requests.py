"""Every Xero and Slack request, built from an example input, validated against the description.

The requests are built by the package's own binding (`binding.prepare`) from an example
input of each method's ``inputSchema`` and validated with ``openapi-core``'s request
validator against the provider's published description; each output mapping is run on a
response built from the description's schema and checked against the ``outputSchema``.
Where the provider documents a behaviour the description does not have, the difference
is listed once in `KNOWN_DIFFERENCES` with the provider's documentation, and only that
part of the request is adapted before validation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from prefect_integrations import binding
from prefect_integrations.definitions import Definition, Method, shipped_definitions_dir
from prefect_integrations.definitions.model import build_definition
from prefect_integrations.definitions.rules import validate_document
from prefect_integrations.openapi import import_openapi, load_overlay, snake_case
from prefect_integrations.openapi.source import _TextLoader

from .openapi_support import (
    OVERLAYS,
    SPECS,
    example,
    import_with_overlay,
    swagger2_requests_as_openapi3,
)

# openapi-core has no check for OAuth 2.0 security schemes (the client adds the bearer token)
pytestmark = pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")
needs_specs = pytest.mark.skipif(not SPECS.is_dir(), reason="the descriptions are in shared/specs")
TENANT = "0f8fad5b-d9cb-469f-a165-70867728950e"
TOKEN = "xoxb-example"


class OpenAPIRequest:
    """An `httpx.Request` as openapi-core's request protocol reads it."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body: bytes | None = request.content or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(url.query, keep_blank_values=True)),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


@cache
def _openapi(spec: str) -> OpenAPI:
    text = (SPECS / spec).read_text(encoding="utf-8")
    document = json.loads(text) if spec.endswith(".json") else yaml.load(text, Loader=_TextLoader)
    if document.get("swagger") == "2.0":
        document = swagger2_requests_as_openapi3(document)
    # None skips openapi-core's own check of the description (it reports the descriptions'
    # known defects; the importer's conversion report covers them); the typing omits None
    return OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))  # type: ignore[arg-type]


@cache
def _definitions(integration: str, spec: str) -> tuple[Definition, Definition]:
    """The shipped definition and the one imported with the overlay."""
    shipped = json.loads((shipped_definitions_dir() / f"{integration}.json").read_text())
    imported = import_with_overlay(integration, spec)
    out = []
    for document in (shipped, imported):
        assert validate_document(document, source=integration) == []
        out.append(build_definition(document, source=integration))
    return out[0], out[1]


def _request(definition: Definition, method: Method) -> httpx.Request:
    inputs = example(method.input_schema)
    method.validate_input(inputs)
    request, _ = binding.prepare(definition, method, inputs, _config(definition))
    request.headers["Authorization"] = f"Bearer {TOKEN}"
    return request


def _errors(api: OpenAPI, request: httpx.Request) -> list[str]:
    """What the validator finds wrong with ``request`` (with each schema error's path)."""
    found = []
    for error in api.iter_request_errors(OpenAPIRequest(request)):
        details = getattr(error.__cause__, "schema_errors", None) or []
        found.append(f"{type(error).__name__}: {error}"[:300])
        found += [f"  at {list(d.absolute_path)}: {d.message[:200]}" for d in details]
    return found


@cache
def _responses(integration: str, spec: str) -> dict[str, Any]:
    """Method id -> an example success response generated from the description's schema."""
    overlay = load_overlay(OVERLAYS / f"{integration}.overlay.json")
    operations = overlay.settings["operations"]
    plain = import_openapi(
        SPECS / spec, integration_id=integration, operations=operations, max_depth=3
    )
    by_operation = dict(zip(operations, plain.document["methods"], strict=True))
    return {
        overlay.methods.get(op, {}).get("id", snake_case(op)): example(method["outputSchema"])
        for op, method in by_operation.items()
    }


def _check_output(definition: Definition, method: Method, response_body: Any) -> None:
    request, ctx = binding.prepare(
        definition, method, example(method.input_schema), _config(definition)
    )
    response = httpx.Response(200, json=response_body, request=request)
    method.validate_output(binding.parse(definition, method, response, ctx))


def _config(definition: Definition) -> dict[str, Any]:
    return {"tenant_id": TENANT} if definition.id == "xero" else {}


def _slack_token_param(api: OpenAPI, request: httpx.Request) -> httpx.Request:
    """Slack: the description's ``token`` parameter instead of ``Authorization: Bearer``."""
    operation = _operation(api, request)
    where = next((p["in"] for p in operation.get("parameters", []) if p["name"] == "token"), None)
    if where == "query":
        return httpx.Request(request.method, request.url.copy_add_param("token", TOKEN),
                             headers=request.headers, content=request.content)  # fmt: skip
    if where == "header":
        request.headers["token"] = TOKEN
    return request


def _slack_form_body(api: OpenAPI, request: httpx.Request) -> httpx.Request:
    """Slack: a JSON body (arrays as arrays) as the description's form fields."""
    fields = json.loads(request.content)
    form = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in fields.items()}
    form = {k: ("true" if v is True else "false" if v is False else v) for k, v in form.items()}
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in ("content-type", "content-length")
    }
    return httpx.Request(request.method, request.url, headers=headers, data=form)


def _slack_as_get(api: OpenAPI, request: httpx.Request) -> httpx.Request:
    """Slack: ``auth.test`` sent as POST, described as GET only."""
    return httpx.Request("GET", request.url, headers=request.headers)


#: Where Slack's description (older than the API) and Slack's documented behaviour differ:
#: (integration, method or "*") -> (what differs and where it is documented, the adaptation
#: that turns the request into the description's form before validation).
KNOWN_DIFFERENCES: dict[
    tuple[str, str], tuple[str, Callable[[OpenAPI, httpx.Request], httpx.Request]]
] = {
    ("slack", "*"): (
        "Slack documents the token in an 'Authorization: Bearer' header "
        "(https://api.slack.com/web#authentication); the description has a 'token' parameter",
        _slack_token_param,
    ),
    ("slack", "post_message"): (
        "chat.postMessage accepts a JSON body with 'blocks' as an array "
        "(https://api.slack.com/web#posting_json); the description has form fields, "
        "'blocks' as JSON text",
        _slack_form_body,
    ),
    ("slack", "auth_test"): (
        "auth.test accepts POST like every Web API method "
        "(https://api.slack.com/web#basics); the description has GET only",
        _slack_as_get,
    ),
}


def _operation(api: OpenAPI, request: httpx.Request) -> dict[str, Any]:
    spec = api.spec.read_value()
    base = urlsplit(spec["servers"][0]["url"]).path.rstrip("/")
    path = urlsplit(str(request.url)).path[len(base) :]
    return dict(spec["paths"].get(path, {}).get(request.method.lower(), {}))


def _adapted(
    api: OpenAPI, integration: str, method_id: str, request: httpx.Request
) -> httpx.Request:
    for key in ((integration, method_id), (integration, "*")):
        if key in KNOWN_DIFFERENCES:
            request = KNOWN_DIFFERENCES[key][1](api, request)
    return request


CASES = [("xero", "xero_accounting.yaml", 44), ("slack", "slack_web_openapi_v2.json", 33)]


@needs_specs
@pytest.mark.parametrize(("integration", "spec", "minimum"), CASES)
def test_requests_validate_against_the_description(
    integration: str, spec: str, minimum: int
) -> None:
    api = _openapi(spec)
    failures: dict[str, list[str]] = {}
    checked = 0
    for definition in _definitions(integration, spec):
        for method in definition.methods.values():
            request = _adapted(api, integration, method.id, _request(definition, method))
            errors = _errors(api, request)
            checked += 1
            if errors:
                failures[f"{definition.version} {method.id}"] = errors
    assert failures == {}
    assert checked >= minimum


@needs_specs
@pytest.mark.parametrize(("integration", "spec", "minimum"), CASES)
def test_output_mappings_read_the_described_responses(
    integration: str, spec: str, minimum: int
) -> None:
    responses = _responses(integration, spec)
    checked = 0
    for definition in _definitions(integration, spec):
        for method in definition.methods.values():
            _check_output(definition, method, responses[method.id])
            checked += 1
    assert checked >= minimum


def test_known_differences_are_documented() -> None:
    for (integration, _), (why, adapt) in KNOWN_DIFFERENCES.items():
        assert integration == "slack" and "https://api.slack.com/" in why and adapt.__doc__


@needs_specs
def test_the_validator_refuses_requests_the_description_does_not_allow() -> None:
    xero, _ = _definitions("xero", "xero_accounting.yaml")
    api = _openapi("xero_accounting.yaml")
    request = _request(xero, xero.method("get_invoice"))
    assert _errors(api, request) == []
    wrong = httpx.Request(
        "GET", str(request.url).replace(TENANT, "not-a-uuid"), headers=request.headers
    )
    assert _errors(api, wrong) != []  # InvoiceID is a uuid
    del request.headers["xero-tenant-id"]
    assert _errors(api, request) != []  # the tenant header is required

    _, slack = _definitions("slack", "slack_web_openapi_v2.json")
    api = _openapi("slack_web_openapi_v2.json")
    update = _adapted(api, "slack", "chat_update", _request(slack, slack.method("chat_update")))
    assert _errors(api, update) == []
    fields = parse_qs(update.content.decode())
    del fields["ts"]
    missing = httpx.Request("POST", update.url, headers={"token": TOKEN}, data=fields)
    assert _errors(api, missing) != []  # ts is required
