"""One `Operation` to one definition method: id, schemas and the HTTP binding.

Inputs are the operation's path, query and header parameters and, for a JSON or
form-encoded body that is an object, the body's top-level properties, each under its
snake_case name (``summarizeErrors`` becomes ``summarize_errors``); the binding maps them
back to the provider's names. A body is one ``body`` input instead when it is not a plain
object or when flattening would make two inputs share a name; two parameters with the same
snake_case name get their location as a suffix (``id_query``). Nested objects keep the
provider's field names. The output is the parsed success response, its schema converted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prefect_integrations.openapi.convert import Report, SchemaConverter
from prefect_integrations.openapi.operations import Body, Operation, Parameter
from prefect_integrations.openapi.source import JsonPath

__all__ = [
    "HEADER_VALUE_MAX_LENGTH",
    "HEADER_VALUE_PATTERN",
    "MethodBuilder",
    "Skipped",
    "snake_case",
]

_BODY_PREFERENCE = ("json", "form", "text/plain")
#: A header input's value: printable ASCII, no space first or last (RFC 9110 field-value;
#: the binding refuses anything else before sending).
HEADER_VALUE_PATTERN = "^[!-~]([ -~]*[!-~])?$"
#: A header input's longest value: well under the 8 KB one header line may take at most
#: servers (nginx, Apache), which refuse the whole request beyond it.
HEADER_VALUE_MAX_LENGTH = 4096


def snake_case(name: str) -> str:
    """``getInvoiceAsPdf`` -> ``get_invoice_as_pdf``, ``xero-tenant-id`` -> ``xero_tenant_id``."""
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text or not text[0].isalpha():
        text = f"x_{text}" if text else "x"
    return text


class Skipped(Exception):
    """The operation cannot become a method; ``path`` and ``reason`` say why."""

    def __init__(self, path: JsonPath, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _ref(name: str) -> str:
    return "{{ inputs[" + repr(name) + "] }}"


@dataclass
class MethodBuilder:
    """Builds methods with one `SchemaConverter`; parameters in ``omit`` are not inputs."""

    converter: SchemaConverter
    report: Report
    omit_headers: frozenset[str] = frozenset()
    omit_parameters: frozenset[str] = frozenset()

    def build(self, op: Operation, method_id: str) -> dict[str, Any]:
        """The method of ``op``; raises `Skipped` when it cannot be one."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        http: dict[str, Any] = {"method": op.verb, "path": op.path}
        if op.verb not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise Skipped(op.where, f"HTTP method {op.verb} is not supported by the bindings")
        params = [p for p in op.parameters if self._wanted(p)]
        for param, name in zip(params, self._names(params), strict=True):
            schema = self.converter.convert(param.schema, param.base, param.where, mode="input")
            if param.description and "description" not in schema:
                schema["description"] = param.description
            if param.location == "header" and schema.get("type") == "string":
                schema.setdefault("pattern", HEADER_VALUE_PATTERN)
                schema.setdefault("maxLength", HEADER_VALUE_MAX_LENGTH)
            properties[name] = schema
            if param.required or param.location == "path":
                required.append(name)
            self._bind_parameter(http, param, name)
        body = self._body(op)
        if body is not None:
            self._bind_body(http, body, properties, required)
        method: dict[str, Any] = {
            "id": method_id,
            "name": op.summary.rstrip(".")[:200]
            if op.summary
            else method_id.replace("_", " ").capitalize(),
        }
        description = op.description or op.summary
        if description:
            method["description"] = description
        input_schema: dict[str, Any] = {"type": "object", "additionalProperties": False}
        if required:
            input_schema["required"] = required
        input_schema["properties"] = properties
        method["inputSchema"] = input_schema
        method["outputSchema"] = self._output(op, http)
        method["http"] = http
        self._mark_idempotency(method, op, params)
        return method

    @staticmethod
    def _mark_idempotency(method: dict[str, Any], op: Operation, params: list[Parameter]) -> None:
        """An operation taking an idempotency key says repeats are not safe without one.

        So the method names the header (a request carrying it may be retried) and, where
        its verb would count as idempotent (a PUT that creates, as Xero's do), says it is not.
        """
        key = next(
            (p for p in params if p.location == "header" and p.name.lower() == "idempotency-key"),
            None,
        )
        if key is None:
            return
        method["idempotencyKeyHeader"] = key.name
        if op.verb in ("GET", "PUT", "DELETE"):
            method["idempotent"] = False

    def _wanted(self, param: Parameter) -> bool:
        if param.name in self.omit_parameters:
            return False
        if param.location == "header" and param.name.lower() in self.omit_headers:
            return False
        if param.location == "cookie":
            self._unsupported(param, "cookie parameters are not supported")
            return False
        if param.unsupported:
            self._unsupported(param, param.unsupported)
            return False
        return True

    def _unsupported(self, param: Parameter, reason: str) -> None:
        if param.required:
            raise Skipped(param.where, f"required parameter {param.name!r}: {reason}")
        self.report.add(param.where, f"optional parameter {param.name!r} left out: {reason}")

    @staticmethod
    def _names(params: list[Parameter]) -> list[str]:
        snakes = [snake_case(p.name) for p in params]
        return [
            s if snakes.count(s) == 1 else f"{s}_{p.location}"
            for s, p in zip(snakes, params, strict=True)
        ]

    @staticmethod
    def _bind_parameter(http: dict[str, Any], param: Parameter, name: str) -> None:
        if param.separator is not None and (
            param.schema.get("type") == "array" if isinstance(param.schema, dict) else False
        ):
            joined = f"inputs[{name!r}] | join({param.separator!r})"
            value = "{{ " + joined + f" if inputs[{name!r}] is defined else none" + " }}"
        else:
            value = _ref(name)
        if param.location == "path":
            http["path"] = http["path"].replace("{" + param.name + "}", _ref(name))
        elif param.location == "query":
            http.setdefault("query", {})[param.name] = value
        else:
            http.setdefault("headers", {})[param.name] = value

    def _body(self, op: Operation) -> Body | None:
        for kind in _BODY_PREFERENCE:
            for body in op.bodies:
                if body.media_type == kind:
                    for other in op.bodies:
                        if other.media_type != kind:
                            self.report.add(
                                other.where,
                                f"request body as {other.media_type} not used ({kind} is)",
                            )
                    return body
        if op.bodies:
            body = op.bodies[0]
            reason = (
                f"request body media type {body.media_type} is not supported "
                "(JSON, form or text only)"
            )
            if body.required:
                raise Skipped(body.where, reason)
            self.report.add(body.where, reason + "; body left out")
        return None

    def _bind_body(
        self, http: dict[str, Any], body: Body, properties: dict[str, Any], required: list[str]
    ) -> None:
        schema = self.converter.convert(body.schema, body.base, body.where, mode="input")
        if body.media_type == "text/plain":
            properties["body"] = {"type": "string"}
            required.append("body")
            http["body"] = {"raw": _ref("body"), "contentType": "text/plain"}
            return
        props = schema.get("properties")
        flat = (
            schema.get("type") == "object"
            and isinstance(props, dict)
            and props
            and not any(k in schema for k in ("allOf", "anyOf", "oneOf", "additionalProperties"))
            and len({snake_case(p) for p in props}) == len(props)
            and not {snake_case(p) for p in props} & set(properties)
        )
        key = "json" if body.media_type == "json" else "form"
        if not flat:
            if key == "form":
                raise Skipped(body.where, "a form body that is not an object of distinct fields")
            if "body" in properties:
                raise Skipped(body.where, "a parameter named 'body' leaves no name for the body")
            if body.description and "description" not in schema:
                schema["description"] = body.description
            properties["body"] = schema
            if body.required:
                required.append("body")
            http["body"] = {"json": _ref("body")}
            return
        assert isinstance(props, dict)
        body_required = set(schema.get("required", [])) if body.required else set()
        mapping: dict[str, Any] = {}
        for name, prop in props.items():
            snake = snake_case(name)
            properties[snake] = prop
            if name in body_required:
                required.append(snake)
            mapping[name] = _ref(snake)
        http["body"] = {key: mapping}

    def _output(self, op: Operation, http: dict[str, Any]) -> dict[str, Any]:
        response = op.response
        if response is None or response.media_type is None:
            http["output"] = {}
            return {"type": "object", "description": "The provider answers without a body."}
        if response.media_type != "json":
            raise Skipped(
                response.where, f"success response is {response.media_type}; bindings read JSON"
            )
        return self.converter.convert(response.schema, response.base, response.where, mode="output")
