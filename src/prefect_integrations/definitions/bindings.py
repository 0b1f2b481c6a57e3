"""The compiled bindings of a definition: templates and handlers, built at load.

A method is bound to HTTP either declaratively (``http``: verb, path, query, headers and body
as template trees, plus an ``output`` tree rendered with the response) or by a ``handler``,
a Python object implementing `MethodHandler` for what templates cannot express (Gmail's
RFC 2822 messages, for instance). `compile_definition` compiles all of it once, when a
definition is built; `prefect_integrations.binding` renders it per call (``prepare``,
``parse``). The template rules are in `prefect_integrations._templates`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from prefect_integrations._templates import (
    CompiledTemplate,
    Node,
    Sink,
    compile_one,
    compile_tree,
)
from prefect_integrations.definitions.handler_registry import (
    resolve_handler,
    unregistered_handler_message,
)
from prefect_integrations.exceptions import DefinitionError, format_json_path

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ERROR_NAMES",
    "REQUEST_NAMES",
    "RESPONSE_NAMES",
    "DefinitionBinding",
    "ErrorMapping",
    "HttpBinding",
    "MethodBinding",
    "MethodHandler",
    "RequestContext",
    "compile_definition",
    "load_handler",
]

_JsonPath = tuple[str | int, ...]

REQUEST_NAMES: Final = frozenset({"inputs", "config"})
"""Variables of templates that build a request."""
RESPONSE_NAMES: Final = frozenset({"inputs", "config", "response", "status", "headers"})
"""Variables of ``output`` templates."""
ERROR_NAMES: Final = frozenset({"response", "status", "headers"})
"""Variables of ``errors`` templates."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a request was built from; handed back to `parse` with the response.

    ``inputs`` are the validated inputs with the input schema's top-level defaults applied,
    ``config`` the instance configuration with the config schema's top-level defaults, and
    ``base_url`` the effective base URL (``config.base_url`` or the definition's ``baseUrl``,
    without a trailing ``/``).
    """

    integration_id: str
    method_id: str
    instance_id: str | None
    inputs: Mapping[str, Any]
    config: Mapping[str, Any]
    base_url: str


@runtime_checkable
class MethodHandler(Protocol):
    """Python binding of a method, registered in the ``prefect_integrations.handlers`` group.

    The attribute is an object with these two methods (a class is instantiated once, without
    arguments). The definition's integration-level ``headers`` are added to the request for
    names it does not set; authentication is added by the client afterwards.
    """

    def build_request(self, ctx: RequestContext) -> httpx.Request:
        """Build the request (absolute URL from ``ctx.base_url``) from ``ctx.inputs``."""
        ...

    def parse_response(self, response: httpx.Response, ctx: RequestContext) -> Any:
        """Map a successful (2xx, not flagged by ``errors.when``) response to the output."""
        ...


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    """How to read the provider's error out of a response (``errors``), compiled."""

    when: CompiledTemplate | None = None
    code: CompiledTemplate | None = None
    message: CompiledTemplate | None = None
    auth_codes: frozenset[str] = frozenset()
    unavailable_codes: frozenset[str] = frozenset()
    uses_headers: bool = False


@dataclass(frozen=True, slots=True)
class DefinitionBinding:
    """The integration-level binding of a definition, compiled at load."""

    base_url: str | None = None
    headers: tuple[tuple[str, Node], ...] = ()
    errors: ErrorMapping | None = None
    config_defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """A method's declarative HTTP binding (``http``), compiled at load."""

    verb: str
    path: Node
    query: tuple[tuple[str, Node], ...] = ()
    headers: tuple[tuple[str, Node], ...] = ()
    body_kind: Literal["json", "form", "raw"] | None = None
    body: Node | None = None
    form: tuple[tuple[str, Node], ...] = ()
    content_type: str | None = None
    output: Node | None = None
    output_uses_headers: bool = False


