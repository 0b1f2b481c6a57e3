"""Bad input, fuzzed: method inputs, definitions, config, credentials and CLI arguments.

Every bad input must end in one clear error naming the thing and the JSON path inside it:
never a traceback, never a request sent to the provider, never a row written.

Valid method inputs are generated from each method's ``inputSchema`` with
hypothesis-jsonschema; invalid ones from the negated schema (``{"not": inputSchema}``) and
from targeted mutations of valid ones (wrong types, missing and extra properties, values
out of range, huge strings, NUL characters, deep nesting, values that are not JSON at all).
The calls go through the real client to a real loopback server (tests/provider.py).

Example counts are printed (``pytest -s``) as ``tried: ...`` lines; ``FUZZ_ARGS=1000`` tries
more command lines than the default 150.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from hypothesis_jsonschema._from_schema import STRING_FORMATS
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation

from prefect_integrations.cli import app
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.client import IntegrationClient, RetryPolicy
from prefect_integrations.db import Database
from prefect_integrations.definitions import (
    Definition,
    Method,
    Registry,
    collect,
    load_registry,
    meta_schema,
    shipped_definitions_dir,
)
from prefect_integrations.exceptions import (
    DefinitionError,
    ProviderError,
    ValidationError,
    format_json_path,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import instances
from prefect_integrations.store.definitions import sync_definitions
from prefect_integrations.store.vault import fetch_credentials
from prefect_integrations.tasks import build_task, call_method, method_signature
from prefect_integrations.validation import (
    MAX_DEPTH,
    credentials_validator,
    load_packaged_schema,
)

from .clirunner import Cli, assert_one_error, counts, use_definitions, write
from .conftest import ACME_DEFINITION
from .definitions import ECHO
from .factories import make_instance
from .provider import FakeProvider, Reply

SECRET = "canary-fuzz-7c1e5a9d"
FAST = RetryPolicy(max_attempts=1)

#: Formats our schemas use that hypothesis-jsonschema does not generate itself.
FORMATS = {"uuid": st.uuids().map(str)}

#: Keywords hypothesis-jsonschema (0.23) generates values for, of those a definition may use.
#: A schema using any other keyword fails `test_schemas_use_only_keywords_the_fuzzer_handles`
#: rather than being fuzzed wrongly without a word.
HANDLED_KEYWORDS = frozenset(
    {
        "$schema",
        "additionalProperties",
        "allOf",
        "anyOf",
        "const",
        "default",
        "dependencies",
        "description",
        "enum",
        "examples",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "multipleOf",
        "not",
        "oneOf",
        "pattern",
        "patternProperties",
        "properties",
        "propertyNames",
        "required",
        "title",
        "type",
        "uniqueItems",
    }
)
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_VALUE_KEYWORDS = ("enum", "const", "default", "examples", "required", "description", "title")

#: Every integration of ``echo_registry`` (shipped and test definitions), fuzzed one by one.
INTEGRATIONS = [
    "authsrv",
    "authsrv_m2m",
    "echo",
    "echo_basic",
    "echo_hmac",
    "echo_nohealth",
    "echo_oauth",
    "echo_query",
    "echo_rotating",
    "echo_userpass",
    "gmail",
    "slack",
    "xero",
]
VALID_EXAMPLES = 12  # per method, through the real client and the loopback provider
INVALID_EXAMPLES = 25  # per method
# A method imported from an OpenAPI description has inputs made by one converter
# (prefect_integrations.openapi), the same for all of them: the imported methods of an
# integration share a fixed budget, spread evenly (at least MIN_IMPORTED_EXAMPLES, at most
# the hand-written counts, each). 12 + 25 examples for each of Xero's and Slack's ~50
# took 105 s; the budget takes about a fifth. Methods whose inputs are written by hand
# (every method without an overlay, and those whose overlay gives `inputSchema`) keep
# VALID_EXAMPLES and INVALID_EXAMPLES.
IMPORTED_VALID_BUDGET = 150  # per integration
IMPORTED_INVALID_BUDGET = 300  # per integration
MIN_IMPORTED_EXAMPLES = 2
OVERLAYS = Path(__file__).resolve().parent.parent / "definitions" / "overlays"

INVOICE = {
    "contact_id": "84e8e97d-0cbd-40a4-8e66-dac17458e2fa",
    "line_items": [{"description": "d", "quantity": 1, "unit_amount": 1}],
}
TRIED: Counter[str] = Counter()


def _report(category: str, count: int) -> None:
    TRIED[category] += count
    print(f"tried: {category}: {count} (total {TRIED[category]})")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _may_be_string(schema: dict[str, Any]) -> bool:
    kind = schema.get("type", "string")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _keywords(schema: object, found: set[str], formats: set[str]) -> None:
    """Collect the keywords (and formats) used anywhere in a JSON Schema."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        found.add(key)
        if key == "format" and isinstance(value, str) and _may_be_string(schema):
            formats.add(value)  # a format constrains strings only (Xero's numbers: "double")
        if key in _VALUE_KEYWORDS:
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                _keywords(sub, found, formats)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for sub in value:
                _keywords(sub, found, formats)
        else:
            _keywords(value, found, formats)


def _credentials(definition: Definition) -> dict[str, Any]:
    if definition.auth_type == "apikey":
        return {"apikey": {"key": SECRET}}
    if definition.auth_type == "oauth2":
        return {"oauth2": {"access_token": SECRET}}
    if definition.id == "echo_hmac":
        return {"custom": {"key_id": "key-1", "secret": SECRET}}
    return {"custom": {"username": "ann", "password": SECRET}}


def _config(definition: Definition, url: str) -> dict[str, Any]:
    config: dict[str, Any] = {"base_url": url + "/v1"}
    if definition.id == "xero":
        config["tenant_id"] = "tenant-1"
    return config


def _instance(
    db: Database, registry: Registry, keyring: Keyring, integration: str, url: str
) -> str:
    definition = registry.get(integration)
    iid = f"{integration}_fuzz"
    with db.transaction() as session:
        if instances.get_instance(session, iid) is not None:
            return iid
        make_instance(
            session,
            registry,
            keyring,
            iid,
            integration,
            config=_config(definition, url),
            credentials=_credentials(definition),
            status={"state": "active"},
            actor="fuzz",
        )
    return iid


def _verb(method: Method) -> str:
    return method.http.verb if method.http is not None else "POST"


