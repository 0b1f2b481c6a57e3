"""The operations of a description, read the same way from Swagger 2.0 and OpenAPI 3.x.

Swagger 2.0 is handled here rather than converted first (no maintained Python converter
from 2.0 to 3.x exists): its ``in: body`` parameter, ``formData`` parameters with
``consumes``, parameter-level schemas (``type``, ``items``, ``collectionFormat``) and
``responses.*.schema`` with ``produces`` are read into the same `Operation` as OpenAPI
3.x's ``requestBody``, ``parameters[].schema`` with ``style``/``explode`` and
``responses.*.content``. Path-level parameters are merged with the operation's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect_integrations.openapi.source import JsonPath, Spec

__all__ = ["Body", "Operation", "Parameter", "Response", "read_operations"]

VERBS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
_PARAM_SCHEMA_KEYS = (
    "type",
    "format",
    "items",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "multipleOf",
    "x-nullable",
)


@dataclass(frozen=True)
class Parameter:
    """A path, query, header or cookie parameter and its schema (not yet converted)."""

    name: str
    location: str
    required: bool
    description: str | None
    schema: Any
    base: str
    where: JsonPath
    separator: str | None  # joins an array's values; None: one parameter per value
    unsupported: str | None = None


@dataclass(frozen=True)
class Body:
    """A request body in one media type (``json``, ``form`` or another, reported)."""

    media_type: str
    required: bool
    description: str | None
    schema: Any
    base: str
    where: JsonPath


@dataclass(frozen=True)
class Response:
    """The success response: its status, media type (None: no body) and schema."""

    status: str
    media_type: str | None
    schema: Any
    base: str
    where: JsonPath


@dataclass
class Operation:
    """One operation of the description, whatever its version."""

    operation_id: str | None
    verb: str
    path: str
    summary: str | None
    description: str | None
    tags: list[str]
    parameters: list[Parameter]
    bodies: list[Body]
    response: Response | None
    security: list[dict[str, list[str]]] | None
    where: JsonPath
    extra: dict[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _is_json(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip().lower()
    return base in ("application/json", "*/*") or base.endswith("+json")


def _media_kind(media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    if _is_json(base):
        return "json"
    if base == "application/x-www-form-urlencoded":
        return "form"
    return base


_SEPARATORS_V2 = {"csv": ",", "ssv": " ", "tsv": "\t", "pipes": "|", "multi": None}


def _parameter_v2(raw: dict[str, Any], base: str, where: JsonPath) -> Parameter:
    schema = {k: raw[k] for k in _PARAM_SCHEMA_KEYS if k in raw}
    fmt = raw.get("collectionFormat", "csv")
    return Parameter(
        name=raw["name"],
        location=raw["in"],
        required=bool(raw.get("required")),
        description=_text(raw.get("description")),
        schema=schema,
        base=base,
        where=where,
        separator=_SEPARATORS_V2.get(fmt, ",") if raw.get("type") == "array" else None,
    )


def _parameter_v3(raw: dict[str, Any], base: str, where: JsonPath) -> Parameter:
    location = raw["in"]
    style = raw.get("style", "form" if location in ("query", "cookie") else "simple")
    explode = raw.get("explode", style == "form")
    unsupported = None
    separator: str | None = None
    if "content" in raw:
        unsupported = "a parameter serialized as 'content' is not supported"
        schema: Any = {}
    else:
        schema = raw.get("schema", {})
    if style in ("spaceDelimited", "pipeDelimited"):
        separator = " " if style == "spaceDelimited" else "|"
    elif style == "deepObject" or (location == "path" and style in ("label", "matrix")):
        unsupported = f"parameter style {style!r} is not supported"
    elif not explode or location in ("path", "header"):
        separator = ","
    return Parameter(
        name=raw["name"],
        location=location,
        required=bool(raw.get("required")),
        description=_text(raw.get("description")),
        schema=schema,
        base=base,
        where=(*where, "schema") if "schema" in raw else where,
        separator=separator,
        unsupported=unsupported,
    )


def _parameters(spec: Spec, item: dict[str, Any], op: dict[str, Any], where: JsonPath) -> list[Any]:
    """(raw parameter, base, where) of the path item then the operation, the latter winning."""
    merged: dict[tuple[str, str], tuple[dict[str, Any], str, JsonPath]] = {}
    for owner, owner_where in ((item, where[:-1]), (op, where)):
        raw_list = owner.get("parameters")
        for index, raw in enumerate(raw_list if isinstance(raw_list, list) else []):
            at = (*owner_where, "parameters", index)
            resolved, base, _ = spec.deref(raw, spec.base_uri, at)
            merged[(resolved["name"], resolved["in"])] = (resolved, base, at)
    return list(merged.values())


def _read_v2(spec: Spec, item: dict[str, Any], op: dict[str, Any], where: JsonPath) -> Operation:
    doc = spec.document
    params: list[Parameter] = []
    bodies: list[Body] = []
    form: list[tuple[dict[str, Any], JsonPath]] = []
    for raw, base, at in _parameters(spec, item, op, where):
        if raw["in"] == "body":
            consumes = op.get("consumes", doc.get("consumes", ["application/json"]))
            media = next((m for m in consumes if _is_json(m)), consumes[0] if consumes else "")
            bodies.append(
                Body(
                    _media_kind(media),
                    bool(raw.get("required")),
                    _text(raw.get("description")),
                    raw.get("schema", {}),
                    base,
                    (*at, "schema"),
                )
            )
        elif raw["in"] == "formData":
            form.append((raw, at))
        else:
            params.append(_parameter_v2(raw, base, at))
    if form:
        consumes = op.get("consumes", doc.get("consumes", []))
        files = any(raw.get("type") == "file" for raw, _ in form)
        media = "multipart/form-data" if files or consumes == ["multipart/form-data"] else "form"
        properties = {
            raw["name"]: {k: raw[k] for k in _PARAM_SCHEMA_KEYS if k in raw} for raw, _ in form
        }
        for raw, _ in form:
            if _text(raw.get("description")):
                properties[raw["name"]]["description"] = raw["description"].strip()
        required = [raw["name"] for raw, _ in form if raw.get("required")]
        schema = {"type": "object", "properties": properties, "required": required}
        bodies.append(Body(media, bool(required), None, schema, spec.base_uri, (*form[0][1][:-1],)))
    response = None
    produces = op.get("produces", doc.get("produces", ["application/json"]))
    for status, raw_response in _success(op.get("responses")):
        resolved, base, _ = spec.deref(raw_response, spec.base_uri, (*where, "responses", status))
        at = (*where, "responses", status, "schema")
        if "schema" not in resolved:
            response = Response(status, None, None, base, at)
        else:
            media = next((m for m in produces if _is_json(m)), produces[0] if produces else "")
            response = Response(status, _media_kind(media), resolved["schema"], base, at)
        break
    return _operation(op, where, params, bodies, response)


def _read_v3(spec: Spec, item: dict[str, Any], op: dict[str, Any], where: JsonPath) -> Operation:
    params = [_parameter_v3(raw, base, at) for raw, base, at in _parameters(spec, item, op, where)]
    bodies: list[Body] = []
    if "requestBody" in op:
        at = (*where, "requestBody")
        body, base, _ = spec.deref(op["requestBody"], spec.base_uri, at)
        content = body.get("content", {})
        for media, media_object in content.items():
            bodies.append(
                Body(
                    _media_kind(media),
                    bool(body.get("required")),
                    _text(body.get("description")),
                    media_object.get("schema", {}),
                    base,
                    (*at, "content", media, "schema"),
                )
            )
    response = None
    for status, raw_response in _success(op.get("responses")):
        at = (*where, "responses", status)
        resolved, base, _ = spec.deref(raw_response, spec.base_uri, at)
        content = resolved.get("content") or {}
        if not content:
            response = Response(status, None, None, base, at)
        else:
            media = next((m for m in content if _is_json(m)), next(iter(content)))
            schema = content[media].get("schema", {})
            response = Response(
                status, _media_kind(media), schema, base, (*at, "content", media, "schema")
            )
        break
    return _operation(op, where, params, bodies, response)


def _success(responses: Any) -> list[tuple[str, Any]]:
    """The 2xx responses, most specific first (200, 201, ..., then 2XX)."""
    if not isinstance(responses, dict):
        return []
    codes = sorted(str(c) for c in responses if str(c).startswith("2") and str(c)[1:].isdigit())
    codes += [c for c in responses if str(c).upper() == "2XX"]
    return [(c, responses[c] if c in responses else responses[int(c)]) for c in codes]


def _operation(
    op: dict[str, Any],
    where: JsonPath,
    params: list[Parameter],
    bodies: list[Body],
    response: Response | None,
) -> Operation:
    return Operation(
        operation_id=op.get("operationId"),
        verb=str(where[-1]).upper(),
        path=str(where[-2]),
        summary=_text(op.get("summary")),
        description=_text(op.get("description")),
        tags=[t for t in op.get("tags", []) if isinstance(t, str)],
        parameters=params,
        bodies=bodies,
        response=response,
        security=op.get("security"),
        where=where,
        extra={"deprecated": bool(op.get("deprecated"))},
    )


def read_operations(spec: Spec) -> list[Operation]:
    """Every operation of the description, in the document's order."""
    operations = []
    paths = spec.document.get("paths") or {}
    for path, raw_item in paths.items():
        item, _, _ = spec.deref(raw_item, spec.base_uri, ("paths", path))
        for verb in VERBS:
            if isinstance(item.get(verb), dict):
                where: JsonPath = ("paths", path, verb)
                reader = _read_v2 if spec.version == "2.0" else _read_v3
                operations.append(reader(spec, item, item[verb], where))
    return operations