_COMPILE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class MethodBinding:
    """A method's binding: `HttpBinding` or a handler, plus its inputs' top-level defaults.

    ``http_source`` is the method's ``http`` object and its JSON path when the binding is
    compiled on first use (`http`) rather than at load: for a file that passed its checks
    before (`prefect_integrations.definitions.checked`), whose templates compiled then.
    """

    compiled_http: HttpBinding | None = None
    handler_path: str | None = None
    input_defaults: Mapping[str, Any] = field(default_factory=dict)
    http_source: tuple[Mapping[str, Any], _JsonPath] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def http(self) -> HttpBinding | None:
        """The compiled ``http`` binding (compiled at the first read if it was not at load)."""
        if self.http_source is None or self.compiled_http is not None:
            return self.compiled_http
        with _COMPILE_LOCK:  # one thread compiles; the others read its result
            if self.compiled_http is None:
                raw, location = self.http_source
                sink = Sink()
                compiled = _compile_http(raw, location, sink)
                if sink.problems:  # only if templates changed since the file passed
                    where, message = sink.problems[0]
                    raise DefinitionError(f"{format_json_path(where)}: {message}")
                object.__setattr__(self, "compiled_http", compiled)
        return self.compiled_http

    @property
    def handler(self) -> MethodHandler | None:
        """The handler object (imported on first use), or None for an ``http`` binding.

        ``handler_path`` is the registered ``module:attribute`` target; it is imported when
        a call first needs it, never while a definition is validated. Raises
        `DefinitionError` if it cannot be loaded.
        """
        if self.handler_path is None:
            return None
        try:
            return _load_registered(self.handler_path)
        except Exception as exc:  # any import-time failure of the handler's module
            raise DefinitionError(f"Cannot load handler '{self.handler_path}': {exc}") from None


# --------------------------------------------------------------------------------------
# Compilation (called when a definition is built)
# --------------------------------------------------------------------------------------


def _top_level_defaults(schema: object) -> dict[str, Any]:
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    return {
        name: prop["default"]
        for name, prop in properties.items()
        if isinstance(prop, Mapping) and "default" in prop
    }


def _entries(
    value: object, location: _JsonPath, names: frozenset[str], sink: Sink
) -> tuple[tuple[str, Node], ...]:
    if not isinstance(value, Mapping):
        return ()
    return tuple(
        (str(key), compile_tree(child, (*location, key), names, sink))
        for key, child in value.items()
    )


def load_handler(path: str) -> MethodHandler:
    """Import ``"package.module:attribute"`` and return the handler object.

    Imports whatever it is given: definitions go through the registered handlers
    (`prefect_integrations.definitions.handler_registry`), never straight here.

    Raises `ImportError` (module or attribute missing) or `TypeError` (not a handler).
    """
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(f"module '{module_name}' has no attribute '{attribute}'") from None
    if isinstance(target, type):
        target = target()
    if not isinstance(target, MethodHandler):
        raise TypeError(
            f"'{path}' is not a method handler (needs build_request(ctx) and "
            "parse_response(response, ctx) methods)"
        )
    return target


@cache
def _load_registered(path: str) -> MethodHandler:
    return load_handler(path)


def _compile_http(raw: Mapping[str, Any], location: _JsonPath, sink: Sink) -> HttpBinding | None:
    verb = raw.get("method")
    path = raw.get("path")
    if not isinstance(verb, str) or not isinstance(path, str):
        return None  # reported by the meta-schema
    path_node = compile_tree(path, (*location, "path"), REQUEST_NAMES, sink, path=True)
    query = _entries(raw.get("query"), (*location, "query"), REQUEST_NAMES, sink)
    headers = _entries(raw.get("headers"), (*location, "headers"), REQUEST_NAMES, sink)
    body_kind: Literal["json", "form", "raw"] | None = None
    body: Node | None = None
    form: tuple[tuple[str, Node], ...] = ()
    content_type: str | None = None
    raw_body = raw.get("body")
    if isinstance(raw_body, Mapping):
        body_location = (*location, "body")
        if "json" in raw_body:
            body_kind = "json"
            body = compile_tree(raw_body["json"], (*body_location, "json"), REQUEST_NAMES, sink)
        elif "form" in raw_body:
            body_kind = "form"
            form = _entries(raw_body["form"], (*body_location, "form"), REQUEST_NAMES, sink)
        elif "raw" in raw_body:
            body_kind = "raw"
            body = compile_tree(raw_body["raw"], (*body_location, "raw"), REQUEST_NAMES, sink)
            content_type = str(raw_body.get("contentType", "text/plain; charset=utf-8"))
    output: Node | None = None
    output_sink = Sink()
    if "output" in raw:
        output = compile_tree(raw["output"], (*location, "output"), RESPONSE_NAMES, output_sink)
    sink.problems.extend(output_sink.problems)
    return HttpBinding(
        verb=verb.upper(),
        path=path_node,
        query=query,
        headers=headers,
        body_kind=body_kind,
        body=body,
        form=form,
        content_type=content_type,
        output=output,
        output_uses_headers="headers" in output_sink.names,
    )