def _paths(value: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every location in a JSON value, the root first."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _at(value: Any, path: tuple[str | int, ...] | list[str | int]) -> Any:
    """The part of ``value`` at ``path``; KeyError/IndexError if the path does not exist."""
    for part in path:
        if not isinstance(value, dict | list):
            raise KeyError(part)
        value = cast(Any, value)[part]  # a list with a str index raises TypeError
    return value


def _replaced(value: Any, path: tuple[str | int, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.copy(value)
    out[path[0]] = _replaced(value[path[0]], path[1:], new)
    return out


def _nested(depth: int, leaf: Any = "x") -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


def _not_json_here(item: Any, depth: int) -> bool:
    """True if ``item`` (found ``depth`` levels deep) is a reason for a not-JSON error."""
    if isinstance(item, dict | list):
        if depth >= MAX_DEPTH:
            return True
        return isinstance(item, dict) and any(not isinstance(k, str) for k in item)
    if isinstance(item, str):  # PostgreSQL cannot store a NUL or a lone surrogate
        return any(char == "\x00" or "\ud800" <= char <= "\udfff" for char in item)
    if isinstance(item, bool) or item is None:
        return False
    if isinstance(item, int):
        return item.bit_length() > 4096
    if isinstance(item, float):
        return not math.isfinite(item)
    return True


def _all_errors(validator: Draft202012Validator, value: object) -> set[tuple[str | int, ...]]:
    """The absolute paths of every schema violation of ``value``, sub-errors included."""
    paths: set[tuple[str | int, ...]] = set()
    stack: list[SchemaViolation] = list(validator.iter_errors(value))
    while stack:
        error = stack.pop()
        paths.add(tuple(error.absolute_path))
        stack.extend(error.context or ())
    return paths


def _has_nul(value: object) -> bool:
    """True if a string or key anywhere in ``value`` holds a NUL character."""
    for path in _paths(value):
        item = _at(value, path)
        if (isinstance(item, str) and "\x00" in item) or any("\x00" in str(p) for p in path):
            return True
    return False


def _sendable(value: object) -> bool:
    """True unless a string refused whatever the schema says is in ``value``.

    Text PostgreSQL cannot store (a NUL character) and ``.`` or ``..`` (refused as a URL
    path segment) are refused before anything is sent.
    """
    if _has_nul(value):
        return False
    return not any(_at(value, p) in (".", "..") for p in _paths(value))


def _is_plain_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return not any(_not_json_here(_at(value, p), len(p)) for p in _paths(value))


def _expect_clear_input_error(
    error: ValidationError, method: Method, value: object, subject: str | None = None
) -> None:
    """The error names the method and a JSON path that exists in ``value`` and is wrong."""
    subject = subject or f"Input of '{method.qualified_name}'"
    assert error.subject == subject, str(error)
    assert str(error).startswith(f"{subject} is invalid at {format_json_path(error.path)}: ")
    item = _at(value, error.path)  # the path named exists in the value
    if _not_json_here(item, len(error.path)):
        return
    if error.path and _not_json_here(error.path[-1], 0):  # the key itself
        return
    assert _is_plain_json(value), f"{error} but the not-JSON part was elsewhere"
    assert tuple(error.path) in _all_errors(method.input_validator, value), str(error)


# Values that are not JSON, or not JSON a provider could be sent.
NOT_JSON: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    b"bytes",
    {1, 2},
    frozenset(),
    (1, 2),
    object(),
    {1: "int key"},
    {("a",): "tuple key"},
    10**2000,
    Decimal("1.5"),
    datetime.date(2026, 1, 1),
]
WRONG_TYPES: list[Any] = [None, True, False, 0, -1, 1.5, "", "text", [], {}, [1], {"k": 1}]
OUT_OF_RANGE: list[Any] = [-(10**12), 10**12, -0.5, 0, 10**30, -1e308]
MUTATIONS = (
    "wrong_type",
    "drop_key",
    "extra_key",
    "out_of_range",
    "huge_string",
    "nul",
    "deep",
    "not_json",
)


@st.composite
def mutated(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A valid value of ``schema`` with one part made wrong (or unusual)."""
    value = draw(from_schema(schema, custom_formats=FORMATS))
    path = draw(st.sampled_from(list(_paths(value))))
    target = _at(value, path)
    kind = draw(st.sampled_from(MUTATIONS))
    if kind == "drop_key" and isinstance(target, dict) and target:
        key = draw(st.sampled_from(sorted(target)))
        return _replaced(value, path, {k: v for k, v in target.items() if k != key})
    if kind == "extra_key" and isinstance(target, dict):
        return _replaced(value, path, {**target, "zz_unexpected": draw(st.sampled_from([1, "x"]))})
    if kind == "out_of_range":
        return _replaced(value, path, draw(st.sampled_from(OUT_OF_RANGE)))
    if kind == "huge_string":
        return _replaced(value, path, "x" * 200_000)
    if kind == "nul":
        text = target if isinstance(target, str) else ""
        return _replaced(value, path, text[:3] + "\x00" + text[3:])
    if kind == "deep":
        depth = draw(st.sampled_from([MAX_DEPTH + 1, 600, 20_000]))
        return _replaced(value, path, _nested(depth))
    if kind == "not_json":
        return _replaced(value, path, draw(st.sampled_from(NOT_JSON)))
    return _replaced(value, path, draw(st.sampled_from(WRONG_TYPES)))


def invalid_inputs(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that break ``schema`` (or are unusual): the negated schema and mutations."""
    return st.one_of(from_schema({"not": schema}, custom_formats=FORMATS), mutated(schema))


# --------------------------------------------------------------------------------------
# The fuzzer covers every schema
# --------------------------------------------------------------------------------------


def test_every_integration_is_fuzzed(echo_registry: Registry) -> None:
    assert sorted(echo_registry.ids()) == INTEGRATIONS


def test_imported_methods_share_a_budget_and_hand_written_ones_do_not(
    echo_registry: Registry,
) -> None:
    xero = echo_registry.get("xero")
    imported = _imported_methods("xero")
    assert "get_contact" in imported and "create_invoice" not in imported
    assert _examples(xero, xero.method("create_invoice")) == (VALID_EXAMPLES, INVALID_EXAMPLES)
    valid, invalid = _examples(xero, xero.method("get_contact"))
    assert valid * len(imported) <= max(IMPORTED_VALID_BUDGET, 2 * len(imported))
    assert invalid * len(imported) <= max(IMPORTED_INVALID_BUDGET, 2 * len(imported))
    assert _imported_methods("gmail") == set()


def test_schemas_use_only_keywords_the_fuzzer_handles(
    echo_registry: Registry, test_registry: Registry
) -> None:
    used: set[str] = set()
    formats: set[str] = set()
    for registry in (echo_registry, test_registry):
        for definition in registry:
            _keywords(definition.raw["configSchema"], used, formats)
            for method in definition.methods.values():
                _keywords(method.input_schema, used, formats)
    assert used - HANDLED_KEYWORDS == set(), "teach the fuzzer these keywords first"
    assert formats - set(STRING_FORMATS) - set(FORMATS) == set(), "add a strategy for these"
    assert formats >= {"uuid", "email", "date", "uri"}


# --------------------------------------------------------------------------------------
# Method inputs through the real client
# --------------------------------------------------------------------------------------


def _imported_methods(integration: str) -> set[str]:
    """Ids of the methods of ``integration`` whose inputs the OpenAPI import made."""
    path = OVERLAYS / f"{integration}.overlay.json"
    if not path.is_file():
        return set()
    document = json.loads(path.read_text(encoding="utf-8"))
    methods = document.get("methods", {})
    hand_written = {m["id"] for m in methods.values() if "inputSchema" in m and "id" in m}
    definition = json.loads(
        (shipped_definitions_dir() / f"{integration}.json").read_text(encoding="utf-8")
    )
    return {m["id"] for m in definition["methods"]} - hand_written


def _examples(definition: Definition, method: Method) -> tuple[int, int]:
    """How many valid and invalid inputs to try for ``method`` (see IMPORTED_VALID_BUDGET)."""
    imported = _imported_methods(definition.id) & set(definition.methods)
    if method.id not in imported:
        return VALID_EXAMPLES, INVALID_EXAMPLES
    valid = max(MIN_IMPORTED_EXAMPLES, IMPORTED_VALID_BUDGET // len(imported))
    invalid = max(MIN_IMPORTED_EXAMPLES, IMPORTED_INVALID_BUDGET // len(imported))
    return min(VALID_EXAMPLES, valid), min(INVALID_EXAMPLES, invalid)


def _fuzz_valid(
    client: IntegrationClient,
    provider: FakeProvider,
    method: Method,
    tally: Counter[str],
    examples: int = VALID_EXAMPLES,
) -> None:
    @settings(max_examples=examples)
    @given(value=from_schema(method.input_schema, custom_formats=FORMATS).filter(_sendable))
    def check(value: Any) -> None:
        assert method.input_validator.is_valid(value)
        sent = len(provider.requests)
        with contextlib.suppress(ProviderError):  # the provider's answer (404) may be anything
            client.call(method.id, value)
        assert len(provider.requests) == sent + 1
        request = provider.requests[-1]
        assert request.method == _verb(method)
        assert request.path.startswith("/v1/")
        if request.headers.get("content-type", "").startswith("application/json"):
            json.loads(request.body)
        tally["valid"] += 1

    check()


def _fuzz_invalid(
    client: IntegrationClient,
    provider: FakeProvider,
    method: Method,
    tally: Counter[str],
    examples: int = INVALID_EXAMPLES,
) -> None:
    @settings(max_examples=examples)
    @given(value=invalid_inputs(method.input_schema))
    def check(value: Any) -> None:
        sent = len(provider.requests)
        effective = {} if value is None else value  # None means "no inputs"
        refused = not _is_plain_json(effective) or not method.input_validator.is_valid(effective)
        try:
            client.call(method.id, value)
        except ValidationError as error:
            assert len(provider.requests) == sent, "a refused input was sent"
            _expect_clear_input_error_or_binding(error, method, value)
            tally["refused"] += 1
            return
        except ProviderError:
            pass
        # Accepted: only an input its schema allows (e.g. a NUL in free text).
        assert not refused, f"{value!r:.200} was accepted"
        assert len(provider.requests) == sent + 1
        tally["unusual but valid"] += 1

    check()


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_method_inputs_valid_are_sent_and_invalid_never_are(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    integration: str,
) -> None:
    definition = echo_registry.get(integration)
    iid = _instance(echo_db, echo_registry, keyring, integration, provider.url)
    tally: Counter[str] = Counter()
    with IntegrationClient(
        iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="fuzz", retry=FAST
    ) as client:
        for method in definition.methods.values():
            valid, invalid = _examples(definition, method)
            _fuzz_valid(client, provider, method, tally, valid)
            _fuzz_invalid(client, provider, method, tally, invalid)
    imported = _imported_methods(integration) & set(definition.methods)
    print(
        f"tried: {integration}: {len(definition.methods)} methods "
        f"({len(imported)} imported), {dict(tally)}"
    )
    _report("method inputs: valid", tally["valid"])
    _report("method inputs: invalid or unusual", tally["refused"] + tally["unusual but valid"])
    assert tally["refused"] > 0


def _expect_clear_input_error_or_binding(
    error: ValidationError, method: Method, value: object
) -> None:
    """Input validation names the input path; a header the binding refuses names the header."""
    if error.subject.startswith("Request of "):
        assert error.subject == f"Request of '{method.qualified_name}'"
        assert error.path[0] in ("headers", "url"), str(error)
        return
    _expect_clear_input_error(error, method, value)


def test_non_mapping_inputs_are_a_validation_error(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(echo_db, echo_registry, keyring, "echo", provider.url)
    method = echo_registry.get("echo").method("get_item")
    with IntegrationClient(
        iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="fuzz", retry=FAST
    ) as client:
        for value in (["item_id", 1], "item_id=1", 5, {("item_id",): 1}, {1, 2}):
            with pytest.raises(ValidationError) as info:
                client.call("get_item", value)  # type: ignore[arg-type]
            _expect_clear_input_error(info.value, method, value)
            assert info.value.path == ()
    assert provider.requests == []


def test_dot_segments_in_a_url_path_are_refused_naming_the_input(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    """``.`` and ``..`` are sent as ``%2E%2E``, which servers read as the parent path."""
    iid = _instance(echo_db, echo_registry, keyring, "echo_rotating", provider.url)
    with IntegrationClient(
        iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="fuzz", retry=FAST
    ) as client:
        for value in (".", ".."):
            with pytest.raises(ValidationError) as info:
                client.call("revoke_key", {"key_id": value})
            assert info.value.subject == "Input" and info.value.path == ("key_id",)
            assert f"{value!r} cannot be sent as a URL path segment" in str(info.value)
        assert provider.requests == []
        with contextlib.suppress(ProviderError):  # the provider's answer may be anything
            client.call("revoke_key", {"key_id": "..."})  # not a dot segment: sent
    assert len(provider.requests) == 1 and provider.requests[0].path.endswith("/keys/...")


def test_header_values_are_checked_before_sending(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(echo_db, echo_registry, keyring, "xero", provider.url)
    base = INVOICE
    method = echo_registry.get("xero").method("create_invoice")
    with IntegrationClient(
        iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="fuzz", retry=FAST
    ) as client:
        for key in ("clé", "a b", "a\x00b", "a\rb", "\u2028"):
            with pytest.raises(ValidationError) as info:
                client.call("create_invoice", {**base, "idempotency_key": key})
            _expect_clear_input_error(info.value, method, {**base, "idempotency_key": key})
            assert info.value.path == ("idempotency_key",)
        # '$' also matches before a final line break: the binding refuses it instead.
        with pytest.raises(ValidationError) as info:
            client.call("create_invoice", {**base, "idempotency_key": "key\n"})
        assert str(info.value) == (
            "Request of 'xero.create_invoice' is invalid at $.headers['Idempotency-Key']: header "
            "value may only contain printable ASCII characters (no line breaks, control or "
            "non-ASCII characters)"
        )
    assert provider.requests == []


def test_gmail_refuses_every_kind_of_line_break_in_headers(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    iid = _instance(echo_db, echo_registry, keyring, "gmail", provider.url)
    method = echo_registry.get("gmail").method("send_message")
    with IntegrationClient(
        iid, db=echo_db, registry=echo_registry, keyring=keyring, actor="fuzz", retry=FAST
    ) as client:
        for brk in ("\r", "\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"):
            for inputs in (
                {"to": ["a@b.example"], "body_text": "x", "subject": f"hi{brk}Bcc: x@y"},
                {"to": [f"a@b.example{brk}Bcc: x@y"], "body_text": "x"},
                {"to": ["a@b.example"], "body_text": "x", "reply_to": f"r@b.example{brk}"},
            ):
                with pytest.raises(ValidationError) as info:
                    client.call("send_message", inputs)
                assert str(info.value).startswith("Input of 'gmail.send_message' is invalid at $.")
                assert _at(inputs, info.value.path)  # names the input holding the break
        assert method.input_validator.is_valid({"to": ["a@b.example"], "body_text": "é\n\u2028"})
    assert provider.requests == []


# --------------------------------------------------------------------------------------
# Method inputs through the generated tasks and the CLI
# --------------------------------------------------------------------------------------

#: (integration, method, a valid input) fuzzed through the tasks and the CLI.
SAMPLE_METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("echo", "get_item", {"item_id": 1}),
    ("echo", "create_item", {"name": "n"}),
    ("xero", "create_invoice", INVOICE),
    ("slack", "post_message", {"channel": "C1", "text": "t"}),
    ("gmail", "send_message", {"to": ["a@b.example"], "body_text": "x"}),
]


def _fuzz_task(run: Any, integration: str, method: Method, iid: str, tally: Counter[str]) -> None:
    _, names = method_signature(method)
    parameter = {prop: name for name, prop in names.items()}

    @settings(max_examples=15)
    @given(value=mutated(method.input_schema))
    def check(value: Any) -> None:
        if not isinstance(value, dict) or (
            _is_plain_json(value) and method.input_validator.is_valid(value)
        ):
            return
        if any(v is None for v in value.values()):
            return  # a task omits None arguments (they mean "not given")
        kwargs = {parameter.get(str(k), str(k)): v for k, v in value.items()}
        with pytest.raises(ValidationError) as info:
            run(instance=iid, **kwargs)
        _expect_clear_input_error(info.value, method, value)
        with pytest.raises(ValidationError) as info:
            call_method(integration, method.id, value, iid)
        _expect_clear_input_error(info.value, method, value)
        tally["tried"] += 2

    check()


@pytest.mark.usefixtures("env")
def test_task_functions_refuse_invalid_inputs_and_send_nothing(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    tally: Counter[str] = Counter()
    for integration, method_id, valid in SAMPLE_METHODS:
        definition = echo_registry.get(integration)
        method = definition.method(method_id)
        iid = _instance(echo_db, echo_registry, keyring, integration, provider.url)
        run = build_task(definition, method).fn
        _fuzz_task(run, integration, method, iid, tally)
        # An unknown keyword is refused by name, not dropped.
        with pytest.raises(ValidationError, match=r"at \$: .*'not_a_parameter' was unexpected"):
            run(instance=iid, not_a_parameter=1, **valid)
    assert provider.requests == []
    _report("task/call_method inputs", tally["tried"])
    assert tally["tried"] > 0


def _fuzz_cli_call(cli: Cli, db: Database, method: Method, iid: str, tally: Counter[str]) -> None:
    target = method.qualified_name

    @settings(max_examples=10)
    @given(value=invalid_inputs(method.input_schema))
    def check(value: Any) -> None:
        if not _is_plain_json(value) or method.input_validator.is_valid(value):
            return
        before = counts(db)
        result = cli("call", target, "--instance", iid, "--input", json.dumps(value))
        if isinstance(value, dict):
            line = assert_one_error(result, "validation_error", f"Input of '{target}'")
            assert " is invalid at $" in line
        else:
            assert_one_error(result, "validation_error", "Call input", "JSON object")
        assert counts(db)[0] == before[0]
        tally["tried"] += 1

    check()


@pytest.mark.usefixtures("env")
def test_cli_call_refuses_invalid_inputs_with_one_error_line(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = Cli(capsys, monkeypatch, [SECRET])
    tally: Counter[str] = Counter()
    deep = "[" * 100_000 + "]" * 100_000
    for integration, method_id, _ in SAMPLE_METHODS:
        method = echo_registry.get(integration).method(method_id)
        iid = _instance(echo_db, echo_registry, keyring, integration, provider.url)
        _fuzz_cli_call(cli, echo_db, method, iid, tally)
        for text, fragment in (
            ('{"item_id": NaN}', "NaN"),
            ("{" + '"a":' * 5, "not valid JSON"),
            ('{"a": ' + deep + "}", "nested too deeply"),
            ("[1]", "JSON object"),
        ):
            result = cli("call", method.qualified_name, "--instance", iid, "--input", text)
            assert_one_error(result, "validation_error", fragment)
            tally["tried"] += 1
    assert provider.requests == []
    cli.assert_no_secrets()
    _report("CLI call inputs", tally["tried"])


#: Text from outside that would steer a terminal: erase the line, return to its start and
#: print a fake success; an OSC title, a C1 CSI, a bidi override, a bell and DEL.
FORGED = "\x1b[2K\r'echo.get_item' succeeded\x1b]0;t\x07 \x9b31m \u202edesrever\u2066 \x7f"
RAW_CONTROLS = ("\x1b", "\r", "\x07", "\x9b", "\u202e", "\u2066", "\x7f")


@pytest.mark.usefixtures("env")
def test_cli_escapes_terminal_controls_from_outside(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = Cli(capsys, monkeypatch, [SECRET])
    iid = _instance(echo_db, echo_registry, keyring, "echo", provider.url)
    escaped = (
        "\\x1b[2K\\r'echo.get_item' succeeded\\x1b]0;t\\x07 \\x9b31m \\u202edesrever\\u2066 \\x7f"
    )

    # A provider's error message: still one error line, every control escaped.
    provider.reply("GET", "/v1/items/5", Reply(400, {"error": {"code": "E1", "message": FORGED}}))
    failed = cli("call", "echo.get_item", "--instance", iid, "--input", '{"item_id": 5}')
    assert_one_error(failed, "provider_error", f"failed: HTTP 400 [E1]: {escaped}")
    assert not any(c in failed.err for c in RAW_CONTROLS), repr(failed.err)
    # ... and a line break in it cannot add a line of its own.
    provider.reply("GET", "/v1/items/6", Reply(400, {"error": {"message": "x\nok: done"}}))
    broken = cli("call", "echo.get_item", "--instance", iid, "--input", '{"item_id": 6}')
    assert_one_error(broken, "provider_error", "x\\nok: done")

    # A provider's output, as text and as JSON.
    provider.reply("GET", "/v1/items/7", Reply(200, {"id": 7, "name": FORGED}))
    shown = cli.ok("call", "echo.get_item", "--instance", iid, "--input", '{"item_id": 7}')
    assert not any(c in shown.out for c in RAW_CONTROLS), repr(shown.out)
    provider.reply("GET", "/v1/items/7", Reply(200, {"id": 7, "name": FORGED}))
    as_json = cli.ok(
        "call", "echo.get_item", "--instance", iid, "--input", '{"item_id": 7}', "--json"
    )
    assert not any(c in as_json.out for c in RAW_CONTROLS), repr(as_json.out)
    assert json.loads(as_json.out)["name"] == FORGED

    # Names and descriptions: in the table one line per row, in JSON intact.
    cli.ok("instances", "update", iid, "--name", FORGED + "\nfake_row", "--description", FORGED)
    for args in (("instances", "list"), ("instances", "show", iid)):
        out = cli.ok(*args).out
        assert not any(c in out for c in RAW_CONTROLS), (args, out)
        assert "\nfake_row" not in out, (args, out)
    listed = cli.ok("instances", "list", "--json").out
    assert not any(c in listed for c in RAW_CONTROLS), repr(listed)
    found = {doc["instanceId"]: doc for doc in json.loads(listed)}
    assert found[iid]["name"] == FORGED + "\nfake_row"
    cli.assert_no_secrets()


# --------------------------------------------------------------------------------------
# Malformed definitions
# --------------------------------------------------------------------------------------

_folders = iter(range(1_000_000))


def _xero_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((shipped_definitions_dir() / "xero.json").read_text())
    return document


def _echo_document() -> dict[str, Any]:
    return copy.deepcopy(ECHO)


DOCUMENTS = {"echo": _echo_document, "xero": _xero_document}


def _write_definition(root: Path, integration: str, content: object) -> tuple[Path, str]:
    """Write one definition file into a fresh folder; return (folder, file)."""
    folder = root / f"definitions-{next(_folders)}"
    folder.mkdir()
    path = folder / f"{integration}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return folder, str(path)


def _problems(
    root: Path, integration: str, content: object, *, via_registry: bool = True
) -> tuple[str, list[str]]:
    """The problems `collect` reports for one file (it never raises for bad content)."""
    folder, source = _write_definition(root, integration, content)
    found, problems = collect([folder])
    assert all(p.source == source for p in problems)
    rendered = [str(p) for p in problems]
    for line in rendered:
        assert line.startswith(f"{source}: $"), line
        assert "\n" not in line and "Traceback" not in line
    if problems:
        assert found == []
    if problems and via_registry:
        with pytest.raises(DefinitionError) as info:
            load_registry([folder])
        assert all(line in str(info.value) for line in rendered)
    return source, rendered


def _mutate(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    target = _at(out, path[:-1])
    target[path[-1]] = value
    return out


# (id, integration, change to apply to the document, JSON path named, fragment of the message)
DEFINITION_CASES: list[tuple[str, str, Any, str, str]] = [
    ("bad-semver", "echo", (("version",), "1.0"), "$.version", "not a semantic version"),
    ("semver-with-newline", "echo", (("version",), "1.0.0\n"), "$.version", "line break"),
    (
        "duplicate-method-id",
        "echo",
        (("methods", 1, "id"), "get_item"),
        "$.methods[1].id",
        "duplicate method id 'get_item'",
    ),
    (
        "bad-regex",
        "echo",
        (("methods", 1, "inputSchema", "properties", "name", "pattern"), "("),
        "$.methods[1].inputSchema.properties.name.pattern",
        "not a 'regex'",
    ),
    (
        "format-not-a-string",
        "echo",
        (("methods", 1, "inputSchema", "properties", "name", "format"), 5),
        "$.methods[1].inputSchema.properties.name.format",
        "invalid JSON Schema",
    ),
    (
        "unknown-schema-type",
        "echo",
        (("methods", 0, "inputSchema", "type"), "strin"),
        "$.methods[0].inputSchema.type",
        "'strin' is not a JSON Schema type",
    ),
    (
        "schema-not-an-object",
        "echo",
        (("methods", 0, "inputSchema"), "object"),
        "$.methods[0].inputSchema",
        "'object'",
    ),
    (
        "other-dialect",
        "echo",
        (("configSchema", "$schema"), "http://json-schema.org/draft-04/schema#"),
        "$.configSchema['$schema']",
        "unsupported dialect",
    ),
    (
        "unclosed-template",
        "echo",
        (("methods", 0, "http", "path"), "/items/{{ inputs.item_id "),
        "$.methods[0].http.path",
        "",
    ),
    (
        "unknown-template-variable",
        "echo",
        (("methods", 0, "http", "path"), "/{{ secrets.x }}"),
        "$.methods[0].http.path",
        "secrets",
    ),
    ("unknown-auth-type", "echo", (("authType",), "magic"), "$.authType", "'magic'"),
    (
        "oauth2-without-config",
        "echo",
        (("authType",), "oauth2"),
        "$.oauth2Config",
        "required when authType is 'oauth2'",
    ),
    (
        "health-check-unknown-method",
        "echo",
        (("healthCheck", "method"), "nope"),
        "$.healthCheck.method",
        "unknown method 'nope'",
    ),
    (
        "health-check-bad-input",
        "echo",
        (("healthCheck", "input"), {"item_id": 0}),
        "$.healthCheck.input.item_id",
        "not a valid input of method 'get_item'",
    ),
    (
        "unknown-field",
        "echo",
        (("methods", 0, "colour"), "red"),
        "$.methods[0].colour",
        "unknown field 'colour'",
    ),
    (
        "get-with-body",
        "echo",
        (("methods", 0, "http", "body"), {"json": {}}),
        "$.methods[0].http.body",
        "a GET request has no body",
    ),
    (
        "bad-verb",
        "echo",
        (("methods", 0, "http", "method"), "FETCH"),
        "$.methods[0].http.method",
        "'FETCH'",
    ),
    (
        "base-url-not-http",
        "echo",
        (("baseUrl",), "ftp://x"),
        "$.baseUrl",
        "not an absolute http(s) URL",
    ),
    (
        "handler-not-importable",
        "echo",
        (("methods", 0, "handler"), "no.such.module:x"),
        "$.methods[0]",
        "mutually exclusive",
    ),
    (
        "scope-not-requested",
        "xero",
        (("methods", 0, "requiredScopes"), ["payroll.admin"]),
        "$.methods[0].requiredScopes[0]",
        "not requested",
    ),
    (
        "id-not-an-identifier",
        "echo",
        (("integrationId",), "Echo Service"),
        "$.integrationId",
        "not a valid id",
    ),
    (
        "id-not-the-file-name",
        "echo",
        (("integrationId",), "other"),
        "$.integrationId",
        "does not match id 'other'",
    ),
]


@pytest.mark.parametrize(
    ("integration", "change", "path", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in DEFINITION_CASES],
)
def test_malformed_definition_names_the_file_and_path(
    tmp_path: Path, integration: str, change: Any, path: str, fragment: str
) -> None:
    document = _mutate(DOCUMENTS[integration](), *change)
    source, problems = _problems(tmp_path, integration, document)
    prefix = f"{source}: {path}: "
    assert any(p.startswith(prefix) and fragment in p for p in problems), problems


@pytest.mark.parametrize("integration", sorted(DOCUMENTS))
def test_every_top_level_field_removed_or_of_the_wrong_type(
    tmp_path: Path, integration: str
) -> None:
    document = DOCUMENTS[integration]()
    required = set(meta_schema()["required"]) | {"baseUrl"}
    if document["authType"] == "oauth2":
        required.add("oauth2Config")
    tried = 0
    for field in document:
        removed = {k: v for k, v in document.items() if k != field}
        source, problems = _problems(tmp_path, integration, removed)
        tried += 1
        if field in required:
            assert any(f"'{field}'" in p or f"$.{field}:" in p for p in problems), (field, problems)
        else:
            assert problems == [], (field, problems)
        wrong: Any
        for wrong in (None, 1, 1.5, True, "text", [], {}):
            if type(wrong) is type(document[field]):
                continue
            source, problems = _problems(tmp_path, integration, {**document, field: wrong})
            tried += 1
            assert any(f"{source}: $.{field}" in p for p in problems), (field, wrong, problems)
    _report(f"definition fields removed or retyped ({integration})", tried)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param('{"integrationId": "echo", "name": }', "malformed JSON", id="syntax"),
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
        pytest.param('{"integrationId": NaN}', "malformed JSON", id="nan"),
        pytest.param("[]", "top level must be a JSON object", id="array"),
        pytest.param(
            '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply", id="deep-json"
        ),
        pytest.param(
            json.dumps({**ECHO, "x": _nested(MAX_DEPTH + 5)}),
            "nested too deeply",
            id="deep-document",
        ),
        pytest.param("", "malformed JSON", id="empty"),
    ],
)
def test_unreadable_definition_file(tmp_path: Path, content: str | bytes, fragment: str) -> None:
    _, problems = _problems(tmp_path, "echo", content)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_every_location_of_a_definition_with_a_wrong_type(tmp_path: Path) -> None:
    """Each part of the echo definitions in turn replaced by a value of another type."""
    from .definitions import _rotating

    tried = 0
    wrong: Any
    for document in (_echo_document(), _rotating()):
        for path in list(_paths(document))[1:]:
            for wrong in ([], {}, 5, None, True):
                if type(wrong) is type(_at(document, path)):
                    continue
                _problems(
                    tmp_path,
                    document["integrationId"],
                    _mutate(document, path, wrong),
                    via_registry=False,
                )
                tried += 1
    _report("definition locations retyped", tried)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def test_fuzzed_definitions_are_reported_never_raised(tmp_path: Path) -> None:
    tally: Counter[str] = Counter()

    @settings(max_examples=150)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        integration = data.draw(st.sampled_from(sorted(DOCUMENTS)))
        document = DOCUMENTS[integration]()
        path = data.draw(st.sampled_from([p for p in _paths(document) if p]))
        if data.draw(st.booleans()):
            mutated_doc = _mutate(document, path, data.draw(JSON_VALUES))
            text = json.dumps(mutated_doc)
        else:
            text = json.dumps(document)
            text = text[: data.draw(st.integers(0, len(text) - 1))]  # cut short
        _problems(tmp_path, integration, text)  # asserts every problem is well formed
        tally["tried"] += 1

    check()
    _report("fuzzed definition files", tally["tried"])


@pytest.fixture
def cli(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    runner = Cli(capsys, monkeypatch, [SECRET])
    yield runner
    runner.assert_no_secrets()


def _store_counts(db: Database) -> tuple[int, int, int, str]:
    """(instances, audit rows, definitions, digest of the stored definitions)."""
    with db.transaction() as session:
        defined = session.execute(
            sa.text(
                "SELECT count(*), coalesce(md5(string_agg(d::text, ',' ORDER BY d.id)), '') "
                "FROM integration_definitions d"
            )
        ).one()
    found, rows = counts(db)
    return found, rows, int(defined[0]), str(defined[1])


def test_cli_validate_and_sync_refuse_bad_definitions_and_write_nothing(
    cli: Cli, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.ok("definitions", "sync")
    tried = 0
    for case in DEFINITION_CASES:
        _, integration, change, path, fragment = case
        folder, source = _write_definition(
            tmp_path, integration, _mutate(DOCUMENTS[integration](), *change)
        )
        before = _store_counts(db)

        result = cli("definitions", "validate", str(folder))
        assert result.code == 1, (case[0], result)
        assert "Traceback" not in result.out + result.err
        lines = result.err.splitlines()
        assert lines[-1] == f"{len(lines) - 1} problem(s) in definitions"
        assert all(line.startswith(f"{source}: $") for line in lines[:-1]), lines
        assert any(
            line.startswith(f"{source}: {path}: ") and fragment in line for line in lines[:-1]
        ), lines

        monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(folder))
        reset_runtime()
        result = cli("definitions", "sync")
        assert result.code == 1 and result.out == "", (case[0], result)
        assert "Traceback" not in result.err
        assert result.err.startswith("error[definition_invalid]: "), result.err
        assert f"{source}: {path}: " in result.err
        assert _store_counts(db) == before
        tried += 2
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", "")
    reset_runtime()
    _report("CLI definitions validate/sync", tried)


# --------------------------------------------------------------------------------------
# Malformed config and credentials
# --------------------------------------------------------------------------------------


def _for_generator(schema: dict[str, Any]) -> Any:
    """``schema`` as hypothesis-jsonschema understands it: refs inlined, draft-07 keywords.

    hypothesis-jsonschema resolves no ``$ref`` into ``$defs`` and does not know the 2019-09
    ``dependentRequired``; its draft-07 form is ``dependencies`` with a list of names.
    """
    definitions = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/$defs/")
            return walk({**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}})
        out = {}
        for key, value in node.items():
            if key in ("$defs", "$schema", "$id"):
                continue
            out["dependencies" if key == "dependentRequired" else key] = walk(value)
        return out

    return walk(schema)


def _plant(value: dict[str, Any], secret: str) -> dict[str, Any]:
    """``value`` with every string, at the top level and one section down, set to ``secret``."""
    return {
        k: secret
        if isinstance(v, str)
        else {n: (secret if isinstance(x, str) else x) for n, x in v.items()}
        if isinstance(v, dict)
        else v
        for k, v in value.items()
    }


def _credentials_variant(auth_type: str) -> Any:
    """The credentials schema of one authType, for the generator."""
    schema = load_packaged_schema("credentials.schema.json")
    return _for_generator({"$defs": schema["$defs"], "$ref": f"#/$defs/{auth_type}"})


CONFIG_INTEGRATIONS = ["acme", "echo", "gmail", "signer", "slack", "xero"]
CREDENTIAL_INTEGRATIONS = {"oauth2": "xero", "apikey": "acme", "custom": "signer"}


@pytest.fixture
def store_registry(echo_dir: Path, tmp_path: Path) -> Registry:
    """Shipped, echo and the conftest test definitions (acme: apikey; signer: loose config)."""
    from .conftest import SIGNER_DEFINITION

    folder = tmp_path / "test-definitions"
    folder.mkdir()
    (folder / "acme.json").write_text(ACME_DEFINITION)
    (folder / "signer.json").write_text(SIGNER_DEFINITION)
    return load_registry([echo_dir, folder])


@pytest.fixture
def store_db(db: Database, store_registry: Registry, keyring: Keyring) -> Database:
    """Every definition synced and one instance ``existing`` per integration fuzzed."""
    with db.transaction() as session:
        sync_definitions(session, store_registry, actor="tests")
        for integration in sorted(set(CONFIG_INTEGRATIONS) | set(CREDENTIAL_INTEGRATIONS.values())):
            definition = store_registry.get(integration)
            instances.create_instance(
                session,
                store_registry,
                keyring,
                instance_id=f"existing_{integration}",
                integration_id=integration,
                name="Existing",
                scope=Scope("global"),
                config=_config(definition, "https://x.example") if integration != "signer" else {},
                credentials=_store_credentials(definition),
                actor="tests",
            )
    return db


def _store_credentials(definition: Definition) -> dict[str, Any]:
    if definition.auth_type == "custom":
        return {"custom": {"key_id": "k", "secret": SECRET}}
    return _credentials(definition)


def _snapshot(db: Database) -> tuple[Any, ...]:
    """Everything a refused write must leave alone: counts, rows, ciphertexts."""
    with db.transaction() as session:
        rows = session.execute(
            sa.text(
                "SELECT instance_id, name, config::text, status::text, context_type, "
                "coalesce(context_id, ''), credentials_version, "
                "md5(coalesce(credentials::text, '')) "
                "FROM integration_instances ORDER BY instance_id"
            )
        ).all()
    return (*_store_counts(db), tuple(tuple(r) for r in rows))


class _Undo(Exception):
    """Raised to roll back a write that was accepted."""


def _fuzz_config(
    db: Database, registry: Registry, keyring: Keyring, integration: str, tally: Counter[str]
) -> None:
    definition = registry.get(integration)
    validator = definition.config_validator
    credentials = _store_credentials(definition)

    @settings(max_examples=20)
    @given(value=invalid_inputs(_for_generator(definition.raw["configSchema"])))
    def check(value: Any) -> None:
        effective = {} if value is None else value
        storable = _is_plain_json(effective) and not _has_nul(effective)
        refused = not storable or not validator.is_valid(effective)
        before = _snapshot(db)
        for action in ("create", "update"):
            subject = "Config of instance " + (
                "'fz'" if action == "create" else f"'existing_{integration}'"
            )
            try:
                with db.transaction() as session:
                    if action == "create":
                        instances.create_instance(
                            session,
                            registry,
                            keyring,
                            instance_id="fz",
                            integration_id=integration,
                            name="Fz",
                            scope=Scope("global"),
                            config=value,
                            credentials=credentials,
                            actor="fuzz",
                        )
                    else:
                        instances.update_instance(
                            session,
                            registry,
                            f"existing_{integration}",
                            config=value,
                            actor="fuzz",
                        )
                    raise _Undo
            except ValidationError as error:
                assert refused, str(error)
                assert error.subject == subject, str(error)
                assert str(error).startswith(
                    f"{subject} is invalid at {format_json_path(error.path)}"
                )
                _at(effective, error.path)  # the path exists in the value given
                tally["refused"] += 1
            except _Undo:
                # update_instance(config=None) changes nothing
                assert not refused or (action == "update" and value is None), f"{value!r:.200}"
                tally["accepted"] += 1
            assert _snapshot(db) == before

    check()


@pytest.mark.parametrize("integration", CONFIG_INTEGRATIONS)
def test_invalid_config_is_refused_by_create_and_update(
    store_db: Database, store_registry: Registry, keyring: Keyring, integration: str
) -> None:
    tally: Counter[str] = Counter()
    _fuzz_config(store_db, store_registry, keyring, integration, tally)
    _report(f"config values ({integration}: {dict(tally)})", sum(tally.values()))
    assert tally["refused"] > 0


def _fuzz_credentials(
    db: Database, registry: Registry, keyring: Keyring, integration: str, tally: Counter[str]
) -> None:
    definition = registry.get(integration)
    validator = credentials_validator(definition.auth_type)
    variant = _credentials_variant(definition.auth_type)
    canary = st.just(SECRET) | st.text(min_size=1).map(lambda t: SECRET + t)

    @settings(max_examples=20)
    @given(value=invalid_inputs(variant), secret=canary)
    def check(value: Any, secret: str) -> None:
        if isinstance(value, dict):  # plant a secret in every string the value holds
            value = _plant(value, secret)
        storable = _is_plain_json(value) and not _has_nul(value)
        refused = not isinstance(value, dict) or not storable or not validator.is_valid(value)
        before = _snapshot(db)
        iid = f"existing_{integration}"
        for action in ("create", "set"):
            name = "fz" if action == "create" else iid
            try:
                with db.transaction() as session:
                    if action == "create":
                        instances.create_instance(
                            session,
                            registry,
                            keyring,
                            instance_id="fz",
                            integration_id=integration,
                            name="Fz",
                            scope=Scope("global"),
                            config=_config(definition, "https://x.example")
                            if integration != "signer"
                            else {},
                            credentials=value,
                            actor="fuzz",
                        )
                    else:
                        instances.set_credentials(
                            session, registry, keyring, iid, value, actor="fuzz"
                        )
                    raise _Undo
            except ValidationError as error:
                assert refused, str(error)
                assert error.subject == f"Credentials of instance '{name}'", str(error)
                assert secret not in str(error) and SECRET not in str(error)
                if isinstance(value, dict):
                    _at(value, error.path)
                tally["refused"] += 1
            except _Undo:
                # create_instance(credentials=None) is an instance without credentials
                assert not refused or (action == "create" and value is None), "accepted"
                tally["accepted"] += 1
            assert _snapshot(db) == before

    check()


@pytest.mark.parametrize("auth_type", sorted(CREDENTIAL_INTEGRATIONS))
def test_invalid_credentials_are_refused_and_existing_ones_kept(
    store_db: Database, store_registry: Registry, keyring: Keyring, auth_type: str
) -> None:
    integration = CREDENTIAL_INTEGRATIONS[auth_type]
    tally: Counter[str] = Counter()
    _fuzz_credentials(store_db, store_registry, keyring, integration, tally)
    with store_db.transaction() as session:
        kept = fetch_credentials(
            session, keyring, f"existing_{integration}", actor="tests", purpose="check"
        )
    assert kept.reveal() == _store_credentials(store_registry.get(integration))
    _report(f"credentials ({auth_type}: {dict(tally)})", sum(tally.values()))
    assert tally["refused"] > 0


# --------------------------------------------------------------------------------------
# Config and credentials through the CLI
# --------------------------------------------------------------------------------------

ACME_CREDENTIALS = {"apikey": {"key": SECRET}}


@pytest.fixture
def cli_store(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI with acme (apikey) next to the shipped definitions, synced, and ``existing``."""
    use_definitions(monkeypatch, tmp_path / "cli-definitions", {"acme.json": ACME_DEFINITION})
    cli.ok("definitions", "sync")
    creds = write(tmp_path, "existing.json", ACME_CREDENTIALS)
    cli.ok(
        "instances",
        "create",
        "existing",
        "--integration",
        "acme",
        "--name",
        "Existing",
        "--credentials-file",
        creds,
    )
    return cli


def _fuzz_cli_config(
    cli: Cli, db: Database, registry: Registry, integration: str, creds: str, tally: Counter[str]
) -> None:
    definition = registry.get(integration)

    @settings(max_examples=12)
    @given(value=invalid_inputs(_for_generator(definition.raw["configSchema"])))
    def check(value: Any) -> None:
        if not _is_plain_json(value) or (
            isinstance(value, dict)
            and definition.config_validator.is_valid(value)
            and not _has_nul(value)
        ):
            return
        text = json.dumps(value)
        before = _snapshot(db)
        create = cli(
            "instances",
            "create",
            "fz",
            "--integration",
            integration,
            "--name",
            "Fz",
            "--config",
            text,
            "--credentials-file",
            creds,
        )
        if integration == "acme":
            update = cli("instances", "update", "existing", "--config", text)
        for result, name in (
            (create, "fz"),
            *(((update, "existing"),) if integration == "acme" else ()),
        ):
            if isinstance(value, dict):
                line = assert_one_error(result, "validation_error", f"Config of instance '{name}'")
                assert " is invalid at $" in line
            else:
                assert_one_error(result, "validation_error", "--config", "JSON object")
            tally["tried"] += 1
        assert _snapshot(db) == before

    check()


def _fuzz_cli_credentials(
    cli: Cli, db: Database, integration: str, config: str, auth_type: str, tally: Counter[str]
) -> None:
    validator = credentials_validator(auth_type)
    variant = _credentials_variant(auth_type)

    @settings(max_examples=12)
    @given(value=invalid_inputs(variant))
    def check(value: Any) -> None:
        if isinstance(value, dict):
            value = _plant(value, SECRET)
        if not _is_plain_json(value) or (
            isinstance(value, dict) and validator.is_valid(value) and not _has_nul(value)
        ):
            return
        text = json.dumps(value)
        before = _snapshot(db)
        results = [
            (
                cli(
                    "instances",
                    "create",
                    "fz",
                    "--integration",
                    integration,
                    "--name",
                    "Fz",
                    "--config",
                    config,
                    "--credentials-file",
                    "-",
                    stdin=text,
                ),
                "fz",
            ),
        ]
        if integration == "acme":
            results.append(
                (cli("instances", "set-credentials", "existing", stdin=text), "existing")
            )
        for result, name in results:
            if isinstance(value, dict):
                line = assert_one_error(
                    result, "validation_error", f"Credentials of instance '{name}'"
                )
                assert " is invalid at $" in line
            else:
                assert_one_error(result, "validation_error", "Credentials", "JSON object")
            tally["tried"] += 1
        assert _snapshot(db) == before

    check()


def test_cli_refuses_invalid_config_and_credentials_and_writes_nothing(
    cli_store: Cli, db: Database, tmp_path: Path
) -> None:
    registry = load_registry([Path(os.environ["PREFECT_INTEGRATIONS_DEFINITIONS_PATH"])])
    tally: Counter[str] = Counter()
    creds = write(tmp_path, "valid.json", ACME_CREDENTIALS)
    xero_creds = write(tmp_path, "xero.json", {"oauth2": {"access_token": SECRET}})
    _fuzz_cli_config(cli_store, db, registry, "acme", creds, tally)
    _fuzz_cli_config(cli_store, db, registry, "xero", xero_creds, tally)
    _fuzz_cli_credentials(cli_store, db, "acme", "{}", "apikey", tally)
    _fuzz_cli_credentials(cli_store, db, "xero", '{"tenant_id": "t"}', "oauth2", tally)
    assert cli_store.json("instances", "show", "existing")["credentialsVersion"] == 1
    _report("CLI config/credentials", tally["tried"])
    assert tally["tried"] > 0


# --------------------------------------------------------------------------------------
# Command-line arguments
# --------------------------------------------------------------------------------------

#: Commands left out of the argument fuzzing: they start or stop servers, wait for a
#: browser, change the schema or roles, or call a provider (covered above).
NOT_FUZZED = {
    ("up",),
    ("serve",),
    ("call",),
    ("db", "start"),
    ("db", "stop"),
    ("db", "downgrade"),
    ("db", "grant"),
    ("db", "upgrade"),
    ("blocks", "sync"),
    ("oauth", "connect"),
    ("oauth", "serve"),
}


def _commands() -> list[tuple[tuple[str, ...], list[Any]]]:
    """(path, parameters) of every leaf command of the real command tree."""
    found: list[tuple[tuple[str, ...], list[Any]]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            found.append((path, list(command.params)))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = [(path, params) for path, params in _commands() if path not in NOT_FUZZED]
ODD_VALUES = [
    "",
    " ",
    "-",
    "--",
    "client:",
    "user:a:b",
    "global:x",
    "tenant:1",
    ":",
    "client:\x00",
    "user:" + "u" * 300,
    "bad id",
    "a" * 300,
    "existing",
    "acme",
    "nope",
    "\udcff",
    "é\u2028",
    "\x00",
    "x" * 10_000,
    '{"region": "mars"}',
    "{",
    "[]",
    "NaN",
    "-1",
    "0",
    "99999999999999999999",
    "../../etc/passwd",
    "--json",
    "--help-me",
]
VALUES = st.one_of(st.sampled_from(ODD_VALUES), st.text(max_size=20))


def _is_option(param: Any) -> bool:
    return bool(getattr(param, "opts", None)) and str(param.opts[0]).startswith("-")


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    """A command of the real tree with mostly well-formed, sometimes broken arguments.

    Arguments and required options are usually given (values odd or random), other options
    sometimes; now and then a value is missing, an option unknown or the command misspelt.
    """
    path, params = draw(st.sampled_from(COMMANDS))
    if draw(st.integers(0, 9)) == 0:
        path = (*path[:-1], draw(st.sampled_from(["frobnicate", "", "INSTANCES", path[-1] + "x"])))
    args = list(path)
    for param in params:
        if not _is_option(param):
            if draw(st.integers(0, 9)):
                args.append(draw(VALUES))
            continue
        wanted = draw(st.integers(0, 9)) > 0 if param.required else draw(st.integers(0, 2)) == 0
        if not wanted:
            continue
        args.append(draw(st.sampled_from(param.opts)))
        if not param.is_flag and draw(st.integers(0, 9)):  # rarely, the value is missing
            args.append(draw(VALUES))
    if draw(st.integers(0, 4)) == 0:
        junk = draw(st.sampled_from(["--bogus", "-z", "--json=maybe", "--limit", "extra"]))
        args.insert(draw(st.integers(len(path), len(args))), junk)
    return args


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "verify", "--checkpoint", "a\x00b"),
        ("audit", "checkpoint", "--out", "a\x00b"),
        ("audit", "archive", "--before", "2020-01-01", "--to", "a\x00b"),
        ("audit", "verify-archive", "a\x00b"),
        ("definitions", "import-openapi", "a\x00b", "--integration-id", "x"),
        ("definitions", "import-openapi", "a.yaml", "--integration-id", "x", "--out", "a\x00b"),
        ("stubs", "--out", "a\x00b"),
    ],
)
def test_file_names_with_a_nul_are_clear_errors(
    cli_store: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("openapi: 3.0.0\n")
    result = cli_store(*args)
    assert result.code in (1, 2), result
    assert "Traceback" not in result.err and "error[unexpected]" not in result.err, result
    assert next(line for line in result.err.splitlines() if line).startswith("error["), result


def test_fuzzed_argument_lists_fail_clearly_and_write_nothing(
    cli_store: Cli, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally: Counter[str] = Counter()
    reset_runtime()
    # commands that write files (`--out --`, `stubs --out x`) write them here, not in the checkout
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=int(os.environ.get("FUZZ_ARGS", "150")))
    @given(args=argument_lists())
    def check(args: list[str]) -> None:
        before = _snapshot(db)
        result = cli_store(*args, stdin="")  # as with </dev/null
        output = result.out + result.err
        assert "Traceback" not in output, (args, result)
        assert "error[unexpected]" not in output, (args, result)
        if result.code == 0:
            tally["valid"] += 1
            return
        tally[f"exit {result.code}"] += 1
        if result.code == 3 and args[:2] == ["db", "current"]:
            pass  # a status, not an error: the database is below the newest migration
        elif result.code == 2:  # a usage error: one line in the package's error format
            lines = [line for line in result.err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error[usage]: "), (args, result)
        else:
            lines = [line for line in result.err.splitlines() if line.strip()]
            assert result.code == 1, (args, result)
            if args[:2] == ["definitions", "validate"] and not lines[0].startswith("error["):
                assert lines[-1].endswith("problem(s) in definitions"), (args, lines)
            elif args[:2] == ["instances", "delete"] and lines == ["Aborted."]:
                pass  # the confirmation was not given (no --yes, nothing on standard input)
            else:
                assert len(lines) == 1 and lines[0].startswith("error["), (args, lines)
        assert _snapshot(db) == before, args

    check()
    _report(f"CLI argument lists ({dict(tally)})", sum(tally.values()))
