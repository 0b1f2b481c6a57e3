"""What a new version of a definition changes for its callers, and the semver bump it needs.

    changes = diff_documents(old, new)
    required_bump(changes)     # "major", "minor", "patch" or "none"

A caller passes inputs and reads outputs, so the rules look at each side differently:

- **major** (breaks callers): a method removed; a new required input; an input removed
  (the generated task loses that keyword, and closed schemas refuse unknown names) or
  accepting less than before (type, enum, bounds, ``pattern``, ``format``, ``items`` added,
  ``additionalProperties`` closed); any change to a keyword compared only as a whole
  (``anyOf``, ``oneOf``, ``allOf``, ``not``, ``multipleOf``, ``uniqueItems``, ...: whether
  it narrows is not worked out, so it counts as if it did); an output field removed or no
  longer always present; an output that may now hold values it could not before (a wider
  type or enum); a new required scope; a new required config field or a config field
  removed; another ``authType``;
- **minor** (adds): a method added; an optional input added; an input accepting more; an
  output field added; a method's retry behaviour changed (``idempotent``,
  ``idempotencyKeyHeader``);
- **patch**: anything else that differs (names, descriptions, bindings, base URL, outputs
  narrower than before).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from prefect_integrations.exceptions import format_json_path

__all__ = ["Bump", "Change", "actual_bump", "diff_documents", "required_bump"]

Bump = Literal["none", "patch", "minor", "major"]
_ORDER: dict[str, int] = {"none": 0, "patch": 1, "minor": 2, "major": 3}
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?$")
# keyword: True when a larger value accepts less (a lower bound)
#: Keywords compared as a whole: any change counts as breaking (see the module).
_WHOLE = (
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "multipleOf",
    "uniqueItems",
    "dependentRequired",
    "dependentSchemas",
    "prefixItems",
    "contains",
    "propertyNames",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
)
#: Method fields that change how a call is retried.
_RETRY_FIELDS = ("idempotent", "idempotencyKeyHeader")
_BOUNDS = {
    "minimum": True,
    "exclusiveMinimum": True,
    "minLength": True,
    "minItems": True,
    "minProperties": True,
    "maximum": False,
    "exclusiveMaximum": False,
    "maxLength": False,
    "maxItems": False,
    "maxProperties": False,
}


@dataclass(frozen=True)
class Change:
    """One difference: its bump level, where (a JSON path in the definition) and what."""

    bump: Bump
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.bump:<5}  {self.path}: {self.message}"


def _types(schema: dict[str, Any]) -> set[str] | None:
    if "type" not in schema:
        return None
    value = schema["type"]
    types = set(value) if isinstance(value, list) else {value}
    if "number" in types:
        types.add("integer")
    return types


def _props(schema: Any) -> dict[str, Any]:
    value = schema.get("properties") if isinstance(schema, dict) else None
    return value if isinstance(value, dict) else {}


def _required(schema: Any) -> set[str]:
    value = schema.get("required") if isinstance(schema, dict) else None
    return set(value) if isinstance(value, list) else set()


class _SchemaDiff:
    """Compares two schemas of one side (``input``: what callers send; ``output``: get)."""

    def __init__(self, side: Literal["input", "output", "config"]) -> None:
        self.side = side
        self.changes: list[Change] = []

    def _add(self, accepts_less: bool, path: tuple[str | int, ...], message: str) -> None:
        """Record a change that makes the schema accept less (or more)."""
        if self.side == "output":
            bump: Bump = "patch" if accepts_less else "major"
        else:
            bump = "major" if accepts_less else "minor"
        self.changes.append(Change(bump, format_json_path(path), message))

    def compare(self, old: Any, new: Any, path: tuple[str | int, ...]) -> None:
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                self.changes.append(Change("major", format_json_path(path), "schema replaced"))
            return
        old_types, new_types = _types(old), _types(new)
        if old_types != new_types:
            lost = (
                (old_types or {"any"}) - (new_types or {"any"}) if new_types is not None else set()
            )
            gained = (
                (new_types or {"any"}) - (old_types or {"any"}) if old_types is not None else set()
            )
            if lost:
                self._add(True, path, f"type narrowed: no longer {', '.join(sorted(lost))}")
            if gained:
                self._add(False, path, f"type widened: now also {', '.join(sorted(gained))}")
        self._compare_enum(old, new, path)
        for key, lower in _BOUNDS.items():
            before, after = old.get(key), new.get(key)
            if before == after or not all(
                isinstance(v, int | float | type(None)) for v in (before, after)
            ):
                continue
            tighter = before is None or (
                after is not None and (after > before if lower else after < before)
            )
            self._add(tighter, path, f"{key} {before} -> {after}")
        for key in ("pattern", "format", "const"):
            if old.get(key) != new.get(key):
                self._add(key in new, path, f"{key} {old.get(key)!r} -> {new.get(key)!r}")
        for key in _WHOLE:
            if old.get(key) != new.get(key):
                where = format_json_path((*path, key))
                self.changes.append(Change("major", where, f"{key} changed (may accept less)"))
        self._compare_additional(old, new, path)
        self._compare_properties(old, new, path)
        if "items" in old and "items" in new:
            self.compare(old["items"], new["items"], (*path, "items"))
        elif "items" in old or "items" in new:
            self._add("items" in new, path, f"items {'added' if 'items' in new else 'removed'}")

    def _compare_additional(
        self, old: dict[str, Any], new: dict[str, Any], path: tuple[str | int, ...]
    ) -> None:
        before = old.get("additionalProperties", True)
        after = new.get("additionalProperties", True)
        if before == after:
            return
        where = (*path, "additionalProperties")
        if isinstance(before, dict) and isinstance(after, dict):
            self.compare(before, after, where)
        elif isinstance(before, bool) and isinstance(after, bool):
            self._add(after is False, path, f"additionalProperties {before} -> {after}")
        else:
            self._add(True, path, "additionalProperties changed (may accept less)")

    def _compare_enum(
        self, old: dict[str, Any], new: dict[str, Any], path: tuple[str | int, ...]
    ) -> None:
        before, after = old.get("enum"), new.get("enum")
        if before == after:
            return
        old_values = None if before is None else {repr(v) for v in before}
        new_values = None if after is None else {repr(v) for v in after}
        if new_values is not None and (old_values is None or old_values - new_values):
            removed = sorted((old_values or set()) - new_values) or ["(any)"]
            self._add(True, path, f"enum no longer has {', '.join(removed)}")
        if old_values is not None and (new_values is None or new_values - old_values):
            added = sorted((new_values or set()) - old_values) or ["(any)"]
            self._add(False, path, f"enum now also has {', '.join(added)}")

    def _compare_properties(
        self, old: dict[str, Any], new: dict[str, Any], path: tuple[str | int, ...]
    ) -> None:
        old_props, new_props = _props(old), _props(new)
        closed = new.get("additionalProperties") is False
        for name in sorted(old_props.keys() - new_props.keys()):
            where = format_json_path((*path, "properties", name))
            if self.side == "output":
                self.changes.append(Change("major", where, "output field removed"))
            elif closed or self.side == "input":
                self.changes.append(Change("major", where, f"{self.side} removed"))
            else:
                self.changes.append(Change("patch", where, f"{self.side} no longer described"))
        for name in sorted(new_props.keys() - old_props.keys()):
            where = format_json_path((*path, "properties", name))
            if self.side != "output" and name in _required(new):
                self.changes.append(Change("major", where, f"new required {self.side}"))
            else:
                label = "output field" if self.side == "output" else f"optional {self.side}"
                self.changes.append(Change("minor", where, f"{label} added"))
        for name in sorted(old_props.keys() & new_props.keys()):
            where = format_json_path((*path, "properties", name))
            was, now = name in _required(old), name in _required(new)
            if self.side == "output" and was and not now:
                self.changes.append(Change("major", where, "output field no longer always present"))
            elif self.side != "output" and now and not was:
                self.changes.append(Change("major", where, f"{self.side} now required"))
            elif was != now:
                self.changes.append(
                    Change("minor", where, f"{self.side} {'now' if now else 'no longer'} required")
                )
            self.compare(old_props[name], new_props[name], (*path, "properties", name))


def _methods(document: dict[str, Any]) -> dict[str, tuple[int, dict[str, Any]]]:
    methods = document.get("methods")
    return {
        m["id"]: (i, m)
        for i, m in enumerate(methods if isinstance(methods, list) else [])
        if isinstance(m, dict) and isinstance(m.get("id"), str)
    }


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every change from ``old`` to ``new`` (two definition documents) that callers see."""
    changes: list[Change] = []
    if old.get("authType") != new.get("authType"):
        changes.append(
            Change("major", "$.authType", f"{old.get('authType')!r} -> {new.get('authType')!r}")
        )
    config = _SchemaDiff("config")
    config.compare(old.get("configSchema"), new.get("configSchema"), ("configSchema",))
    changes += config.changes
    old_scopes = set((old.get("oauth2Config") or {}).get("scopes") or [])
    new_scopes = set((new.get("oauth2Config") or {}).get("scopes") or [])
    for scope in sorted(new_scopes - old_scopes):
        changes.append(Change("minor", "$.oauth2Config.scopes", f"scope {scope!r} requested"))
    for scope in sorted(old_scopes - new_scopes):
        changes.append(
            Change("patch", "$.oauth2Config.scopes", f"scope {scope!r} no longer requested")
        )
    old_methods, new_methods = _methods(old), _methods(new)
    for method_id in sorted(old_methods.keys() - new_methods.keys()):
        changes.append(
            Change(
                "major",
                f"$.methods[{old_methods[method_id][0]}]",
                f"method {method_id!r} removed (the path is in OLD)",
            )
        )
    for method_id in sorted(new_methods.keys() - old_methods.keys()):
        changes.append(
            Change(
                "minor", f"$.methods[{new_methods[method_id][0]}]", f"method {method_id!r} added"
            )
        )
    for method_id in sorted(old_methods.keys() & new_methods.keys()):
        changes += _diff_method(method_id, old_methods[method_id][1], *new_methods[method_id])
    rest = {
        k
        for k in old.keys() | new.keys()
        if k not in ("methods", "version", "configSchema", "authType")
    }
    for key in sorted(rest):
        if old.get(key) != new.get(key) and not (
            key == "oauth2Config" and _same_but_scopes(old, new)
        ):
            changes.append(Change("patch", format_json_path((key,)), "changed"))
    return changes