def _compile_method(
    raw: Mapping[str, Any],
    location: _JsonPath,
    sink: Sink,
    integration_id: object = None,
    *,
    lazy: bool = False,
) -> MethodBinding | None:
    """Compile one method's binding; problems go to ``sink`` with their JSON paths.

    None for a method with neither ``http`` nor ``handler`` (listed, not callable). With
    ``lazy``, ``http`` is compiled at its first use (`MethodBinding.http`).
    """
    if "http" not in raw and "handler" not in raw:
        return None
    http: HttpBinding | None = None
    http_source: tuple[Mapping[str, Any], _JsonPath] | None = None
    handler_path: str | None = None
    if isinstance(raw.get("http"), Mapping) and lazy:
        http_source = (raw["http"], (*location, "http"))
    elif isinstance(raw.get("http"), Mapping):
        http = _compile_http(raw["http"], (*location, "http"), sink)
    if isinstance(raw.get("handler"), str):
        # Only registered handlers: looked up by name, imported at the first call.
        handler_path = resolve_handler(raw["handler"])
        if handler_path is None:
            message = unregistered_handler_message(raw["handler"], integration_id)
            sink.problems.append(((*location, "handler"), message))
    return MethodBinding(
        compiled_http=http,
        http_source=http_source,
        handler_path=handler_path,
        input_defaults=_top_level_defaults(raw.get("inputSchema")),
    )


def _compile_errors(raw: object, sink: Sink) -> ErrorMapping | None:
    if not isinstance(raw, Mapping):
        return None
    errors_sink = Sink()
    compiled: dict[str, CompiledTemplate | None] = {}
    for key in ("when", "code", "message"):
        source = raw.get(key)
        compiled[key] = None
        if isinstance(source, str):
            compiled[key] = compile_one(source, ("errors", key), ERROR_NAMES, errors_sink)
    when = compiled["when"]
    if when is not None and not when.single_expression:
        errors_sink.problems.append(
            (("errors", "when"), "must be a single '{{ expression }}' (it is tested for truth)")
        )
    sink.problems.extend(errors_sink.problems)

    def codes(key: str) -> frozenset[str]:
        value = raw.get(key)
        return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

    return ErrorMapping(
        when=when,
        code=compiled["code"],
        message=compiled["message"],
        auth_codes=codes("authCodes"),
        unavailable_codes=codes("unavailableCodes"),
        uses_headers="headers" in errors_sink.names,
    )


def compile_definition(
    document: Mapping[str, Any], *, lazy: bool = False
) -> tuple[DefinitionBinding, dict[str, MethodBinding], list[tuple[_JsonPath, str]]]:
    """Compile a definition document's bindings.

    Returns the definition binding, each method's binding by method id, and the problems
    found (template syntax errors, unknown template variables, unregistered handlers) as
    ``(json_path, message)``. Tolerates documents that break the meta-schema (what has the
    wrong type is skipped: the meta-schema reports it). Templates are compiled once per
    distinct text in the process, so compiling a definition again is cheap. With ``lazy``
    (a document whose templates compiled before), methods' ``http`` bindings are compiled
    at their first use instead, and their problems are not reported here.
    """
    sink = Sink()
    headers = _entries(document.get("headers"), ("headers",), REQUEST_NAMES, sink)
    errors = _compile_errors(document.get("errors"), sink)
    methods: dict[str, MethodBinding] = {}
    raw_methods = document.get("methods")
    if isinstance(raw_methods, list):
        for index, raw in enumerate(raw_methods):
            if isinstance(raw, Mapping):
                compiled = _compile_method(
                    raw, ("methods", index), sink, document.get("integrationId"), lazy=lazy
                )
                if compiled is not None and isinstance(raw.get("id"), str):
                    methods.setdefault(raw["id"], compiled)
    base_url = document.get("baseUrl")
    binding = DefinitionBinding(
        base_url=base_url.rstrip("/") if isinstance(base_url, str) else None,
        headers=headers,
        errors=errors,
        config_defaults=_top_level_defaults(document.get("configSchema")),
    )
    return binding, methods, sink.problems
