"""Hand-written improvements kept beside a description, merged by every import.

An overlay file (JSON) says how to import and what to change afterwards, so a re-import
never loses what people wrote by hand:

    {
      "import": {"operations": ["createInvoices", ...], "tags": [...],
                 "omitHeaders": ["xero-tenant-id"], "omitParameters": ["token"],
                 "maxDepth": 3, "cycleDepth": 1},
      "definition": {"version": "1.2.0", "headers": {...}, "healthCheck": {...}, ...},
      "methods": {"createInvoices": {"id": "create_invoice", "inputSchema": {...}, ...}}
    }

- ``import``: the selection and options, used when the command line does not give them;
  ``operations`` also sets the order of the methods (then those selected by tag);
- ``definition``: top-level fields that replace the imported ones; in ``oauth2Config`` the
  ``scopes`` listed come first and the scopes the methods require are added after them;
- ``methods``: by ``operationId``, fields that replace the imported method's (a whole
  method can be given: its ``id``, schemas and ``http`` binding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from prefect_integrations.exceptions import ValidationError, quote

__all__ = ["Overlay", "load_overlay"]

_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "$comment": {"type": "string"},
        "import": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "operations": _STRINGS,
                "tags": _STRINGS,
                "omitHeaders": _STRINGS,
                "omitParameters": _STRINGS,
                "maxDepth": {"type": "integer", "minimum": 1},
                "cycleDepth": {"type": "integer", "minimum": 1},
            },
        },
        "definition": {"type": "object", "not": {"required": ["methods"]}},
        "methods": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}


@dataclass(frozen=True)
class Overlay:
    """A parsed overlay file (see the module docstring)."""

    settings: dict[str, Any] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)

    def method(self, operation_id: str | None, generated: dict[str, Any]) -> dict[str, Any]:
        """The imported method with the overlay's fields for its operation, if any."""
        changes = self.methods.get(operation_id or "")
        return {**generated, **changes} if changes else generated

    def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        """The imported document with the overlay's top-level fields."""
        out = {**document}
        for key, value in self.definition.items():
            if key == "oauth2Config" and isinstance(document.get(key), dict):
                required = document[key].get("scopes", [])
                listed = list(value.get("scopes", []))
                out[key] = {**document[key], **value, "scopes": listed}
                out[key]["scopes"] += [s for s in required if s not in listed]
            else:
                out[key] = value
        methods = out.pop("methods")
        out["methods"] = methods  # keep the methods last, as in the shipped files
        return out


def load_overlay(path: Path) -> Overlay:
    """Read and check an overlay file; problems name the file and the JSON path."""
    label = f"Overlay {quote(str(path), limit=300)}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValidationError(label, [], f"cannot read file: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        reason = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise ValidationError(label, [], reason) from None
    error = best_match(Draft202012Validator(_SCHEMA).iter_errors(raw))
    if error is not None:
        raise ValidationError(label, list(error.absolute_path), error.message[:300])
    return Overlay(
        settings=raw.get("import", {}),
        definition=raw.get("definition", {}),
        methods=raw.get("methods", {}),
    )
