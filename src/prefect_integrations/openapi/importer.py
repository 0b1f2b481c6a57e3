"""An OpenAPI description to an integration definition: `import_openapi`.

    result = import_openapi(Path("xero_accounting.yaml"), integration_id="xero",
                            tags=["Accounting"])
    result.document   # the definition, valid for `validate_document`
    result.report     # what could not be converted, with JSON paths in the description

Top level: ``name`` and ``description`` from ``info``, ``baseUrl`` from the first server
(3.x, variables at their defaults) or ``schemes``/``host``/``basePath`` (2.0), ``authType``
from the security scheme the selected operations use (``oauth2`` with the authorization
code flow, or client credentials; ``apiKey`` in a header or the query; HTTP ``bearer``;
HTTP ``basic`` as the ``basic`` custom scheme), ``oauth2Config`` with the scheme's URLs
and the scopes the selected methods require, and a ``configSchema`` with the URL overrides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect_integrations.definitions.rules import validate_document
from prefect_integrations.exceptions import DefinitionError, ValidationError, quote
from prefect_integrations.openapi.convert import Report, SchemaConverter
from prefect_integrations.openapi.methods import MethodBuilder, Skipped, snake_case
from prefect_integrations.openapi.operations import Operation, read_operations
from prefect_integrations.openapi.overlay import Overlay
from prefect_integrations.openapi.source import Spec, load_spec

__all__ = ["ImportResult", "import_openapi"]

_URL = {"type": "string", "format": "uri"}


@dataclass(frozen=True)
class ImportResult:
    """The definition document and the report of what could not be converted."""

    document: dict[str, Any]
    report: Report


def _select(
    spec: Spec, operations: list[Operation], ids: Sequence[str] | None, tags: Sequence[str] | None
) -> list[Operation]:
    if not ids and not tags:
        return operations
    wanted = set(ids or ())
    known = {o.operation_id for o in operations} | {
        snake_case(o.operation_id or "") for o in operations
    }
    missing = sorted(wanted - known)
    if missing:
        raise ValidationError(
            spec.label, ["paths"], f"no operation with id {', '.join(map(quote, missing))}"
        )
    all_tags = {t for o in operations for t in o.tags}
    missing_tags = sorted(set(tags or ()) - all_tags)
    if missing_tags:
        raise ValidationError(
            spec.label, ["tags"], f"no operation has tag {', '.join(map(quote, missing_tags))}"
        )
    order = {name: index for index, name in enumerate(ids or ())}

    def position(op: Operation) -> int:
        name = op.operation_id or ""
        return order.get(name, order.get(snake_case(name), len(order)))

    chosen = [
        o
        for o in operations
        if o.operation_id in wanted
        or snake_case(o.operation_id or "") in wanted
        or set(o.tags) & set(tags or ())
    ]
    return sorted(chosen, key=position)  # the listed operations in their order, then tags


def _base_url(spec: Spec) -> str:
    doc = spec.document
    if spec.version == "2.0":
        if not isinstance(doc.get("host"), str):
            raise ValidationError(spec.label, ["host"], "no host: the base URL is unknown")
        schemes = doc.get("schemes") or ["https"]
        scheme = "https" if "https" in schemes else schemes[0]
        return f"{scheme}://{doc['host']}{doc.get('basePath', '')}".rstrip("/")
    servers = doc.get("servers") or []
    if not servers:
        raise ValidationError(spec.label, ["servers"], "no servers: the base URL is unknown")
    url = str(servers[0]["url"])
    for name, variable in (servers[0].get("variables") or {}).items():
        url = url.replace("{" + name + "}", str(variable.get("default", "")))
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValidationError(
            spec.label, ["servers", 0, "url"], f"{quote(url)} is not an absolute http(s) URL"
        )
    return url.rstrip("/")


def _schemes(spec: Spec) -> dict[str, Any]:
    doc = spec.document
    found = (
        doc.get("securityDefinitions")
        if spec.version == "2.0"
        else (doc.get("components") or {}).get("securitySchemes")
    )
    return found if isinstance(found, dict) else {}


def _requirements(spec: Spec, op: Operation) -> list[dict[str, list[str]]]:
    security = op.security if op.security is not None else spec.document.get("security")
    return security if isinstance(security, list) else []


def _auth(
    spec: Spec, selected: list[Operation], report: Report
) -> tuple[str | None, dict[str, Any]]:
    """The scheme name the selected operations use most, and the definition's auth fields."""
    schemes = _schemes(spec)
    used = Counter(name for op in selected for req in _requirements(spec, op) for name in req)
    for name, _ in used.most_common():
        scheme = schemes.get(name)
        if isinstance(scheme, dict):
            fields = _auth_fields(spec, name, scheme, report)
            if fields:
                return name, fields
    report.add(
        ("security",),
        "no supported security scheme; authType apikey (Authorization: Bearer) assumed",
    )
    return None, {"authType": "apikey"}


