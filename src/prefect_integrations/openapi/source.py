"""Read an OpenAPI description: parse, check its structure, resolve its references.

`load_spec` reads a file (JSON or YAML), tells the version (Swagger 2.0, OpenAPI 3.0 or
3.1), validates the document against the official JSON Schema of that version with
``openapi-spec-validator`` and prepares a ``referencing`` registry for its ``$ref``s
(references inside the document, or to regular files in its folder or below, at most
`MAX_BYTES` each; nothing is fetched from the network). YAML aliases are refused. Every
problem is a `ValidationError` naming the file and the JSON path.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import yaml
from jsonschema.exceptions import best_match
from openapi_spec_validator.schemas import (
    openapi_v2_schema_validator,
    openapi_v30_schema_validator,
    openapi_v31_schema_validator,
)
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, PointerToNowhere, Unresolvable

from prefect_integrations.exceptions import ValidationError, quote

__all__ = ["JsonPath", "Spec", "SpecVersion", "load_spec"]

JsonPath = tuple[str | int, ...]
SpecVersion = Literal["2.0", "3.0", "3.1"]


#: The largest description (or file it refers to) read, in bytes.
MAX_BYTES = 64 * 1024 * 1024


class _TextLoader(yaml.SafeLoader):
    """YAML's safe loader, without the timestamp rule and without aliases.

    ``2020-01-01`` stays a string; a few nested ``*name`` could expand a small file into
    billions of nodes, and descriptions do not need them.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted in a description", event.start_mark
            )
        return super().compose_node(parent, index)


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(text: str, *, label: str, as_json: bool) -> Any:
    """Parse JSON or YAML text; a syntax error names the line and column."""
    if as_json:
        try:
            return json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            reason = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
            raise ValidationError(label, [], reason) from None
        except ValueError as exc:
            raise ValidationError(label, [], f"malformed JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_TextLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationError(label, [], f"malformed YAML: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ValidationError(label, [], f"malformed YAML: {exc}") from None


def _read(path: Path, *, label: str) -> Any:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(label, [], "not a regular file")
        if info.st_size > MAX_BYTES:
            reason = f"larger than {MAX_BYTES // (1024 * 1024)} MiB ({info.st_size} bytes)"
            raise ValidationError(label, [], reason)
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(label, [], f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValidationError(label, [], f"cannot read file: {exc.strerror or exc}") from None
    except ValueError:  # a NUL character in the name
        raise ValidationError(label, [], "not a usable file name") from None
    as_json = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    return _parse(text, label=label, as_json=as_json)


def _version(document: dict[str, Any], label: str) -> SpecVersion:
    if "swagger" in document:
        if document["swagger"] != "2.0":
            reason = f"unsupported Swagger version {document['swagger']!r} (supported: '2.0')"
            raise ValidationError(label, ["swagger"], reason)
        return "2.0"
    version = document.get("openapi")
    if not isinstance(version, str):
        reason = "not an OpenAPI description: no 'openapi' (3.x) or 'swagger' (2.0) version"
        raise ValidationError(label, [], reason)
    if version.startswith("3.0."):
        return "3.0"
    if version.startswith("3.1."):
        return "3.1"
    supported = "3.0.x, 3.1.x, or Swagger 2.0"
    raise ValidationError(label, ["openapi"], f"unsupported version {version!r} ({supported})")


_VALIDATORS = {
    "2.0": openapi_v2_schema_validator,
    "3.0": openapi_v30_schema_validator,
    "3.1": openapi_v31_schema_validator,
}


@dataclass(frozen=True)
class Spec:
    """A parsed, structurally valid description and the registry resolving its ``$ref``s."""

    label: str
    document: dict[str, Any]
    version: SpecVersion
    base_uri: str
    registry: Registry[Any]
    #: the folder references may read files from (the description's own)
    root: Path

    def lookup(self, ref: str, base: str, where: JsonPath) -> tuple[Any, str]:
        """Resolve ``ref`` (relative to ``base``): the target and its own base URI.

        A reference that cannot be resolved is a `ValidationError` at ``where`` (the JSON
        path of the ``$ref``).
        """
        target = urljoin(base, ref)
        parts = urlsplit(target)
        if parts.scheme not in ("", "file"):
            reason = f"reference {quote(ref)} points outside the local files; not fetched"
            raise ValidationError(self.label, [*where, "$ref"], reason)
        if not _inside(Path(unquote(parts.path)), self.root):
            reason = (
                f"reference {quote(ref)} points outside the description's folder "
                f"{quote(str(self.root))}; not read"
            )
            raise ValidationError(self.label, [*where, "$ref"], reason)
        try:
            resolved = self.registry.resolver(base).lookup(ref)
        except PointerToNowhere:
            reason = f"cannot resolve reference {quote(ref)}: no such location"
            raise ValidationError(self.label, [*where, "$ref"], reason) from None
        except (Unresolvable, NoSuchResource, ValueError) as exc:
            reason = f"cannot resolve reference {quote(ref)}: {str(exc)[:200]}"
            raise ValidationError(self.label, [*where, "$ref"], reason) from None
        return resolved.contents, urldefrag(target).url or base

    def deref(self, node: Any, base: str, where: JsonPath) -> tuple[Any, str, str | None]:
        """Follow ``$ref`` chains from ``node``: the target, its base and the last ref URI."""
        seen: set[str] = set()
        uri: str | None = None
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            uri = urljoin(base, ref)
            if uri in seen:
                reason = f"reference {quote(ref)} refers to itself"
                raise ValidationError(self.label, [*where, "$ref"], reason)
            seen.add(uri)
            node, base = self.lookup(ref, base, where)
        return node, base, uri


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` (links resolved) is ``root`` or inside it."""
    return path.resolve().is_relative_to(root)


def _retriever(root: Path) -> Any:
    def retrieve(uri: str) -> Resource[Any]:
        parts = urlsplit(uri)
        path = Path(unquote(parts.path))
        if parts.scheme != "file" or not _inside(path, root):
            raise NoSuchResource(uri)
        return Resource.opaque(_read(path, label=f"OpenAPI description {quote(str(path))}"))

    return retrieve


def load_spec(path: Path) -> Spec:
    """Read, parse and validate the description at ``path``.

    Raises `ValidationError` naming the file and the JSON path: unreadable or malformed
    file, an unsupported version, or a document that breaks the official schema of its
    version (the most relevant error, as ``jsonschema.exceptions.best_match`` chooses).
    """
    label = f"OpenAPI description {quote(str(path), limit=300)}"
    document = _read(path, label=label)
    if not isinstance(document, dict):
        raise ValidationError(label, [], "top level must be an object")
    version = _version(document, label)
    error = best_match(_VALIDATORS[version].iter_errors(document))
    if error is not None:
        raise ValidationError(label, list(error.absolute_path), error.message[:500])
    base_uri = path.resolve().as_uri()
    root = path.resolve().parent
    registry: Registry[Any] = Registry(retrieve=_retriever(root)).with_resource(  # type: ignore[call-arg]
        base_uri, Resource.opaque(document)
    )
    return Spec(
        label=label,
        document=document,
        version=version,
        base_uri=base_uri,
        registry=registry,
        root=root,
    )


def path_of(*parts: str | int) -> JsonPath:
    """A JSON path from its parts (a readability helper for callers)."""
    return tuple(parts)


def as_list(value: Any) -> Sequence[Any]:
    """``value`` if it is a list, else an empty list (for optional arrays of a description)."""
    return value if isinstance(value, list) else []
