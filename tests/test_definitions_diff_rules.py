"""`definitions diff` on schema changes it can only compare as a whole, and retry fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from prefect_integrations.definitions.diff import diff_documents, required_bump


def _document(input_schema: dict[str, Any], **method: Any) -> dict[str, Any]:
    return {
        "integrationId": "t",
        "version": "1.0.0",
        "authType": "apikey",
        "methods": [{"id": "m", "inputSchema": input_schema, "outputSchema": {}, **method}],
    }


BASE: dict[str, Any] = {"type": "object", "properties": {"a": {"type": ["string", "integer"]}}}


def _with(path: str, value: Any) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    target: dict[str, Any] = schema
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return schema


@pytest.mark.parametrize(
    ("new", "bump"),
    [
        # a union turned into a oneOf of fewer types: compared as a whole, so major
        (_with("properties.a", {"oneOf": [{"type": "string"}]}), "major"),
        (_with("properties.a.anyOf", [{"minLength": 2}]), "major"),
        (_with("properties.a.multipleOf", 2), "major"),
        # an optional input removed: the generated task no longer takes that keyword
        (_with("properties.a", None), "major"),
        # closing an open object refuses keys it took
        (_with("additionalProperties", False), "major"),
        (_with("properties.b", {"type": "string"}), "minor"),
    ],
)
def test_input_changes_get_their_bump(new: dict[str, Any], bump: str) -> None:
    assert required_bump(diff_documents(_document(BASE), _document(new))) == bump


def test_an_array_given_items_is_major_and_losing_them_minor() -> None:
    loose = {"type": "object", "properties": {"a": {"type": "array"}}}
    strict = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}
    assert required_bump(diff_documents(_document(loose), _document(strict))) == "major"
    assert required_bump(diff_documents(_document(strict), _document(loose))) == "minor"


def test_a_change_of_retry_behaviour_is_at_least_minor() -> None:
    old = _document(BASE, idempotent=False, idempotencyKeyHeader="Idempotency-Key")
    new = _document(BASE)
    changes = diff_documents(old, new)
    assert required_bump(changes) == "minor"
    assert {c.path for c in changes} == {
        "$.methods[0].idempotent",
        "$.methods[0].idempotencyKeyHeader",
    }