def _same_but_scopes(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def strip(document: dict[str, Any]) -> dict[str, Any]:
        config = document.get("oauth2Config") or {}
        return {k: v for k, v in config.items() if k != "scopes"}

    return strip(old) == strip(new)


def _diff_method(
    method_id: str, old: dict[str, Any], index: int, new: dict[str, Any]
) -> list[Change]:
    base = ("methods", index)
    changes: list[Change] = []
    for side, key in (("input", "inputSchema"), ("output", "outputSchema")):
        schema_diff = _SchemaDiff(side)  # type: ignore[arg-type]
        schema_diff.compare(old.get(key), new.get(key), (*base, key))
        changes += [
            Change(c.bump, c.path, f"method {method_id!r}: {c.message}")
            for c in schema_diff.changes
        ]
    added = [
        s for s in new.get("requiredScopes") or [] if s not in (old.get("requiredScopes") or [])
    ]
    for scope in added:
        message = f"method {method_id!r} now requires scope {scope!r}"
        changes.append(Change("major", format_json_path((*base, "requiredScopes")), message))
    for key in _RETRY_FIELDS:
        if old.get(key) != new.get(key):
            message = (
                f"method {method_id!r}: {key} {old.get(key)!r} -> {new.get(key)!r} "
                "(which failures are retried)"
            )
            changes.append(Change("minor", format_json_path((*base, key)), message))
    compared = {"inputSchema", "outputSchema", "requiredScopes", "id", *_RETRY_FIELDS}
    for key in sorted((old.keys() | new.keys()) - compared):
        if old.get(key) != new.get(key):
            changes.append(
                Change(
                    "patch", format_json_path((*base, key)), f"method {method_id!r}: {key} changed"
                )
            )
    return changes


def required_bump(changes: Iterable[Change]) -> Bump:
    """The smallest semver bump that covers ``changes``."""
    level = max((_ORDER[c.bump] for c in changes), default=0)
    names: tuple[Bump, ...] = ("none", "patch", "minor", "major")
    return names[level]


def actual_bump(old_version: str, new_version: str) -> Bump | None:
    """The bump from one version to the other (None: not semantic versions, or a step back)."""
    old_match, new_match = _SEMVER.match(old_version), _SEMVER.match(new_version)
    if old_match is None or new_match is None:
        return None
    before = tuple(int(p) for p in old_match.groups()[:3])
    after = tuple(int(p) for p in new_match.groups()[:3])
    if after < before:
        return None
    for rank, name in enumerate(("major", "minor", "patch")):
        if after[rank] > before[rank]:
            return name  # type: ignore[return-value]
    return "none"
