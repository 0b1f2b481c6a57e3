"""How a definition method becomes an HTTP request, and a response becomes its output.

The bindings (``http`` templates or a ``handler``) are compiled when the definition is
built (`prefect_integrations.definitions.bindings`); per call the client does:

    request, ctx = binding.prepare(definition, method, inputs, config, instance_id=...)
    ...apply auth, send...
    output = binding.parse(definition, method, response, ctx)   # raises ProviderError

An error response becomes a `ProviderError` through `provider_error`, which lives with the
rest of the provider errors and scrubbing in `prefect_integrations.pipeline` (re-exported
here). The template rules are in `_templates`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx

from prefect_integrations._templates import (
    Node,
    RenderError,
    Scope,
    dumps,
    is_omitted,
    to_text,
)
from prefect_integrations.definitions import (
    Definition,
    DefinitionBinding,
    HttpBinding,
    Method,
    MethodBinding,
    MethodHandler,
    RequestContext,
)
from prefect_integrations.exceptions import (
    DefinitionError,
    DefinitionProblem,
    MethodNotBound,
    ProviderUnavailable,
    ValidationError,
)
from prefect_integrations.pipeline._errors import error_from_body, provider_error
from prefect_integrations.pipeline._response import declares_json, response_body, response_scope

__all__ = ["parse", "prepare", "provider_error"]


def _with_defaults(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    if not defaults:
        return dict(values)
    merged = {
        key: (value if isinstance(value, str | int | float | bool) else copy.deepcopy(value))
        for key, value in defaults.items()
        if key not in values
    }
    merged.update(values)
    return merged


# --------------------------------------------------------------------------------------
# Building requests
# --------------------------------------------------------------------------------------


def _bindings(definition: Definition, method: Method) -> tuple[DefinitionBinding, MethodBinding]:
    if definition.binding is None or method.binding is None:
        raise MethodNotBound(method.integration_id, method.id)
    return definition.binding, method.binding


def _render_failure(definition: Definition, method: Method, error: RenderError) -> DefinitionError:
    message = f"template failed while calling '{method.qualified_name}': {error}"
    return DefinitionError(
        [DefinitionProblem(source=definition.source, path=error.location, message=message)]
    )


def _query_items(name: str, value: Any) -> list[tuple[str, str]]:
    """One query (or form) entry: lists repeat the name, omitted values disappear."""
    if value is None or is_omitted(value):
        return []
    if isinstance(value, list | tuple):
        return [(name, to_text(item)) for item in value if not is_omitted(item)]
    return [(name, to_text(value))]


def _header_value(ctx: RequestContext, name: str, text: str) -> str:
    """``text`` if it can be sent as a header value (tab, space and visible ASCII).

    Anything else (a line break, a control or non-ASCII character) is a `ValidationError`
    naming the method and the header, raised before anything is sent.
    """
    if all(char == "\t" or " " <= char <= "~" for char in text):
        return text
    raise ValidationError(
        f"Request of '{ctx.integration_id}.{ctx.method_id}'",
        ("headers", name),
        "header value may only contain printable ASCII characters "
        "(no line breaks, control or non-ASCII characters)",
    )


def _set_headers(
    headers: dict[str, tuple[str, str]],
    entries: Sequence[tuple[str, Node]],
    scope: Scope,
    ctx: RequestContext,
) -> None:
    for name, node in entries:
        value = node(scope)
        if is_omitted(value):
            continue
        text = ", ".join(to_text(v) for v in value) if isinstance(value, list) else to_text(value)
        headers[name.lower()] = (name, _header_value(ctx, name, text))


def _base_url(binding: DefinitionBinding, config: Mapping[str, Any]) -> str:
    override = config.get("base_url")
    if isinstance(override, str) and override:
        return override.rstrip("/")
    return binding.base_url or ""


def prepare(
    definition: Definition,
    method: Method,
    inputs: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    instance_id: str | None = None,
) -> tuple[httpx.Request, RequestContext]:
    """Build the HTTP request of one call (without authentication: the client adds it).

    ``inputs`` must already be valid for the method's input schema; the schema's top-level
    defaults are applied here. The URL is the base URL (``config.base_url`` or the
    definition's ``baseUrl``) followed by the rendered path; the headers are the
    definition's, then the method's (a later name replaces an earlier one, ignoring case).
    Raises `DefinitionError` if a template fails while rendering, and `ValidationError` if
    a rendered header value cannot be sent (a line break, a control or non-ASCII character)
    or the URL cannot be built (e.g. a query too long).
    """
    definition_binding, method_binding = _bindings(definition, method)
    full_config = _with_defaults(definition_binding.config_defaults, config)
    ctx = RequestContext(
        integration_id=definition.id,
        method_id=method.id,
        instance_id=instance_id,
        inputs=_with_defaults(method_binding.input_defaults, inputs),
        config=full_config,
        base_url=_base_url(definition_binding, full_config),
    )
    scope = Scope({"inputs": ctx.inputs, "config": ctx.config})
    try:
        if method_binding.handler is not None:
            return _handler_request(definition_binding, method_binding.handler, ctx, scope), ctx
        http = method_binding.http
        if http is None:
            raise DefinitionError(f"Method '{method.qualified_name}' has no HTTP binding")
        return _http_request(definition_binding, http, ctx, scope), ctx
    except RenderError as exc:
        raise _render_failure(definition, method, exc) from None


def _handler_request(
    binding: DefinitionBinding, handler: MethodHandler, ctx: RequestContext, scope: Scope
) -> httpx.Request:
    request = handler.build_request(ctx)
    if binding.headers:
        extra: dict[str, tuple[str, str]] = {}
        _set_headers(extra, binding.headers, scope, ctx)
        for lower, (name, value) in extra.items():
            if lower not in request.headers:
                request.headers[name] = value
    return request


def _http_request(
    binding: DefinitionBinding, http: HttpBinding, ctx: RequestContext, scope: Scope
) -> httpx.Request:
    path = to_text(http.path(scope))
    params: list[tuple[str, str | int | float | bool | None]] = []
    for name, node in http.query:
        params.extend(_query_items(name, node(scope)))

    headers: dict[str, tuple[str, str]] = {}
    content: bytes | None = None
    if http.body_kind == "json" and http.body is not None:
        value = http.body(scope)
        if not is_omitted(value):
            content = dumps(value).encode("utf-8")
            headers["content-type"] = ("Content-Type", "application/json")
    elif http.body_kind == "form":
        fields: list[tuple[str, str]] = []
        for name, node in http.form:
            fields.extend(_query_items(name, node(scope)))
        content = urlencode(fields).encode("ascii")
        headers["content-type"] = ("Content-Type", "application/x-www-form-urlencoded")
    elif http.body_kind == "raw" and http.body is not None:
        value = http.body(scope)
        if not is_omitted(value):
            content = value if isinstance(value, bytes) else to_text(value).encode("utf-8")
            headers["content-type"] = ("Content-Type", http.content_type or "text/plain")
    _set_headers(headers, binding.headers, scope, ctx)
    _set_headers(headers, http.headers, scope, ctx)
    try:
        return httpx.Request(
            http.verb,
            ctx.base_url + path,
            params=params or None,
            headers=list(headers.values()),
            content=content,
        )
    except httpx.InvalidURL as exc:  # e.g. a query longer than any server accepts
        raise ValidationError(
            f"Request of '{ctx.integration_id}.{ctx.method_id}'",
            ("url",),
            f"the inputs do not make a usable URL ({exc})",
        ) from None


# --------------------------------------------------------------------------------------
# Reading responses
# --------------------------------------------------------------------------------------


def parse(
    definition: Definition, method: Method, response: httpx.Response, ctx: RequestContext
) -> Any:
    """Map a response to the method's output, or raise `ProviderError`.

    A non-2xx response, or a 2xx response for which the definition's ``errors.when``
    renders truthy (Slack answers ``200 {"ok": false, ...}``), raises `provider_error`; so
    does a body declared JSON that does not parse (`ProviderUnavailable`, provider code
    ``malformed_response``: the provider answered garbage).
    Otherwise the method's ``output`` tree is rendered (the parsed body itself if there is
    none) or the handler's ``parse_response`` is called. The output is not validated here.
    """
    definition_binding, method_binding = _bindings(definition, method)
    if not response.is_success:
        raise provider_error(definition, method, response, instance_id=ctx.instance_id)
    body = response_body(response)
    if isinstance(body, str) and declares_json(response):
        raise ProviderUnavailable(
            integration_id=definition.id,
            method_id=method.id,
            status=response.status_code,
            provider_code="malformed_response",
            provider_message="the response body is declared JSON but is not valid JSON",
            instance_id=ctx.instance_id,
        )
    errors = definition_binding.errors
    http = method_binding.http
    wants_headers = (errors is not None and errors.uses_headers) or (
        http is not None and http.output_uses_headers
    )
    scope = response_scope(response, body, ctx, headers=wants_headers)
    if errors is not None and errors.when is not None:
        try:
            flagged = errors.when.render(scope)
        except Exception as exc:
            raise _render_failure(
                definition, method, RenderError(("errors", "when"), exc)
            ) from None
        if not is_omitted(flagged) and flagged:
            raise error_from_body(definition, method, response, body, ctx.instance_id)
    if method_binding.handler is not None:
        return method_binding.handler.parse_response(response, ctx)
    if http is None or http.output is None:
        return body
    try:
        return http.output(scope)
    except RenderError as exc:
        raise _render_failure(definition, method, exc) from None