def _auth_fields(spec: Spec, name: str, scheme: dict[str, Any], report: Report) -> dict[str, Any]:
    where = (
        ("securityDefinitions", name)
        if spec.version == "2.0"
        else ("components", "securitySchemes", name)
    )
    kind = scheme.get("type")
    if kind == "oauth2":
        if spec.version == "2.0":
            flows = {"accessCode": "authorizationCode", "application": "clientCredentials"}
            flow_name = flows.get(scheme.get("flow", ""), scheme.get("flow"))
            flow_list = {str(flow_name): scheme}
        else:
            flow_list = scheme.get("flows") or {}
        for flow_name, grant in (
            ("authorizationCode", "authorization_code"),
            ("clientCredentials", "client_credentials"),
        ):
            flow = flow_list.get(flow_name)
            if isinstance(flow, dict):
                config: dict[str, Any] = {"tokenUrl": flow["tokenUrl"], "scopes": []}
                if grant == "authorization_code":
                    config = {"authorizationUrl": flow["authorizationUrl"], **config}
                else:
                    config["authorizationUrl"] = flow["tokenUrl"]
                    config["grantType"] = grant
                return {"authType": "oauth2", "oauth2Config": config}
        report.add(
            where,
            f"OAuth 2.0 flows {sorted(flow_list)} are not supported "
            "(authorization code or client credentials)",
        )
        return {}
    if kind == "apiKey" and scheme.get("in") in ("header", "query"):
        return {
            "authType": "apikey",
            "auth": {"apikey": {"in": scheme["in"], "name": scheme["name"]}},
        }
    if kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
        return {"authType": "apikey"}
    if (kind == "http" and str(scheme.get("scheme", "")).lower() == "basic") or kind == "basic":
        return {"authType": "custom", "auth": {"custom": {"scheme": "basic"}}}
    report.add(where, f"security scheme type {kind!r} is not supported")
    return {}


def _config_schema(auth_type: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "base_url": {**_URL, "description": "Override of the API base URL."}
    }
    if auth_type == "oauth2":
        properties["authorization_url"] = {
            **_URL,
            "description": "Override of oauth2Config.authorizationUrl.",
        }
        properties["token_url"] = {**_URL, "description": "Override of oauth2Config.tokenUrl."}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def import_openapi(
    path: Path,
    *,
    integration_id: str,
    operations: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    version: str = "1.0.0",
    max_depth: int = 4,
    cycle_depth: int = 1,
    omit_headers: Sequence[str] = (),
    omit_parameters: Sequence[str] = (),
    overlay: Overlay | None = None,
) -> ImportResult:
    """Turn the description at ``path`` into a definition (see the module docstring).

    ``operations`` (operation ids, as written or in snake_case) and ``tags`` select
    operations (either matching is enough; neither: all). Header parameters named in
    ``omit_headers`` (sent by the definition's ``headers``) and parameters named in
    ``omit_parameters`` (e.g. a token the auth placement sends) are not inputs. Raises
    `ValidationError` for a malformed or unsupported description, and `DefinitionError`
    if the result is not a valid definition. An `Overlay` replaces imported fields and
    methods (by operation id) before the result is checked.
    """
    spec = load_spec(path)
    report = Report()
    overlay = overlay or Overlay()
    selected = _select(spec, read_operations(spec), operations, tags)
    if not selected:
        raise ValidationError(spec.label, ["paths"], "no operations to import")
    scheme_name, auth = _auth(spec, selected, report)
    converter = SchemaConverter(spec, report, max_depth=max_depth, cycle_depth=cycle_depth)
    builder = MethodBuilder(
        converter,
        report,
        omit_headers=frozenset(h.lower() for h in omit_headers),
        omit_parameters=frozenset(omit_parameters),
    )
    methods: list[dict[str, Any]] = []
    scopes: list[str] = []
    seen: set[str] = set()
    for op in selected:
        if not op.operation_id:
            report.add(op.where, "no operationId; method id made from the verb and path")
        method_id = snake_case(op.operation_id or f"{op.verb.lower()}_{op.path}")
        while method_id in seen:
            report.add(op.where, f"method id {method_id!r} already taken; suffixed")
            method_id += "_2"
        try:
            method = builder.build(op, method_id)
        except Skipped as skipped:
            report.add(
                skipped.path,
                f"operation {op.operation_id or op.path!r} not imported: {skipped.reason}",
            )
            continue
        if auth["authType"] == "oauth2" and scheme_name is not None:
            method["requiredScopes"] = _method_scopes(spec, op, scheme_name, report)
        method = overlay.method(op.operation_id, method)
        seen.add(method["id"])
        scopes += [s for s in method.get("requiredScopes", []) if s not in scopes]
        methods.append(method)
    if not methods:
        raise ValidationError(
            spec.label, ["paths"], "none of the selected operations could be imported"
        )
    if "oauth2Config" in auth:
        auth["oauth2Config"]["scopes"] = scopes
    info = spec.document.get("info", {})
    document: dict[str, Any] = {
        "integrationId": integration_id,
        "name": str(info.get("title") or integration_id),
        "description": _first_paragraph(info.get("description"))
        or str(info.get("title") or integration_id),
        "version": version,
        **{k: v for k, v in auth.items() if k != "auth"},
    }
    docs = (spec.document.get("externalDocs") or {}).get("url")
    if isinstance(docs, str) and urlsplit(docs).scheme in ("http", "https"):
        document["documentationUrl"] = docs
    document["configSchema"] = _config_schema(auth["authType"])
    document["baseUrl"] = _base_url(spec)
    if "auth" in auth:
        document["auth"] = auth["auth"]
    document["methods"] = methods
    document = overlay.apply(document)
    problems = validate_document(document, source=f"import of {spec.label}")
    if problems:
        raise DefinitionError(problems)
    return ImportResult(document=document, report=report)


def _method_scopes(spec: Spec, op: Operation, scheme_name: str, report: Report) -> list[str]:
    requirements = [r for r in _requirements(spec, op) if scheme_name in r]
    if len(requirements) > 1:
        report.add((*op.where, "security"), "alternative security requirements; the first is used")
    return list(dict.fromkeys(requirements[0][scheme_name])) if requirements else []


def _first_paragraph(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    return text.strip().split("\n\n", 1)[0].strip()[:1000]
